"""Where a generation stands (sql/0082_generation_status.sql): its place in the claim's
order, an estimate from its model's recent durations, owner only."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import make_user, signed_in
from tests.support.generations import SCHNELL, start_generation
from tests.support.queue import defer

Conn = psycopg.Connection[dict[str, Any]]


def status(conn: Conn, generation_id: uuid.UUID, user_id: uuid.UUID) -> dict[str, Any]:
    with signed_in(conn, user_id):
        row = conn.execute("select generation_status(%s) as s", (generation_id,)).fetchone()
    assert row is not None
    answer: dict[str, Any] = row["s"]
    return answer


def test_position_follows_the_claim_order_across_users(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    alice_jobs = [start_generation(conn, alice, SCHNELL) for _ in range(3)]
    bobs = start_generation(conn, bob, SCHNELL)

    # Fair turns: bob's first job runs in the first round, before alice's second.
    assert status(conn, alice_jobs[0], alice)["position"] == 1
    assert status(conn, bobs, bob)["position"] == 2
    assert status(conn, alice_jobs[2], alice)["position"] == 4


def test_jobs_that_wait_count_ahead_only_once_they_are_due(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    waiting, woken = start_generation(conn, alice, SCHNELL), start_generation(conn, alice, SCHNELL)
    bobs = start_generation(conn, bob, SCHNELL)
    # Alice's two were handed back a minute after they were enqueued (sql/0160): one
    # waits on its webhook, the other's has come (it is due again and keeps its turn).
    defer(conn, "now() + interval '10 minutes'", generation_id=waiting)
    defer(conn, "now()", generation_id=woken)

    # Alice's turn-0 job waits: Bob's turn 0 is first; her turn 1, due, is next.
    assert status(conn, bobs, bob)["position"] == 1
    assert status(conn, woken, alice)["position"] == 2


def test_an_empty_history_falls_back_to_the_models_estimate(conn: Conn) -> None:
    user = make_user(conn)
    generation_id = start_generation(conn, user, SCHNELL)
    estimate = conn.execute(
        "select estimated_time_seconds as s from models where replicate_id = %s", (SCHNELL,)
    ).fetchone()
    assert estimate is not None

    answer = status(conn, generation_id, user)

    assert answer["estimate_basis"] == ("model" if estimate["s"] is not None else None)
    assert answer["samples"] == 0


def test_recent_durations_of_the_model_give_the_estimate(conn: Conn) -> None:
    user = make_user(conn)
    done = [start_generation(conn, user, SCHNELL) for _ in range(3)]
    for seconds, generation_id in zip((4, 6, 20), done, strict=True):
        conn.execute(
            "update image_generations set status = 'completed', completed_at = now(),"
            " generation_time_seconds = %s where id = %s",
            (seconds, generation_id),
        )
        conn.execute(
            "update job_queue set status = 'completed', completed_at = now()"
            " where payload ->> 'generation_id' = %s",
            (str(generation_id),),
        )
    waiting = start_generation(conn, user, SCHNELL)

    answer = status(conn, waiting, user)

    assert (answer["estimate_basis"], answer["samples"], answer["median_seconds"]) == (
        "recent",
        3,
        6,
    )
    assert answer["estimated_seconds"] == 6


def test_another_users_generation_is_refused(conn: Conn) -> None:
    owner, other = make_user(conn), make_user(conn)
    generation_id = start_generation(conn, owner, SCHNELL)

    with pytest.raises(psycopg.Error):
        status(conn, generation_id, other)


def test_the_count_of_jobs_ahead_stops_at_its_bound(conn: Conn) -> None:
    """sql/0151: past `queue_position_limit` jobs ahead the position is a lower bound."""
    alice, bob = make_user(conn), make_user(conn)
    jobs = [start_generation(conn, alice, SCHNELL) for _ in range(4)]
    conn.execute("insert into imagegen.settings (key, value) values ('queue_position_limit', '2')")

    assert [status(conn, job, alice)["position"] for job in jobs] == [1, 2, 3, 3]
    assert [status(conn, job, alice)["position_exact"] for job in jobs] == [
        True,
        True,
        False,
        False,
    ]
    # Bob's first job is in the first round: exact, whatever the queue behind it.
    answer = status(conn, start_generation(conn, bob, SCHNELL), bob)
    assert (answer["position"], answer["position_exact"]) == (2, True)
