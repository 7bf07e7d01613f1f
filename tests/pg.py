"""The test database harness: one PostgreSQL per session, one clean database per test.

A private cluster (pg_cron preloaded, `cron.database_name` = the cron database) starts
in a temporary directory on a free port and is removed at session end; with
TEST_DATABASE_URL the tests use that server instead. All migrations are applied once, to
a template database; each test gets a copy of it (a file copy: milliseconds), dropped
afterwards, so no test sees another's rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.local_postgres import LocalPostgres
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


def start_server() -> Iterator[Server]:
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield ExistingServer(url)
        return
    cluster = LocalPostgres(
        Path(tempfile.mkdtemp(prefix="imagegen-pg-")), cron_database="imagegen", durable=False
    )
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


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
