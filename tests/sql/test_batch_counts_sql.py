"""Batch counts (sql/0032_batches.sql, sql/0161): an update of a generation that changes no
batch item's status leaves batch_generations alone; the counting itself is shown by
tests/compat/test_batches.py."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.conftest import make_user
from tests.support.generations import SCHNELL, start_generation

Conn = psycopg.Connection[dict[str, Any]]


def calls(conn: Conn) -> dict[str, int]:
    """Calls of the batch triggers' functions this backend has counted, not yet reported."""
    rows = conn.execute(
        "select funcname, calls from pg_stat_xact_user_functions"
        " where funcname in ('count_batch_items', 'announce_ended_batches')"
    ).fetchall()
    return {row["funcname"]: row["calls"] for row in rows}


def test_an_update_that_changes_no_batch_item_does_not_touch_the_batches(conn: Conn) -> None:
    generation = start_generation(conn, make_user(conn), SCHNELL)

    with conn.transaction():
        conn.execute("set local track_functions = 'pl'")
        before = calls(conn)
        conn.execute("update image_generations set updated_at = now() where id = %s", (generation,))
        after = calls(conn)

    assert after.get("count_batch_items", 0) - before.get("count_batch_items", 0) == 1
    # Before sql/0161 its empty UPDATE of batch_generations fired that table's trigger too.
    assert after.get("announce_ended_batches", 0) == before.get("announce_ended_batches", 0)
