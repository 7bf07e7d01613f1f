"""Attempt history in the row (sql/0081_attempt_history.sql): each ended attempt is listed
in job_queue.attempt_history, a snooze is not, and the list stays bounded."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.support.queue import claim_jobs as claim
from tests.support.queue import enqueue_job

Conn = psycopg.Connection[dict[str, Any]]


def enqueue(conn: Conn, max_attempts: int = 3) -> uuid.UUID:
    """A cleanup-storage job: one with no generation behind it."""
    return enqueue_job(conn, "cleanup-storage", max_attempts=max_attempts)


def history(conn: Conn, job_id: uuid.UUID) -> list[dict[str, Any]]:
    row = conn.execute("select attempt_history from job_queue where id = %s", (job_id,)).fetchone()
    assert row is not None
    attempts: list[dict[str, Any]] = row["attempt_history"]
    return attempts


def make_due(conn: Conn, job_id: uuid.UUID) -> None:
    conn.execute("update job_queue set scheduled_at = now() where id = %s", (job_id,))


def test_each_ended_attempt_is_listed_with_its_worker_outcome_and_error(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "worker-a")
    conn.execute("select fail_job(%s, 'worker-a', 'provider timed out')", (job_id,))
    make_due(conn, job_id)
    claim(conn, "worker-b")
    conn.execute("select complete_job(%s, p_worker_id => 'worker-b')", (job_id,))

    attempts = history(conn, job_id)

    assert [(a["attempt"], a["worker"], a["outcome"]) for a in attempts] == [
        (1, "worker-a", "retry"),
        (2, "worker-b", "completed"),
    ]
    assert attempts[0]["error"] == "provider timed out"
    assert "error" not in attempts[1]
    assert all(a["started_at"] <= a["finished_at"] for a in attempts)


def test_a_lease_taken_over_is_an_attempt_lost(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "worker-a")
    conn.execute(
        "update job_queue set locked_until = now() - interval '1 second' where id = %s", (job_id,)
    )
    claim(conn, "worker-b")

    assert [(a["worker"], a["outcome"], a["error_kind"]) for a in history(conn, job_id)] == [
        ("worker-a", "lost", "lease_expired")
    ]


def test_a_snooze_hands_the_attempt_back_and_is_not_listed(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "worker-a")
    conn.execute("select snooze_job(%s, 'worker-a', now())", (job_id,))

    assert history(conn, job_id) == []


def test_the_history_is_bounded_and_messages_are_cut(conn: Conn) -> None:
    job_id = enqueue(conn, max_attempts=30)
    for attempt in range(15):
        claim(conn, "worker-a")
        conn.execute("select fail_job(%s, 'worker-a', %s)", (job_id, f"{attempt}:" + "x" * 900))
        make_due(conn, job_id)

    attempts = history(conn, job_id)

    assert [a["attempt"] for a in attempts] == list(range(6, 16))
    assert all(len(a["error"]) == 500 for a in attempts)
