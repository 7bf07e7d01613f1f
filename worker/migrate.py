"""Apply the SQL migrations in `sql/` in order, once each, recorded with a checksum."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import psycopg

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


class MigrationError(RuntimeError):
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
    """Apply pending migrations; return the names applied (empty when up to date)."""
    migrations = load_migrations(directory)
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
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
                        f"(checksum {recorded[:12]} in the database, {migration.checksum[:12]} "
                        "on disk): add a new migration instead of changing an applied one"
                    )
                with conn.transaction():
                    try:
                        conn.execute(migration.sql.encode())
                    except psycopg.Error as exc:
                        raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
                    conn.execute(
                        "insert into imagegen.migrations (name, checksum) values (%s, %s)",
                        (migration.name, migration.checksum),
                    )
                applied.append(migration.name)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
