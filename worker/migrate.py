"""Apply the SQL migrations in `sql/` in order, once each, recorded with a checksum.

All pending files are applied in one transaction: either every one of them is applied
and recorded, or (on any error) none is and the database is exactly as it was. On the
old platform's database the baseline is only consistent as a whole with what follows it,
so a run that stopped after some files would leave a state nobody tested. The price: a
migration cannot use statements that refuse a transaction block (`create index
concurrently`, `vacuum`, `alter system`); none do, and a later one that must will need
its own mechanism.

pgmq (the queue of completion events, sql/0085) is installed first, in the same
transaction, where the database has none: the server's `pgmq` extension when it has one
(Supabase), else the SQL the pgmq package ships. So `make dev`, the tests and an upgrade
of the old database all get it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pgmq.install import PGMQInstallError, install_pgmq_from_sql

from worker.errors import ImagegenError

# The repository's sql/ (an installed image points IMAGEGEN_MIGRATIONS_DIR at its copy).
MIGRATIONS_DIR = Path(
    os.environ.get("IMAGEGEN_MIGRATIONS_DIR", Path(__file__).resolve().parent.parent / "sql")
)

# One migrator at a time per database; the number is arbitrary but fixed.
_LOCK_KEY = 4_242_001

_CREATE_TABLE = """
create schema if not exists imagegen;
create table if not exists imagegen.migrations (
    name text primary key,
    checksum text not null,
    applied_at timestamptz not null default now()
)
"""


class MigrationError(ImagegenError, RuntimeError):
    """A migration cannot be applied, or an applied one was edited."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise MigrationError(f"no migrations found in {directory}")
    return [Migration(path.name, path.read_text()) for path in files]


def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date).

    On any failure nothing is applied (one transaction) and MigrationError names the file.
    """
    migrations = load_migrations(directory)
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            with conn.transaction():
                # Released at commit or rollback: a second migrator waits, then sees the work.
                conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute(_CREATE_TABLE)
                install_pgmq(conn)
                done: dict[str, str] = dict(
                    conn.execute("select name, checksum from imagegen.migrations").fetchall()
                )
                for migration in migrations:
                    recorded = done.get(migration.name)
                    if recorded == migration.checksum:
                        continue
                    if recorded is not None:
                        raise MigrationError(
                            f"migration {migration.name} was edited after it was applied "
                            f"(checksum {recorded[:12]} in the database, "
                            f"{migration.checksum[:12]} on disk): add a new migration "
                            "instead of changing an applied one"
                        )
                    try:
                        conn.execute(migration.sql.encode())
                    except psycopg.Error as exc:
                        raise MigrationError(
                            f"migration {migration.name} failed: {exc}" + _nothing_applied(applied)
                        ) from exc
                    conn.execute(
                        "insert into imagegen.migrations (name, checksum) values (%s, %s)",
                        (migration.name, migration.checksum),
                    )
                    applied.append(migration.name)
        except psycopg.Error as exc:
            raise MigrationError(f"migrations failed: {exc}{_nothing_applied(applied)}") from exc
    return applied


def install_pgmq(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """Install pgmq where the database has none; say how ("extension" or "sql <version>"),
    or None when it was there. The package's SQL cannot be run twice, hence the check."""
    if conn.execute("select to_regnamespace('pgmq') is not null").fetchone() == (True,):
        return None
    available = conn.execute(
        "select exists (select from pg_available_extensions where name = 'pgmq')"
    ).fetchone()
    if available == (True,):
        conn.execute("create extension if not exists pgmq")
        return "extension"
    try:
        return f"sql {install_pgmq_from_sql(conn=conn)}"
    except PGMQInstallError as exc:
        raise MigrationError(f"installing pgmq failed: {exc}" + _nothing_applied([])) from exc


def _nothing_applied(before: list[str]) -> str:
    rolled_back = f" ({', '.join(before)} rolled back too)" if before else ""
    return f"; nothing was applied{rolled_back}, the database is as it was"
