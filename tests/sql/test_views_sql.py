"""The operators' queries of docs/CONTRACT.md §3, run unchanged (sql/0001_baseline.sql, section 9)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[dict[str, Any]]


def add_job(conn: Conn, job_type: str = "generate-image", **columns: Any) -> uuid.UUID:
    """A job_queue row in any state, its times given as SQL interval ages ('11 minutes')."""
    row = conn.execute("select enqueue_job(%s) as id", (job_type,)).fetchone()
    assert row is not None
    job_id: uuid.UUID = row["id"]
    for column, value in columns.items():
        if column.endswith("_ago"):
            conn.execute(
                f"update job_queue set {column[:-4]} = now() - %s::interval where id = %s",
                (value, job_id),
            )
        else:
            conn.execute(f"update job_queue set {column} = %s where id = %s", (value, job_id))
    return job_id


@pytest.fixture
def busy_queue(conn: Conn) -> dict[str, uuid.UUID]:
    """A queue in every state, with known times."""
    return {
        "pending": add_job(conn, created_at_ago="5 minutes"),
        "pending_download": add_job(conn, "download-image", created_at_ago="1 minute"),
        "processing": add_job(
            conn,
            status="processing",
            attempts=1,
            locked_by="w",
            created_at_ago="3 minutes",
            started_at_ago="2 minutes",
            locked_until_ago="-3 minutes",
        ),
        "stuck": add_job(
            conn,
            status="processing",
            attempts=2,
            locked_by="w",
            created_at_ago="12 minutes",
            started_at_ago="11 minutes",
            locked_until_ago="-1 hour",
        ),
        "completed_fast": add_job(
            conn,
            status="completed",
            attempts=1,
            created_at_ago="10 minutes",
            started_at_ago="9 minutes",
            completed_at_ago="8 minutes",
        ),
        "completed_slow": add_job(
            conn,
            status="completed",
            attempts=3,
            created_at_ago="30 minutes",
            started_at_ago="27 minutes",
            completed_at_ago="24 minutes",
        ),
        "completed_long_ago": add_job(
            conn,
            status="completed",
            attempts=1,
            created_at_ago="3 hours",
            started_at_ago="3 hours",
            completed_at_ago="2 hours",
        ),
        "failed": add_job(
            conn,
            status="failed",
            attempts=3,
            error_message="Replicate returned 500",
            created_at_ago="20 minutes",
            started_at_ago="19 minutes",
            completed_at_ago="18 minutes",
            updated_at_ago="18 minutes",
        ),
        "failed_yesterday": add_job(
            conn,
            status="failed",
            attempts=3,
            error_message="old",
            created_at_ago="26 hours",
            started_at_ago="26 hours",
            completed_at_ago="25 hours",
            updated_at_ago="25 hours",
        ),
        "cancelled": add_job(conn, "download-image", status="cancelled", completed_at_ago="1 min"),
    }


def test_status_counts(conn: Conn, busy_queue: dict[str, uuid.UUID]) -> None:
    rows = conn.execute("SELECT status, COUNT(*) FROM job_queue GROUP BY status").fetchall()
    assert {row["status"]: row["count"] for row in rows} == {
        "pending": 2,
        "processing": 2,
        "completed": 3,
        "failed": 2,
        "cancelled": 1,
    }


def test_queue_health(conn: Conn, busy_queue: dict[str, uuid.UUID]) -> None:
    rows = conn.execute("select * from queue_health").fetchall()
    assert list(rows[0]) == [
        "job_type",
        "status",
        "count",
        "oldest_job",
        "newest_job",
        "avg_duration_seconds",
        "avg_attempts",
    ]
    health = {(row["job_type"], row["status"]): row for row in rows}
    assert set(health) == {
        ("generate-image", "pending"),
        ("generate-image", "processing"),
        ("generate-image", "completed"),
        ("generate-image", "failed"),
        ("download-image", "pending"),
        ("download-image", "cancelled"),
    }
    completed = health[("generate-image", "completed")]
    assert completed["count"] == 3
    assert completed["oldest_job"] < completed["newest_job"]
    # (60 + 180 + 3600) / 3 seconds between start and completion.
    assert float(completed["avg_duration_seconds"]) == pytest.approx(1280, abs=1)
    assert float(completed["avg_attempts"]) == pytest.approx(5 / 3)
    processing = health[("generate-image", "processing")]
    assert processing["count"] == 2
    assert processing["avg_duration_seconds"] is None
    assert float(processing["avg_attempts"]) == 1.5


def test_failed_jobs_recent(conn: Conn, busy_queue: dict[str, uuid.UUID]) -> None:
    rows = conn.execute("select * from failed_jobs_recent").fetchall()
    assert [row["id"] for row in rows] == [busy_queue["failed"]]
    (failed,) = rows
    assert failed["error_message"] == "Replicate returned 500"
    assert failed["attempts"] == failed["max_attempts"] == 3
    assert {"job_type", "payload", "error_details", "created_by", "completed_at"} <= set(failed)


def test_failed_jobs_recent_newest_first(conn: Conn) -> None:
    older = add_job(conn, status="failed", updated_at_ago="2 hours")
    newer = add_job(conn, status="failed", updated_at_ago="1 hour")
    rows = conn.execute("select id from failed_jobs_recent").fetchall()
    assert [row["id"] for row in rows] == [newer, older]


def test_stuck_jobs_shows_a_job_processing_for_eleven_minutes(
    conn: Conn, busy_queue: dict[str, uuid.UUID]
) -> None:
    rows = conn.execute("select * from stuck_jobs").fetchall()
    assert [row["id"] for row in rows] == [busy_queue["stuck"]]
    assert float(rows[0]["minutes_processing"]) == pytest.approx(11, abs=0.2)
    assert rows[0]["locked_by"] == "w"
    assert rows[0]["attempts"] == 2


def test_queue_throughput(conn: Conn, busy_queue: dict[str, uuid.UUID]) -> None:
    rows = conn.execute("select * from queue_throughput").fetchall()
    assert [row["job_type"] for row in rows] == ["generate-image"]
    (row,) = rows
    # The completion two hours ago is outside the hour; cancelled jobs are not throughput.
    assert (row["completed"], row["failed"]) == (2, 1)
    assert float(row["completed_per_minute"]) == pytest.approx(2 / 60, abs=0.01)
    # Waits 60 s, 180 s, 60 s; runs 60 s, 180 s, 60 s.
    assert row["p50_wait_seconds"] == pytest.approx(60, abs=1)
    assert row["p95_wait_seconds"] == pytest.approx(168, abs=1)
    assert row["p50_run_seconds"] == pytest.approx(60, abs=1)
    assert 60 < row["p95_run_seconds"] <= 180


def test_views_answer_on_an_empty_queue(conn: Conn) -> None:
    for view in ("queue_health", "failed_jobs_recent", "stuck_jobs", "queue_throughput"):
        assert conn.execute(f"select * from {view}").fetchall() == []
    assert conn.execute("SELECT status, COUNT(*) FROM job_queue GROUP BY status").fetchall() == []


def test_a_real_job_run_shows_in_the_views(conn: Conn) -> None:
    """The views read what the functions write, not only hand-made rows."""
    job_id = add_job(conn)
    conn.execute("select * from claim_jobs('w', 1)")
    conn.execute("select complete_job(%s, 'boom', p_retryable => false)", (job_id,))
    assert [row["id"] for row in conn.execute("select id from failed_jobs_recent")] == [job_id]
    throughput = conn.execute("select completed, failed from queue_throughput").fetchall()
    assert throughput == [{"completed": 0, "failed": 1}]
