"""The tests' one served app: `create_app` over real HTTP against the stack of
tests/support/stack.py (simulator, Storage stand-in, JWKS), signed-in users' tokens from
tests/support/tokens.py, and supabase-py's functions client for the compat tests."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from supabase import Client, ClientOptions, create_client

from api.app import create_app
from devstack.simulator import SimulatorConfig
from tests.support import tokens
from tests.support.background_server import BackgroundServer
from tests.support.stack import Stack, run_stack
from tests.support.tokens import JWT_SECRET, WORKER_SECRET
from worker.settings import Settings

ENDED = ("completed", "failed")
FLUX = "black-forest-labs/flux-schnell"


@dataclass
class Served:
    url: str
    stack: Stack
    settings: Settings
    http: httpx.Client  # based at `url`

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def issuer(self) -> str:
        """What the app expects in a token's `iss`."""
        return f"{self.stack.url}/auth/v1"

    def claims(self, user_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
        return tokens.claims(user_id, self.issuer, **overrides)

    def token(self, user_id: uuid.UUID, **overrides: Any) -> str:
        """The user's access token (HS256 with the project's secret); `overrides` change or,
        as None, drop claims."""
        return tokens.hs256(self.claims(user_id, **overrides))

    def es256(
        self, user_id: uuid.UUID, key: Any = tokens.EC_KEY, kid: str = tokens.EC_KID, **over: Any
    ) -> str:
        """Signed by a key of the stack's JWKS (or by `key`, claiming `kid`)."""
        return tokens.es256(self.claims(user_id, **over), key, kid)

    def rs256(self, user_id: uuid.UUID, **overrides: Any) -> str:
        return tokens.rs256(self.claims(user_id, **overrides))

    def headers(self, user_id: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id)}"}

    def call(
        self, method: str, name: str, authorization: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """A request to /functions/v1/<name> that passes validation unless told otherwise
        (a body, an id), so that the Authorization header alone decides."""
        headers = dict(kwargs.pop("headers", {}))
        if authorization is not None:
            headers["Authorization"] = authorization
        if method == "GET" and name == "get-generation":
            kwargs.setdefault("params", {"id": str(uuid.uuid4())})
        if method == "POST":
            kwargs.setdefault("json", {"prompt": "a cat", "model_id": FLUX})
        return self.http.request(method, f"/functions/v1/{name}", headers=headers, **kwargs)

    def post(self, name: str, body: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """POST /functions/v1/<name> with a JSON body, as the user whose token is given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post(f"/functions/v1/{name}", json=body, headers=headers, **kwargs)

    def client(self, user_id: uuid.UUID) -> Client:
        """What the apps hold: a Supabase client signed in as the user."""
        # The legacy call waits for the whole generation, as the app does (retries included).
        options = ClientOptions(function_client_timeout=120)
        client = create_client(self.url, "anon-key-of-the-project", options)
        client.functions.set_auth(self.token(user_id))
        return client

    def invoke(self, user_id: uuid.UUID, name: str, body: Any = None) -> Any:
        """`supabase.functions.invoke(name, {body})`, its JSON answer."""
        options: dict[str, Any] = {"responseType": "json"}
        if body is not None:
            options["body"] = body
        return self.client(user_id).functions.invoke(name, invoke_options=options)

    def stored_files(self) -> set[str]:
        """Every object in the Storage stand-in's bucket, as `<user_id>/<file>`."""
        bucket = self.stack.storage_root / "objects" / "generated-images"
        if not bucket.exists():
            return set()
        return {str(path.relative_to(bucket)) for path in bucket.rglob("*") if path.is_file()}


@contextlib.contextmanager
def serve_app(
    stack: Stack,
    *,
    run_jobs: bool = True,
    gateway: str = "postgres",
    server_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> Iterator[Served]:
    """The app on its own loopback port against `stack`; without the job runner only
    requests write. `overrides` are Settings fields, `server_options` uvicorn's."""
    values = {"supabase_jwt_secret": JWT_SECRET, "worker_secret": WORKER_SECRET} | overrides
    settings = stack.settings(gateway, **values)
    app = create_app(settings, run_jobs=run_jobs)
    with (
        BackgroundServer(app, **(server_options or {})) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        yield Served(server.url, stack, settings, http)


@contextlib.contextmanager
def serve(
    database_url: str,
    storage_root: Path,
    simulator: SimulatorConfig | None = None,
    **options: Any,
) -> Iterator[Served]:
    """A stack of its own and the app against it (`options` as for serve_app)."""
    with (
        run_stack(database_url, storage_root, simulator) as stack,
        serve_app(stack, **options) as served,
    ):
        yield served


def traces(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Every trace a request could leave: row counts and the latest updates."""
    row = conn.execute(
        "select (select count(*) from image_generations) as generations,"
        " (select count(*) from job_queue) as jobs, (select count(*) from images) as images,"
        " (select max(updated_at) from image_generations) as generation_update,"
        " (select max(updated_at) from job_queue) as job_update"
    ).fetchone()
    assert row is not None
    return dict(row)


def error_body(response: httpx.Response) -> str:
    """The answer's `{"error": message}`, asserted to be that shape."""
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return str(body["error"])


def wait_until_ended(
    conn: psycopg.Connection[Any], generation_ids: list[Any], timeout: float = 60
) -> list[dict[str, Any]]:
    """The generations once every one has ended (the rows as they are at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = conn.execute(
            "select * from image_generations where id = any(%s::uuid[]) order by batch_index, id",
            ([str(gid) for gid in generation_ids],),
        ).fetchall()
        if all(row["status"] in ENDED for row in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)
