"""Admission control (sql/0001_baseline.sql, section 7): the per-user limit admits exactly
the limit; the queue bound's shared count admits on a recent count far from it and refuses
only on a fresh count; a small bound always counts."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import make_user
from tests.support.generations import start


def fill_queue(conn: psycopg.Connection[Any], jobs: int) -> None:
    conn.execute(
        "insert into job_queue (job_type, payload) select 'bench-noop', '{}' "
        "from generate_series(1, %s)",
        (jobs,),
    )


def sample(conn: psycopg.Connection[Any], depth: int, age_seconds: float) -> None:
    conn.execute(
        "update imagegen.queue_depth_sample"
        " set depth = %s, counted_at = clock_timestamp() - make_interval(secs => %s)",
        (depth, age_seconds),
    )


def test_a_large_bound_refuses_on_a_fresh_count_only(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select configure_admission(p_max_queue_depth => 1500)")
    fill_queue(conn, 1500)
    user = make_user(conn)

    sample(conn, 0, 0)  # counted just now, far below the bound: trusted
    start(conn, user)

    sample(conn, 0, 1)  # too old: counted again, and the queue is full
    with pytest.raises(psycopg.Error) as refused:
        start(conn, user)
    assert refused.value.sqlstate == "PT503"

    sample(conn, 600, 0)  # recent, but within the headroom of the bound: counted
    with pytest.raises(psycopg.Error) as refused:
        start(conn, user)
    assert refused.value.sqlstate == "PT503"

    conn.execute("update job_queue set status = 'cancelled' where status = 'pending'")
    sample(conn, 1500, 1)  # the count from before the drain, now stale
    start(conn, user)  # drained: admitted again once the count is fresh


def test_a_small_bound_always_counts(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select configure_admission(p_max_queue_depth => 30)")
    fill_queue(conn, 30)
    sample(conn, 0, 0)
    with pytest.raises(psycopg.Error) as refused:
        start(conn, make_user(conn))
    assert refused.value.sqlstate == "PT503"


def active_of(conn: psycopg.Connection[Any], user: uuid.UUID) -> int:
    row = conn.execute(
        "select count(*) as n from image_generations where user_id = %s"
        " and imagegen.is_active(status)",
        (user,),
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_the_per_user_limit_admits_exactly_the_limit(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select configure_admission(p_max_active_per_user => 2)")
    alice, bob = make_user(conn), make_user(conn)
    start(conn, alice)
    start(conn, alice)  # the limit itself is admitted
    with pytest.raises(psycopg.Error) as refused:
        start(conn, alice)
    assert refused.value.sqlstate == "PT429"
    assert active_of(conn, alice) == 2  # the refused start wrote nothing
    start(conn, bob)  # another user's starts are their own

    conn.execute(
        "update image_generations set status = 'completed' where id ="
        " (select id from image_generations where user_id = %s limit 1)",
        (alice,),
    )
    start(conn, alice)  # a finished generation frees its place
    assert active_of(conn, alice) == 2
