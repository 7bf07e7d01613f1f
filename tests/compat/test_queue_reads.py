"""docs/CLIENTS.md flow 7, packages/shared/src/queue.ts: a user reads their own jobs by id and
by status, and the views queue_health and failed_jobs_recent, as PostgREST runs them."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.conftest import make_user, signed_in
from tests.support.generations import SCHNELL

Conn = psycopg.Connection[dict[str, Any]]


def start(conn: Conn, user_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(
        "select * from start_generation(%s, 'a red fox', %s)", (user_id, SCHNELL)
    ).fetchone()
    assert row is not None
    return row


def test_a_user_reads_their_own_jobs_and_queue_views(conn: Conn, user_id: uuid.UUID) -> None:
    """getJobStatus (`.eq('id', jobId).single()`), getUserJobs (`.order('created_at',
    {ascending: false}).eq('status', ...).limit(...)`), getQueueStats (queue_health),
    getFailedJobs (failed_jobs_recent)."""
    mine = [start(conn, user_id) for _ in range(3)]
    theirs = start(conn, make_user(conn))
    # One of mine fails for good, one of theirs too.
    conn.execute("select * from claim_jobs('w', 10)")
    for started in (mine[0], theirs):
        conn.execute(
            "select fail_generation(%s, 'w', 'NSFW content detected', p_retryable => false)",
            (started["job_id"],),
        )
    conn.execute(
        "select release_jobs('w', array[%s, %s]::uuid[])", (mine[1]["job_id"], mine[2]["job_id"])
    )

    with signed_in(conn, user_id):
        one = conn.execute("select * from job_queue where id = %s", (mine[1]["job_id"],))
        assert [row["id"] for row in one.fetchall()] == [mine[1]["job_id"]]
        other = conn.execute("select * from job_queue where id = %s", (theirs["job_id"],))
        assert other.fetchall() == []  # `.single()` answers 406: not theirs to see
        pending = conn.execute(
            "select * from job_queue where status = 'pending' order by created_at desc limit 10"
        ).fetchall()
        assert [row["id"] for row in pending] == [mine[2]["job_id"], mine[1]["job_id"]]
        health = conn.execute("select * from queue_health").fetchall()
        assert {(row["job_type"], row["status"]): row["count"] for row in health} == {
            ("generate-image", "pending"): 2,
            ("generate-image", "failed"): 1,
        }
        failed = conn.execute("select * from failed_jobs_recent").fetchall()
        assert [(row["id"], row["error_message"]) for row in failed] == [
            (mine[0]["job_id"], "NSFW content detected")
        ]
