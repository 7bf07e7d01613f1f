"""What the monitor page shows (sql/0140_monitor_snapshot.sql): one jsonb with the queue
now and over the hour, throughput and failure rate, the latest failures, durations per
model, the workers and what they hold, the provider's creates; service role only."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import make_user
from tests.support.generations import start
from tests.support.queue import claim_jobs

Conn = psycopg.Connection[dict[str, Any]]


def snapshot(conn: Conn) -> dict[str, Any]:
    row = conn.execute("select monitor_snapshot() as s").fetchone()
    assert row is not None
    answer: dict[str, Any] = row["s"]
    return answer


def start_job(conn: Conn, user_id: uuid.UUID) -> uuid.UUID:
    """start(), its job's id: the monitor counts jobs."""
    job_id: uuid.UUID = start(conn, user_id)["job_id"]
    return job_id


def claim(conn: Conn, worker: str, count: int = 1) -> list[uuid.UUID]:
    """claim_jobs of generate-image jobs only; their ids."""
    rows = claim_jobs(conn, worker, limit=count, job_types=["generate-image"])
    return [row["id"] for row in rows]


def test_an_empty_database_gives_zeros_and_a_full_window(conn: Conn) -> None:
    s = snapshot(conn)

    assert s["queue"]["pending"] == 0 and s["queue"]["processing"] == 0
    assert s["queue"]["now"] == [] and s["queue"]["series"] == []
    assert s["throughput"]["per_minute"] == [{"completed": 0, "failed": 0}] * 60
    assert s["throughput"]["failure_rate"] is None
    assert s["failures"] == [] and s["durations"] == [] and s["workers"] == []
    assert s["provider"]["creates_last_minute"] == 0
    assert s["window"]["minutes"] == 60


def test_queue_now_and_the_last_sample_of_the_hour_agree(conn: Conn) -> None:
    user = make_user(conn)
    for _ in range(5):
        start_job(conn, user)
    claim(conn, "worker-a", 2)

    s = snapshot(conn)

    assert s["queue"]["pending"] == 3 and s["queue"]["processing"] == 2
    assert s["queue"]["now"] == [
        {"job_type": "generate-image", "status": "pending", "count": 3},
        {"job_type": "generate-image", "status": "processing", "count": 2},
    ]
    [series] = s["queue"]["series"]
    assert series["job_type"] == "generate-image"
    assert len(series["pending"]) == len(series["processing"]) == 60
    assert (series["pending"][-1], series["processing"][-1]) == (3, 2)
    # The jobs were created just now: nothing in the samples before.
    assert series["pending"][:-1] == [0] * 59 and series["processing"][:-1] == [0] * 59
    assert s["provider"]["creates_last_minute"] == 2


def test_the_hour_is_rebuilt_from_the_rows_and_their_attempts(conn: Conn) -> None:
    user = make_user(conn)
    waited, ran, retried = (start_job(conn, user) for _ in range(3))
    claim(conn, "worker-a", 3)
    conn.execute("select complete_job(%s, p_worker_id => 'worker-a')", (ran,))
    conn.execute("select fail_job(%s, 'worker-a', 'provider timed out')", (retried,))
    conn.execute("select release_jobs('worker-a', array[%s]::uuid[])", (waited,))
    # Move the story back: created 30 minutes ago, the attempt 20 to 10 minutes ago.
    conn.execute(
        """
        update job_queue set
            created_at = now() - interval '30 minutes',
            started_at = case when started_at is not null
                              then now() - interval '20 minutes' end,
            completed_at = case when completed_at is not null
                                then now() - interval '10 minutes' end,
            attempt_history = (
                select coalesce(jsonb_agg(a || jsonb_build_object(
                    'started_at', now() - interval '20 minutes',
                    'finished_at', now() - interval '10 minutes')), '[]'::jsonb)
                from jsonb_array_elements(attempt_history) a)
        """
    )

    s = snapshot(conn)

    [series] = s["queue"]["series"]
    pending, processing = series["pending"], series["processing"]
    # Sample i is at now - (59 - i) minutes.
    assert (pending[59 - 35], processing[59 - 35]) == (0, 0)
    assert (pending[59 - 25], processing[59 - 25]) == (3, 0)
    assert (pending[59 - 15], processing[59 - 15]) == (1, 2)  # the released one waits
    assert (pending[59 - 5], processing[59 - 5]) == (2, 0)  # the retry waits again
    assert (pending[59], processing[59]) == (2, 0)
    assert sum(m["completed"] for m in s["throughput"]["per_minute"]) == 1
    assert s["throughput"]["per_minute"][59 - 10]["completed"] == 1


def test_failures_rate_and_latest_messages(conn: Conn) -> None:
    user = make_user(conn)
    jobs = [start_job(conn, user) for _ in range(4)]
    claim(conn, "worker-a", 4)
    conn.execute("select complete_job(%s, p_worker_id => 'worker-a')", (jobs[0],))
    for job, message in zip(jobs[1:3], ("model exploded", "NSFW content detected"), strict=True):
        conn.execute("select fail_job(%s, 'worker-a', %s, p_retryable => false)", (job, message))
    conn.execute("select fail_job(%s, 'worker-a', 'provider timed out')", (jobs[3],))

    s = snapshot(conn)

    assert s["throughput"]["completed"] == 1 and s["throughput"]["failed"] == 2
    assert s["throughput"]["failure_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["throughput"]["by_type"] == [
        {"job_type": "generate-image", "completed": 1, "failed": 2, "failure_rate": 0.6667}
    ]
    messages = {(f["outcome"], f["error"]) for f in s["failures"]}
    assert messages == {
        ("failed", "model exploded"),
        ("failed", "NSFW content detected"),
        ("retry", "provider timed out"),
    }
    assert all(
        f["worker"] == "worker-a" and f["job_type"] == "generate-image" for f in s["failures"]
    )


def test_durations_per_model_are_percentiles_of_the_hour(conn: Conn) -> None:
    user = make_user(conn)
    for seconds in range(1, 21):
        conn.execute(
            "insert into image_generations (user_id, prompt, model, status, completed_at,"
            " generation_time_seconds) values (%s, 'p', 'flux-schnell', 'completed', now(), %s)",
            (user, seconds),
        )
    conn.execute(
        "insert into image_generations (user_id, prompt, model, status, completed_at,"
        " generation_time_seconds) values (%s, 'p', 'flux-dev', 'completed',"
        " now() - interval '2 hours', 99)",
        (user,),
    )

    [schnell] = snapshot(conn)["durations"]

    assert schnell["model"] == "flux-schnell" and schnell["count"] == 20
    assert schnell["p50_seconds"] == pytest.approx(10.5)
    assert schnell["p95_seconds"] == pytest.approx(19.05)


def test_workers_alive_dead_and_unregistered_with_what_they_hold(
    conn: Conn, database_url: str
) -> None:
    user = make_user(conn)
    for _ in range(3):
        start_job(conn, user)
    with psycopg.connect(database_url, autocommit=True) as session:
        session.execute("select register_worker('worker-live')")
        claim(conn, "worker-live", 2)
        claim(conn, "worker-unregistered", 1)
        conn.execute("select register_worker('worker-gone')")  # then this session ends
        conn.execute("select pg_advisory_unlock_all()")

        workers = {w["worker_id"]: w for w in snapshot(conn)["workers"]}

    assert set(workers) == {"worker-live", "worker-gone", "worker-unregistered"}
    assert workers["worker-live"]["alive"] is True and workers["worker-live"]["holding"] == 2
    assert [j["job_type"] for j in workers["worker-live"]["jobs"]] == ["generate-image"] * 2
    assert workers["worker-gone"]["alive"] is False and workers["worker-gone"]["holding"] == 0
    assert workers["worker-unregistered"]["alive"] is None
    assert workers["worker-unregistered"]["holding"] == 1


def test_provider_limit_is_read_where_the_table_exists(conn: Conn) -> None:
    if conn.execute("select to_regclass('imagegen.provider_limits') is null as m").fetchone()["m"]:
        conn.execute(
            "create table imagegen.provider_limits (provider text primary key,"
            " creates_per_minute integer not null, paused_until timestamptz)"
        )
        conn.execute("insert into imagegen.provider_limits values ('replicate', 600, null)")
    conn.execute(
        "update imagegen.provider_limits set creates_per_minute = 120,"
        " paused_until = now() + interval '30 seconds' where provider = 'replicate'"
    )

    provider = snapshot(conn)["provider"]

    assert provider["limit_per_minute"] == 120 and provider["paused_until"] is not None


def test_only_the_service_role_may_read_it(conn: Conn) -> None:
    for role in ("anon", "authenticated"):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            conn.transaction(force_rollback=True),
        ):
            conn.execute(f"set local role {role}")
            conn.execute("select monitor_snapshot()")
    with conn.transaction(force_rollback=True):
        conn.execute("set local role service_role")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({}),))
        assert conn.execute("select monitor_snapshot() is not null as ok").fetchone()["ok"]
