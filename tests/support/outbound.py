"""Keeps the source-image fetch on this machine (the only way the service reaches a URL a
user gave): names resolve from a fixed table, and a connection to anything but loopback
is recorded and fails before a packet leaves.

Patched where worker/source_image.py looks them up (its resolver and its one GET), not in
`socket`: uvicorn runs the app on uvloop, whose resolver never calls socket.getaddrinfo.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import worker.source_image
from tests.support.background_server import BackgroundServer
from worker.source_image import IPAddress


@dataclass
class Outbound:
    looked_up: list[str] = field(default_factory=list)  # names not in the table
    refused: list[str] = field(default_factory=list)  # connections that would leave loopback


def keep_fetches_local(
    monkeypatch: pytest.MonkeyPatch, names: Mapping[str, str] | None = None
) -> Outbound:
    """`names`: host -> comma-separated addresses. `localhost` and the numeric IPv4 forms
    (2130706433, 0x7f000001, 017700000001, 127.1) resolve as the C library does."""
    table = {name.lower(): value for name, value in (names or {}).items()}
    outbound = Outbound()
    real_get = worker.source_image._get

    async def resolve(host: str, port: int) -> list[IPAddress]:
        name = host.lower().rstrip(".")
        if name in table:
            return [ipaddress.ip_address(address) for address in table[name].split(",")]
        if name == "localhost":
            return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        try:
            return [ipaddress.IPv4Address(socket.inet_aton(name))]
        except OSError:
            outbound.looked_up.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "unknown host in the tests") from None

    async def get(client: httpx.AsyncClient, target: worker.source_image._Target) -> httpx.Response:
        if not target.address.is_loopback:
            outbound.refused.append(str(target.address))
            raise httpx.ConnectError("no route out of the tests")
        return await real_get(client, target)

    kwdefaults = worker.source_image.fetch_source_image.__kwdefaults__
    assert kwdefaults is not None
    monkeypatch.setitem(kwdefaults, "resolve", resolve)
    monkeypatch.setattr(worker.source_image, "_get", get)
    return outbound


@dataclass
class Listener:
    url: str
    port: int
    hits: list[str]


@contextmanager
def listening() -> Iterator[Listener]:
    """Stands where a forged URL points (127.0.0.1): any request reaching it is recorded."""
    hits: list[str] = []

    async def record(request: Request) -> Response:
        hits.append(f"{request.url.hostname} {request.url.path}")
        return Response(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, media_type="image/png")

    app = Starlette(routes=[Route("/{path:path}", record)])
    with BackgroundServer(app, host="127.0.0.1") as server:
        yield Listener(server.url, server.port, hits)
