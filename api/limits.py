"""What one request and one client may take of the HTTP service, refused before any work.

- The header block (request line and headers) is capped in bytes and in count while it
  arrives: 431, connection closed, never buffered whole. httptools, as uvicorn runs it,
  has no limit of its own (a 100 MB header took 11.6 s to parse and stalled the server);
  uvicorn's h11 protocol has `h11_max_incomplete_event_size`.
- A declared body over the endpoints' limit: 413 before anything reads it.
- Requests in flight per client credential (the Authorization header): past the cap a
  cheap 429 with Retry-After, answered before any database round trip, so one client's
  flood queues neither other users nor /health behind it.
- A request's database calls wait for a pooled connection at most a short deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from worker.postgres_gateway import ACQUIRE_TIMEOUT

MAX_HEADER_BYTES = 32 * 1024  # request line and headers; a Supabase JWT is about 1 KB
MAX_HEADERS = 100
RETRY_AFTER_SECONDS = "1"
# A refused request is answered this much later: a client that resends at once (a
# flood's closed loop) then costs the event loop a sleeping task, not a request per turn.
REFUSAL_DELAY_SECONDS = 0.5

_HEADERS_TOO_LARGE = b'{"error":"Request header fields too large"}'


def uvicorn_options() -> dict[str, Any]:
    """The uvicorn.Config/uvicorn.run arguments that apply the header limits."""
    try:
        protocol = limited_httptools_protocol()
    except ImportError:  # httptools not installed: uvicorn runs h11, which has a cap
        return {"http": "h11", "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
    return {"http": protocol}


def limited_httptools_protocol() -> type[Any]:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """Counts the header block's bytes as they arrive and feeds the parser no more
        than the limit: past it, a 431 and the connection closed."""

        _header_bytes: int | None = 0  # None while a request's body is arriving
        _blocks = 0  # header blocks completed on this connection

        def data_received(self, data: bytes) -> None:
            if self._header_bytes is None:
                super().data_received(data)
                return
            room = MAX_HEADER_BYTES - self._header_bytes
            if len(data) <= room:  # the common case: no copy
                self._header_bytes += len(data)
                super().data_received(data)
                return
            head, rest = data[:room], data[room:]
            self._header_bytes += len(head)
            blocks = self._blocks
            super().data_received(head)
            if not rest or self.transport.is_closing():
                return
            if self._blocks != blocks:  # a header block ended inside `head`: count afresh
                self.data_received(rest)
            else:
                self._refuse_headers()

        def on_headers_complete(self) -> None:
            self._header_bytes = None
            self._blocks += 1
            if len(self.headers) > MAX_HEADERS:  # counted once: a callback per header costs
                self._refuse_headers()
                raise httptools.HttpParserError("too many headers")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._header_bytes = 0
            super().on_message_complete()

        def _refuse_headers(self) -> None:
            if self.transport.is_closing():
                return
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(_HEADERS_TOO_LARGE)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + _HEADERS_TOO_LARGE
            )
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            if not self.transport.is_closing():  # already answered 431
                super().send_400_response(msg)

    return LimitedHttpToolsProtocol


class RequestLimits:
    """For the endpoints under `prefix`, before any work: a declared body over
    `max_body_bytes` is a 413; past `per_client` requests in flight per Authorization
    header value a 429 (a path of `own_caps`: past its own cap for all its callers
    together). Their database calls wait at most
    `acquire_timeout` seconds for a pooled connection (an outage is a quick 503), except
    on the `patient` paths (process-jobs runs jobs, which wait as the runner's do)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        per_client: int,
        max_body_bytes: int,
        acquire_timeout: float,
        patient: tuple[str, ...] = (),
        own_caps: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.per_client = per_client
        self.max_body_bytes = max_body_bytes
        self.acquire_timeout = acquire_timeout
        self.patient = patient
        self.own_caps = own_caps or {}
        self._in_flight: dict[bytes, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        key = declared = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                key = value  # held while the request is in flight, never stored beyond
            elif name == b"content-length":
                declared = value
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, 413, b"Request body too large")
            return
        cap = self.per_client
        if scope["path"] in self.own_caps:
            # Callers without a credential of their own (webhooks): one cap for the path.
            key, cap = b"path:" + scope["path"].encode(), self.own_caps[scope["path"]]
        count = self._in_flight.get(key, 0)
        if count >= cap:
            await asyncio.sleep(REFUSAL_DELAY_SECONDS)
            await _refuse(
                send,
                429,
                b"Too many requests in flight for this client, please retry",
                [(b"retry-after", RETRY_AFTER_SECONDS.encode())],
            )
            return
        self._in_flight[key] = count + 1
        patient = scope["path"] in self.patient
        deadline = ACQUIRE_TIMEOUT.set(None if patient else self.acquire_timeout)
        try:
            await self.app(scope, receive, send)
        finally:
            ACQUIRE_TIMEOUT.reset(deadline)
            remaining = self._in_flight[key] - 1
            if remaining:
                self._in_flight[key] = remaining
            else:
                del self._in_flight[key]


async def _refuse(
    send: Send, status: int, message: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = b'{"error":"' + message + b'"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})
