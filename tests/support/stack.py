"""A local stand-in for what the service talks to: the Replicate simulator, Supabase
Storage (the local file store), Supabase Auth's JWKS (the keys of tests/support/tokens.py)
and PostgREST (the RPC stand-in), on one loopback server
with Supabase's URL layout, so real clients can be pointed at it."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from devstack.simulator import SimulatorConfig, create_simulator_app
from devstack.storage import create_storage_app
from tests.support.background_server import BackgroundServer
from tests.support.postgrest_standin import create_postgrest_app
from tests.support.tokens import WORKER_SECRET, published_keys
from worker.settings import Settings


@dataclass
class Stack:
    url: str
    service_role_key: str
    storage_root: Path
    database_url: str

    @property
    def simulator_url(self) -> str:
        return f"{self.url}/replicate"

    def settings(self, gateway: str = "postgres", **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "database_gateway": gateway,
            "supabase_url": self.url,
            "supabase_service_role_key": self.service_role_key,
            "replicate_base_url": f"{self.simulator_url}/v1",
            "replicate_api_token": "r8_test_token_for_the_simulator",
            "worker_secret": WORKER_SECRET,
            "max_parallel_jobs": 10,
            "poll_interval_seconds": 0.5,
            "lease_seconds": 30,
            "replicate_wait_seconds": 1,
            "output_private_origins": self.url,  # the simulator's outputs are on loopback
        }
        return Settings(**(values | overrides))

    def simulator(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(
            method, f"{self.simulator_url}/_simulator/{path}", timeout=10, **kwargs
        )
        response.raise_for_status()
        return response.json()

    def configure_simulator(self, **knobs: Any) -> None:
        self.simulator("POST", "config", json=knobs)

    def predictions_created(self) -> int:
        return int(self.simulator("GET", "stats")["predictions_created"])


@contextlib.contextmanager
def run_stack(
    database_url: str,
    storage_root: Path,
    simulator: SimulatorConfig | None = None,
    storage_middleware: Callable[[ASGIApp], ASGIApp] | None = None,
) -> Iterator[Stack]:
    """`storage_middleware` wraps the Storage stand-in (fault injection stays in tests)."""
    key = secrets.token_urlsafe(24)
    storage = create_storage_app(storage_root, key)

    async def jwks(_request: Request) -> JSONResponse:
        return JSONResponse({"keys": published_keys()})

    app = Starlette(
        routes=[
            Route("/auth/v1/.well-known/jwks.json", jwks),
            Mount(
                "/replicate",
                create_simulator_app(simulator or SimulatorConfig(latency_seconds=0.05)),
            ),
            Mount("/storage/v1", storage_middleware(storage) if storage_middleware else storage),
            Mount("/rest/v1", create_postgrest_app(database_url)),
        ]
    )
    with BackgroundServer(app) as server:
        yield Stack(server.url, key, storage_root, database_url)
