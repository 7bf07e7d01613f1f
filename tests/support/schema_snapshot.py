"""The committed schema snapshot: `pg_dump --schema-only` of a freshly migrated database,
normalized so that it is stable (no version banner, no session settings, no owners).

tests/sql/test_schema_snapshot.py fails when the migrations and tests/schema_snapshot.sql
disagree, so every schema change shows up in review as a diff of that file. After adding
a migration, refresh it with `make schema-snapshot` (this module run as a script: it
starts a private cluster, migrates an empty database and writes the file).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.postgres import BIN_DIR, LocalPostgres
from worker.migrate import migrate

SNAPSHOT = Path(__file__).resolve().parents[1] / "schema_snapshot.sql"

# Lines that change with the pg_dump version or the session, not with the schema.
_NOISE = re.compile(r"^(--.*|SET .*|SELECT pg_catalog\.set_config\(.*|\\(un)?restrict .*)$")


def dump_schema(database_url: str) -> str:
    """The normalized schema of that database, without the schema `pgmq`: that one is the
    pgmq package's SQL as it pins it (worker/migrate.py), not ours."""
    result = subprocess.run(
        [
            str(BIN_DIR / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--exclude-schema=pgmq",
            "--dbname",
            database_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return normalize(result.stdout)


def normalize(dump: str) -> str:
    lines = [line.rstrip() for line in dump.splitlines() if not _NOISE.match(line)]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n"


def main() -> int:
    cluster = LocalPostgres(
        Path(tempfile.mkdtemp(prefix="imagegen-snapshot-")), cron_database="postgres", durable=False
    )
    try:
        cluster.init()
        cluster.start()
        url = cluster.create_database("snapshot")
        migrate(url)
        SNAPSHOT.write_text(dump_schema(url))
    finally:
        cluster.destroy()
    print(f"wrote {SNAPSHOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
