"""Fetching source images safely: the address policy, pinning, redirects, caps.

Only loopback is reachable here: a test server on 127.0.0.2 plays the public internet
(the policy allows that one address), and a "forbidden" server on 127.0.0.1 records
every request that reaches it, so we can assert that none did.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.background_server import BackgroundServer
from worker.source_image import (
    IPAddress,
    Resolver,
    SourceImageError,
    fetch_source_image,
    is_public_address,
    resolve_host,
)

ALLOWED_HOST = "127.0.0.2"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(100_001)  # odd length: exercises base64 carry-over


def allow_test_server(address: IPAddress) -> bool:
    return address == ipaddress.ip_address(ALLOWED_HOST)


def make_allowed_app(hosts_seen: list[str]) -> Starlette:
    async def image(request: Request) -> Response:
        hosts_seen.append(request.headers["host"])
        return Response(PNG, media_type="image/png")

    async def streamed(_request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"\0" * 10_000

        return StreamingResponse(chunks(), media_type="image/jpeg")

    async def html(_request: Request) -> Response:
        return Response("<html></html>", media_type="text/html")

    async def missing(_request: Request) -> Response:
        return Response("gone", status_code=404, media_type="image/png")

    async def slow(_request: Request) -> Response:
        await asyncio.sleep(1)
        return Response(PNG, media_type="image/png")

    async def redirect(request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def chain(request: Request) -> Response:
        left = int(request.path_params["left"])
        return RedirectResponse(f"/chain/{left - 1}" if left else "/image.png", status_code=307)

    return Starlette(
        routes=[
            Route("/image.png", image),
            Route("/streamed.jpg", streamed),
            Route("/page", html),
            Route("/missing.png", missing),
            Route("/slow.png", slow),
            Route("/redirect", redirect),
            Route("/chain/{left:int}", chain),
        ]
    )


@pytest.fixture(scope="module")
def hosts_seen() -> list[str]:
    return []


@pytest.fixture(scope="module")
def allowed(hosts_seen: list[str]) -> Iterator[str]:
    with BackgroundServer(make_allowed_app(hosts_seen), host=ALLOWED_HOST) as server:
        yield server.url


@pytest.fixture(scope="module")
def forbidden_hits() -> list[str]:
    return []


@pytest.fixture(scope="module")
def forbidden(forbidden_hits: list[str]) -> Iterator[str]:
    """A server on 127.0.0.1 that no fetch may ever reach."""

    async def record(request: Request) -> Response:
        forbidden_hits.append(request.url.path)
        return Response(PNG, media_type="image/png")

    app = Starlette(routes=[Route("/{path:path}", record)])
    with BackgroundServer(app, host="127.0.0.1") as server:
        yield server.url


@pytest.fixture(autouse=True)
def no_forbidden_request(forbidden_hits: list[str]) -> Iterator[None]:
    yield
    assert forbidden_hits == [], "a request reached a forbidden address"


async def fetch(
    url: str, *, max_bytes: int = 1_000_000, timeout: float = 5, resolve: Resolver = resolve_host
) -> str:
    return await fetch_source_image(
        url,
        max_bytes=max_bytes,
        timeout=timeout,
        address_allowed=allow_test_server,
        resolve=resolve,
    )


async def test_accepts_an_allowed_servers_image(allowed: str) -> None:
    uri = await fetch(f"{allowed}/image.png")
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix) :], validate=True) == PNG


async def test_pins_the_vetted_address_and_keeps_the_host_name(
    allowed: str, hosts_seen: list[str]
) -> None:
    resolved: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        resolved.append(host)
        return [ipaddress.ip_address(ALLOWED_HOST)]

    port = allowed.rsplit(":", 1)[1]
    uri = await fetch(f"http://images.example.test:{port}/image.png", resolve=resolve)
    assert uri.startswith("data:image/png;base64,")
    assert resolved == ["images.example.test"]  # resolved once, then connected by address
    assert hosts_seen[-1] == f"images.example.test:{port}"


async def test_every_resolved_address_must_be_allowed(allowed: str) -> None:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(ALLOWED_HOST), ipaddress.ip_address("127.0.0.1")]

    port = allowed.rsplit(":", 1)[1]
    with pytest.raises(SourceImageError, match="private or reserved"):
        await fetch(f"http://images.example.test:{port}/image.png", resolve=resolve)


async def test_the_forbidden_server_would_record_a_request(
    forbidden: str, forbidden_hits: list[str]
) -> None:
    """The check is real: a fetch with no address policy does reach it."""
    await fetch_source_image(
        f"{forbidden}/probe", max_bytes=1_000_000, timeout=5, address_allowed=lambda _: True
    )
    assert forbidden_hits == ["/probe"]
    forbidden_hits.clear()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0.0.0.0"],  # noqa: S104
)
async def test_refuses_loopback_forms(forbidden: str, host: str) -> None:
    port = forbidden.rsplit(":", 1)[1]
    for policy in (is_public_address, allow_test_server):
        with pytest.raises(SourceImageError, match="private or reserved") as caught:
            await fetch_source_image(
                f"http://{host}:{port}/secret", max_bytes=1000, timeout=5, address_allowed=policy
            )
        assert caught.value.retryable is False


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/a.png",
        "http://192.168.1.1/a.png",
        "https://[fd00::1]/a.png",
        "http://[fe80::1]/a.png",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
    ],
)
async def test_refuses_private_addresses_without_connecting(url: str) -> None:
    with pytest.raises(SourceImageError, match="private or reserved"):
        await fetch_source_image(url, max_bytes=1000, timeout=1)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.2/a.png", "gopher://x/", "data:image/png,abc"]
)
async def test_refuses_other_schemes(url: str) -> None:
    with pytest.raises(SourceImageError, match="http:// or https://"):
        await fetch(url)


async def test_refuses_credentials_in_the_url(allowed: str) -> None:
    with pytest.raises(SourceImageError, match="credentials"):
        await fetch(allowed.replace("http://", "http://user:pw@") + "/image.png")


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/secret", "http://localhost:{port}/x"])
async def test_refuses_a_redirect_to_a_forbidden_address(
    allowed: str, forbidden: str, target: str
) -> None:
    to = target.format(port=forbidden.rsplit(":", 1)[1])
    with pytest.raises(SourceImageError, match="private or reserved"):
        await fetch(f"{allowed}/redirect?to={to}")


async def test_follows_up_to_three_redirects(allowed: str) -> None:
    assert (await fetch(f"{allowed}/chain/2")).startswith("data:image/png;base64,")
    with pytest.raises(SourceImageError, match="more than 3"):
        await fetch(f"{allowed}/chain/3")


async def test_size_cap_by_content_length_and_while_streaming(allowed: str) -> None:
    with pytest.raises(SourceImageError, match="larger than"):
        await fetch(f"{allowed}/image.png", max_bytes=50_000)
    with pytest.raises(SourceImageError, match="larger than"):
        await fetch(f"{allowed}/streamed.jpg", max_bytes=50_000)
    assert (await fetch(f"{allowed}/streamed.jpg", max_bytes=1_000_000)).startswith(
        "data:image/jpeg;base64,"
    )


async def test_refuses_non_images_and_errors(allowed: str) -> None:
    with pytest.raises(SourceImageError, match="did not return an image"):
        await fetch(f"{allowed}/page")
    with pytest.raises(SourceImageError, match="HTTP 404"):
        await fetch(f"{allowed}/missing.png")


async def test_time_cap(allowed: str) -> None:
    with pytest.raises(SourceImageError, match="took over"):
        await fetch(f"{allowed}/slow.png", timeout=0.3)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "151.101.1.140",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ],
)
def test_policy_allows_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0",  # noqa: S104
        "0.1.2.3",
        "10.1.2.3",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.168.0.1",
        "198.18.0.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "2001::1",  # Teredo
        "100::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::8.8.8.8",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "fe80::1%1",
    ],
)
def test_policy_refuses_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
