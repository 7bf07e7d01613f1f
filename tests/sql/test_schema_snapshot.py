"""The migrations reproduce the committed schema snapshot (tests/support/schema_snapshot.py)."""

from __future__ import annotations

import difflib

import pytest

from tests.support.pg import Server, is_plain_local
from tests.support.schema_snapshot import SNAPSHOT, dump_schema, normalize


def test_the_migrations_and_the_schema_snapshot_agree(pg_server: Server, database_url: str) -> None:
    if not is_plain_local(pg_server):
        pytest.skip("the snapshot is of plain PostgreSQL 15; this server has other objects")
    migrated = dump_schema(database_url)
    committed = SNAPSHOT.read_text()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            migrated.splitlines(keepends=True),
            "tests/schema_snapshot.sql (committed)",
            "the migrations",
            n=2,
        )
    )
    assert not diff, (
        "the migrations and tests/schema_snapshot.sql disagree; if the change is meant,"
        f" run `make schema-snapshot` and commit the file:\n{diff[:6000]}"
    )


def test_normalizing_drops_only_what_varies_between_runs() -> None:
    dump = (
        "--\n-- PostgreSQL database dump\n--\n\\restrict AbC123\n"
        "SET statement_timeout = 0;\n"
        "SELECT pg_catalog.set_config('search_path', '', false);\n\n\n\n"
        "CREATE TABLE public.t (\n    id integer\n);   \n\\unrestrict AbC123\n"
    )
    assert normalize(dump) == "CREATE TABLE public.t (\n    id integer\n);\n"
