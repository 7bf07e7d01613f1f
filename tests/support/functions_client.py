"""The served service as the apps reach it: supabase-py's functions client over real HTTP
against the API (with its runner), the Replicate simulator and the Storage stand-in of
tests/support/stack.py. Shared by the compat tests of the server path."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from supabase import Client, ClientOptions, create_client

from api.app import create_app
from devstack.simulator import SimulatorConfig
from devstack.tokens import mint_dev_token
from tests.support.background_server import BackgroundServer
from tests.support.stack import Stack, run_stack

JWT_SECRET = "a-jwt-secret-for-the-compat-tests-0123456789"
ENDED = ("completed", "failed")


@dataclass
class Served:
    url: str
    stack: Stack

    def token(self, user_id: uuid.UUID) -> str:
        return mint_dev_token(JWT_SECRET, user_id, issuer=f"{self.stack.url}/auth/v1")

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
def serve(
    database_url: str, storage_root: Path, simulator: SimulatorConfig | None = None
) -> Iterator[Served]:
    with run_stack(database_url, storage_root, simulator) as stack:
        settings = stack.settings(supabase_jwt_secret=JWT_SECRET)
        with BackgroundServer(create_app(settings, run_jobs=True)) as server:
            yield Served(server.url, stack)


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
