from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from devstack.postgres import LocalPostgres
from devstack.simulator import SimulatorConfig, create_simulator_app
from tests.support.background_server import BackgroundServer
from tests.support.old_picture import OldPicture, build_old_picture
from tests.support.outbound import Listener, listening
from tests.support.pg import (
    Server,
    database_choice,
    durable_cluster,
    fresh_database,
    prepare_template,
    start_server,
)
from tests.support.served import Served, serve_app
from tests.support.stack import Stack, run_stack
from tests.support.torture import TortureReport
from worker.migrate import migrate

_REPORT = TortureReport()


@pytest.fixture(scope="session")
def torture_report() -> TortureReport:
    """Rows for the summary table printed at the end of the run (see tests/support/torture.py)."""
    return _REPORT


def pytest_report_header() -> str:
    """Which database the session runs on, in one line (a missing Docker daemon included)."""
    return database_choice()[1]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if table := _REPORT.table():
        terminalreporter.write_sep("=", "torture")
        terminalreporter.write_line(table)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    yield from start_server()


@pytest.fixture(scope="session")
def template_database(pg_server: Server) -> str:
    return prepare_template(pg_server)


@pytest.fixture
def database_url(pg_server: Server, template_database: str) -> Iterator[str]:
    """A migrated database of this test's own."""
    yield from fresh_database(pg_server, template_database)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def empty_database_url(pg_server: Server) -> Iterator[str]:
    """A database with nothing in it: no migration applied."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


SIMULATOR_DEFAULTS = SimulatorConfig(latency_seconds=0.05)


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundServer]:
    """The Replicate simulator alone, one server per module (it keeps tests fast)."""
    with BackgroundServer(create_simulator_app(SIMULATOR_DEFAULTS)) as server:
        yield server


@pytest.fixture
def simulator(sim: BackgroundServer) -> Iterator[httpx.Client]:
    """A client of `sim`, which is reset to SIMULATOR_DEFAULTS for each test (its knobs
    and counters are under /_simulator)."""
    with httpx.Client(
        base_url=sim.url, headers={"Authorization": "Bearer test-token"}, timeout=10
    ) as http:
        http.post(
            "/_simulator/config", json=dataclasses.asdict(SIMULATOR_DEFAULTS)
        ).raise_for_status()
        http.post("/_simulator/reset").raise_for_status()
        yield http


@pytest.fixture
def stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """This test's stand-ins (simulator, Storage, JWKS, PostgREST) over its database."""
    with run_stack(database_url, tmp_path / "storage") as running:
        yield running


@pytest.fixture
def served(stack: Stack) -> Iterator[Served]:
    """The app with its job runner, over real HTTP, against this test's stack."""
    with serve_app(stack) as running:
        yield running


@pytest.fixture
def cluster() -> Iterator[LocalPostgres]:
    """A cluster of this test's own, to stop and restart (see durable_cluster)."""
    yield from durable_cluster()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A loopback server that records every request: proof that nothing connected."""
    with listening() as running:
        yield running


@contextmanager
def signed_in(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> Iterator[None]:
    """As the apps' PostgREST requests run on Supabase: one transaction with role
    authenticated and the user's JWT claims set, then the statement."""
    claims = json.dumps({"sub": str(user_id), "role": "authenticated"})
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        yield


@contextmanager
def as_role(
    conn: psycopg.Connection[Any], role: str, user_id: uuid.UUID | None = None
) -> Iterator[None]:
    """As signed_in, for any role, and rolled back: to see what the role may do."""
    claims = {"role": role} | ({"sub": str(user_id)} if user_id else {})
    with conn.transaction(force_rollback=True):
        conn.execute(f"set local role {role}")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        yield


@pytest.fixture(scope="session")
def cron_database_url(pg_server: Server) -> str:
    """The database pg_cron runs in (migrated; shared, so tests clean up after themselves)."""
    url = pg_server.url(pg_server.cron_database)
    migrate(url)
    with psycopg.connect(url) as check:
        if check.execute("select to_regnamespace('cron') is null").fetchone() != (False,):
            pytest.skip("pg_cron is not available in this server's cron database")
    return url


def make_user(conn: psycopg.Connection[Any], email: str | None = None) -> uuid.UUID:
    user_id = uuid.uuid4()
    conn.execute(
        "insert into auth.users (id, email) values (%s, %s)",
        (user_id, email or f"{user_id.hex[:8]}@example.test"),
    )
    return user_id


@pytest.fixture
def user_id(conn: psycopg.Connection[Any]) -> uuid.UUID:
    return make_user(conn)


def http_response(conn: psycopg.Connection[Any], request_id: int, timeout: float = 10) -> Any:
    """The row pg_net writes for `net.http_post` request `request_id`, waited for: real
    pg_net sends after the calling transaction commits and answers asynchronously (the
    local PL/Python stand-in happens to answer at once)."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "select * from net._http_response where id = %s", (request_id,)
        ).fetchone()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"no response for pg_net request {request_id}"
            return row
        time.sleep(0.05)


@pytest.fixture
def upgraded_picture(
    empty_database_url: str,
) -> Iterator[tuple[OldPicture, psycopg.Connection[dict[str, Any]]]]:
    """The old Picture database (tests/support/old_picture.py) after `imagegen migrate`, and a
    connection to it."""
    old = build_old_picture(empty_database_url)
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as connection:
        yield old, connection
