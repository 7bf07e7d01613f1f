"""The test database harness: one PostgreSQL per session, one clean database per test.

A private cluster (pg_cron preloaded, `cron.database_name` = the cron database) starts
in a temporary directory on a free port and is removed at session end; with
TEST_DATABASE_URL the tests use that server instead. With TEST_DATABASE=supabase, where a
Docker daemon answers, testcontainers starts Supabase's own PostgreSQL image (its roles,
`auth` schema, pg_net, Vault and pg_cron 1.6 in its `postgres` database, which is then the
cron database); without a daemon the session header says so in one line and the local
cluster is used. All migrations are applied once, to a template database; each test gets
a copy of it (a file copy: milliseconds), dropped afterwards, so no test sees another's
rows.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from devstack.postgres import LocalPostgres, temporary_cluster
from worker.migrate import migrate

TEMPLATE = "imagegen_template"


class Server(Protocol):
    cron_database: str

    def url(self, database: str | None = None) -> str: ...

    def create_database(
        self, name: str, *, template: str | None = None, exist_ok: bool = False
    ) -> str: ...

    def drop_database(self, name: str) -> None: ...


class ExistingServer:
    """A server someone else runs (TEST_DATABASE_URL); its user must be able to CREATEDB."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.cron_database = str(conninfo_to_dict(url).get("dbname") or "postgres")

    def url(self, database: str | None = None) -> str:
        return make_conninfo(self._url, dbname=database or self.cron_database)

    def create_database(
        self, name: str, *, template: str | None = None, exist_ok: bool = False
    ) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            if (
                exist_ok
                and conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
            ):
                return self.url(name)
            sql = f'create database "{name}"' + (f' template "{template}"' if template else "")
            conn.execute(sql.encode())
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)'.encode())


# Supabase's PostgreSQL image (override with SUPABASE_POSTGRES_IMAGE); its superuser.
SUPABASE_IMAGE = os.environ.get("SUPABASE_POSTGRES_IMAGE", "supabase/postgres:15.8.1.085")
SUPABASE_SUPERUSER = "supabase_admin"
DOCKER_TIMEOUT_SECONDS = 1.0


@functools.cache
def database_choice() -> tuple[str, str]:
    """Which server the session uses ("url", "supabase" or "local") and one line saying why."""
    if os.environ.get("TEST_DATABASE_URL"):
        return "url", "database: TEST_DATABASE_URL"
    if os.environ.get("TEST_DATABASE", "").lower() != "supabase":
        return "local", "database: a private PostgreSQL 15 cluster"
    if (reason := docker_unavailable()) is None:
        return "supabase", f"database: {SUPABASE_IMAGE} through testcontainers"
    return "local", f"database: TEST_DATABASE=supabase, but {reason}: using the local cluster"


def docker_unavailable() -> str | None:
    """None when a Docker daemon answers within a second, else why not (one phrase)."""
    try:
        import docker  # testcontainers' own client
    except ImportError:
        return "the docker library is not installed (pip install -e '.[dev]')"
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_SECONDS)
        client.ping()
        client.close()
    except Exception as exc:
        return f"no Docker daemon answers ({type(exc).__name__})"
    return None


def supabase_container() -> Iterator[Server]:
    from testcontainers.postgres import PostgresContainer

    password = uuid.uuid4().hex
    container: Any = PostgresContainer(
        SUPABASE_IMAGE, username="postgres", password=password, dbname="postgres"
    )
    with container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(5432)
        yield ExistingServer(f"postgresql://{SUPABASE_SUPERUSER}:{password}@{host}:{port}/postgres")


def is_plain_local(server: Server) -> bool:
    """True for the private cluster the harness starts (what the schema snapshot is of)."""
    return isinstance(server, LocalPostgres)


def start_server() -> Iterator[Server]:
    choice, _ = database_choice()
    if choice == "url":
        yield ExistingServer(os.environ["TEST_DATABASE_URL"])
        return
    if choice == "supabase":
        yield from supabase_container()
        return
    with temporary_cluster("imagegen-pg-", durable=False) as cluster:
        yield cluster


def prepare_template(server: Server) -> str:
    server.drop_database(TEMPLATE)
    migrate(server.create_database(TEMPLATE))
    return TEMPLATE


def fresh_database(server: Server, template: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name, template=template)
    try:
        yield url
    finally:
        server.drop_database(name)


def durable_cluster() -> Iterator[LocalPostgres]:
    """A private, durable cluster of its own, to stop and restart: an immediate restart
    must not lose committed work."""
    server = LocalPostgres(Path(tempfile.mkdtemp(prefix="imagegen-restart-")), durable=True)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


def connect(url: str, timeout: float = 15) -> psycopg.Connection[dict[str, Any]]:
    """A connection, waiting for the server to accept one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=2)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
