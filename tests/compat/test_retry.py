"""The retry the mobile app makes by UPDATE (docs/CLIENTS.md flow 5, apps/mobile/store/
batchStore.ts, retryFailed: `.update({status: 'pending', error_message: null,
retry_count: 0})` on failed generations): the row is pending again, clean, and gets one
job at a time (the dedupe key `generate-image:<id>`)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import signed_in
from tests.support.generations import SCHNELL

Conn = psycopg.Connection[dict[str, Any]]
RETRY = (
    "update image_generations set status = 'pending', error_message = null, retry_count = 0"
    " where id = %s and status = 'failed' returning *"
)
ENQUEUE = (
    "select enqueue_job('generate-image', jsonb_build_object('generation_id', %(id)s::text),"
    " p_dedupe_key => 'generate-image:' || %(id)s) as id"
)


def predicting(conn: Conn, user_id: uuid.UUID, prediction_id: str) -> dict[str, Any]:
    """A started generation whose job holds a created prediction."""
    started = conn.execute(
        "select * from start_generation(%s, 'a red fox', %s)", (user_id, SCHNELL)
    ).fetchone()
    assert started is not None
    conn.execute("select * from claim_jobs('w', 1)")
    conn.execute("select request_prediction(%s, 'w')", (started["job_id"],))
    conn.execute("select record_prediction(%s, 'w', %s)", (started["job_id"], prediction_id))
    return started


def failed_generation(conn: Conn, user_id: uuid.UUID) -> uuid.UUID:
    """A generation whose prediction failed for good (its job failed; section 8)."""
    started = predicting(conn, user_id, "pred-failed")
    conn.execute(
        "select fail_generation(%s, 'w', 'NSFW content detected', p_retryable => false)",
        (started["job_id"],),
    )
    return uuid.UUID(str(started["generation_id"]))


def test_a_failed_generation_is_retried_once(conn: Conn, user_id: uuid.UUID) -> None:
    generation_id = failed_generation(conn, user_id)
    with signed_in(conn, user_id):
        (row,) = conn.execute(RETRY, (generation_id,)).fetchall()
    assert (row["status"], row["error_message"], row["retry_count"]) == ("pending", None, 0)
    # A new attempt: the old prediction, its time and end are not this one's.
    assert (row["replicate_prediction_id"], row["completed_at"]) == (None, None)
    # Whoever enqueues it (process-queue, twice at once): one job.
    first = conn.execute(ENQUEUE, {"id": generation_id}).fetchone()
    second = conn.execute(ENQUEUE, {"id": generation_id}).fetchone()
    assert first == second
    active = conn.execute(
        "select count(*) as n from job_queue where status in ('pending', 'processing')"
    ).fetchone()
    assert active == {"n": 1}
    # Retrying the retried (pending) row again changes nothing.
    with signed_in(conn, user_id):
        assert conn.execute(RETRY, (generation_id,)).fetchall() == []


def test_a_retry_waits_until_the_generation_has_no_active_job(
    conn: Conn, user_id: uuid.UUID
) -> None:
    generation_id = failed_generation(conn, user_id)
    # Work still held for it (enqueued again by the server meanwhile).
    conn.execute(ENQUEUE, {"id": generation_id})
    with (
        signed_in(conn, user_id),
        pytest.raises(psycopg.errors.InvalidParameterValue, match="still being worked on"),
    ):
        conn.execute(RETRY, (generation_id,))
    row = conn.execute(
        "select status, error_message from image_generations where id = %s", (generation_id,)
    ).fetchone()
    assert row == {"status": "failed", "error_message": "NSFW content detected"}


def test_a_retry_after_a_cancel_does_not_wait_for_the_prediction_to_be_cancelled(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = predicting(conn, user_id, "pred-1")
    with signed_in(conn, user_id):
        conn.execute("select cancel_generation(%s)", (started["generation_id"],))
        (row,) = conn.execute(RETRY, (started["generation_id"],)).fetchall()
    assert row["status"] == "pending"
    # The cancel-prediction job then fails for good: the retried generation is not touched.
    (cancel,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    assert cancel["job_type"] == "cancel-prediction"
    conn.execute("select fail_generation(%s, 'w', 'boom', p_retryable => false)", (cancel["id"],))
    status = conn.execute(
        "select status from image_generations where id = %s", (started["generation_id"],)
    ).fetchone()
    assert status == {"status": "pending"}
