"""Fetch a user's `source_image_url` for image-to-image, without server-side request
forgery: http(s) only, every resolved address must be public, the connection goes to
the vetted address (DNS cannot rebind it), redirects are followed by hand and vetted
hop by hop, and size, time and content type are capped."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from worker.errors import JobError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024

# Not reachable as the public internet: refused whatever Python's `is_global` says.
_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved and broadcast
    )
)
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",
        "2001::/23",  # protocol assignments, Teredo
        "2001:db8::/32",
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class SourceImageError(JobError):
    """The source image cannot be used; the message is shown to the user."""

    retryable = False


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """The default policy: only addresses of the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public_address(inner)
        forbidden: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _FORBIDDEN_V6
    else:
        forbidden = _FORBIDDEN_V4
    if any(address in network for network in forbidden):
        return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to, through the event loop's resolver."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


@dataclass(frozen=True)
class _Target:
    url: httpx.URL  # the user's URL, for Host, SNI and relative redirects
    address: IPAddress  # where we connect

    def pinned_url(self) -> httpx.URL:
        host = str(self.address)
        return self.url.copy_with(host=host)


async def _vet(
    url: httpx.URL,
    allowed: AddressPolicy,
    resolve: Resolver,
    *,
    what: str = "The source image URL",
    error: type[Exception] = SourceImageError,
) -> _Target:
    """Where to connect for `url`, if its scheme, host and every address it resolves to
    pass; else `error` saying why (the output downloads share this check)."""
    if url.scheme not in ("http", "https"):
        raise error(f"{what} must start with http:// or https://")
    if not url.host:
        raise error(f"{what} has no host")
    if url.userinfo:
        raise error(f"{what} must not contain credentials")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(url.host)]
    except ValueError:
        try:
            addresses = await resolve(url.host, port)
        except OSError as exc:
            name = what.removesuffix(" URL")
            raise error(f"{name} host {url.host} cannot be resolved") from exc
    # Every address must pass: a name with one public and one private address is refused.
    if not addresses or not all(allowed(address) for address in addresses):
        raise error(f"{what} points to a private or reserved address")
    return _Target(url, addresses[0])


class _DataUri:
    """Base64 built a chunk at a time (3-byte aligned), never in one giant call."""

    def __init__(self, content_type: str) -> None:
        self._parts = [f"data:{content_type};base64,"]
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        cut = len(data) - len(data) % 3
        self._parts.append(base64.b64encode(data[:cut]).decode("ascii"))
        self._pending = data[cut:]

    def result(self) -> str:
        self._parts.append(base64.b64encode(self._pending).decode("ascii"))
        return "".join(self._parts)


async def _get(client: httpx.AsyncClient, target: _Target) -> httpx.Response:
    extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
    request = client.build_request(
        "GET",
        target.pinned_url(),
        headers={"Host": target.url.netloc.decode("ascii"), "Accept": "image/*"},
        extensions=extensions,
    )
    return await client.send(request, stream=True)


async def _read_image(response: httpx.Response, max_bytes: int) -> str:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type.startswith("image/"):
        raise SourceImageError(
            f"The source image URL did not return an image ({content_type or 'no type'})"
        )
    too_large = f"The source image is larger than {max_bytes // 1024} KiB"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise SourceImageError(too_large)
    uri, size = _DataUri(content_type), 0
    async for chunk in response.aiter_bytes(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise SourceImageError(too_large)
        uri.feed(chunk)
    if size == 0:
        raise SourceImageError("The source image is empty")
    return uri.result()


async def fetch_source_image(
    url: str,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 -- one deadline for all hops, applied inside
    address_allowed: AddressPolicy = is_public_address,
    resolve: Resolver = resolve_host,
    max_redirects: int = MAX_REDIRECTS,
) -> str:
    """The image at `url` as a `data:<content-type>;base64,...` URI.
    `timeout` bounds the whole fetch, redirects included."""
    try:
        current = httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        raise SourceImageError("The source image URL is not a valid URL") from exc
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
        ):
            for _hop in range(max_redirects + 1):
                target = await _vet(current, address_allowed, resolve)
                response = await _get(client, target)
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise SourceImageError("The source image URL redirects nowhere")
                        current = current.join(location)
                        continue
                    if response.status_code != 200:
                        raise SourceImageError(
                            f"The source image URL answered HTTP {response.status_code}"
                        )
                    return await _read_image(response, max_bytes)
                finally:
                    await response.aclose()
    except TimeoutError as exc:
        raise SourceImageError(f"Fetching the source image took over {timeout:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise SourceImageError(
            f"The source image could not be fetched ({type(exc).__name__})"
        ) from exc
    raise SourceImageError(f"The source image URL redirects more than {max_redirects} times")
