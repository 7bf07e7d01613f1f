"""Run an ASGI app with uvicorn on a loopback port, in a background thread.

Used wherever a second HTTP server is needed next to the main one: the Replicate
simulator, the test stand-ins for Supabase Storage and PostgREST, a JWKS endpoint.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from devstack.postgres import free_port


class BackgroundServer:
    """`with BackgroundServer(app) as server:` serves `app` at `server.url` until exit."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int | None = None, **options: Any
    ) -> None:
        """`options`: more uvicorn.Config arguments (e.g. api.limits.uvicorn_options())."""
        self.host = host
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_level="warning",
            lifespan="auto",
            access_log=False,
            **options,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="background-server")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
