"""The queue functions (sql/0001_baseline.sql, section 5) on the real cluster."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.support.queue import claim_jobs as claim
from tests.support.queue import enqueue_job as enqueue

Conn = psycopg.Connection[dict[str, Any]]


def job(conn: Conn, job_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute("select * from job_queue where id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def make_due(conn: Conn, job_id: uuid.UUID) -> None:
    """Skip the backoff wait: the retry is due now."""
    conn.execute("update job_queue set scheduled_at = now() where id = %s", (job_id,))


def backoff_seconds(conn: Conn, job_id: uuid.UUID) -> float:
    # updated_at is the complete_job transaction's now(): the delay it chose, exactly.
    row = conn.execute(
        "select extract(epoch from scheduled_at - updated_at)::float8 as delay"
        " from job_queue where id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    delay: float = row["delay"]
    return delay


# enqueue_job


def test_enqueue_job_with_the_original_positional_signature(conn: Conn) -> None:
    row = conn.execute(
        "select enqueue_job('download-image', '{\"url\": \"https://x.test/a.png\"}'::jsonb,"
        " 5, now() + interval '1 hour', 7) as id"
    ).fetchone()
    assert row is not None
    stored = job(conn, row["id"])
    assert stored["job_type"] == "download-image"
    assert stored["payload"] == {"url": "https://x.test/a.png"}
    assert stored["priority"] == 5
    assert stored["max_attempts"] == 7
    assert stored["status"] == "pending"
    assert stored["attempts"] == 0
    delay = conn.execute(
        "select extract(epoch from scheduled_at - created_at)::float8 as s from job_queue"
    ).fetchone()
    assert delay is not None and 3599 < delay["s"] <= 3600


def test_enqueue_job_defaults(conn: Conn) -> None:
    stored = job(conn, enqueue(conn, "cleanup-storage"))
    assert stored["payload"] == {}
    assert stored["priority"] == 0
    assert stored["max_attempts"] == 3
    assert stored["status"] == "pending"
    assert stored["attempts"] == 0
    assert stored["created_by"] is None
    assert stored["dedupe_key"] is None
    assert stored["locked_by"] is None and stored["locked_until"] is None
    assert stored["scheduled_at"] == stored["created_at"]


def test_enqueue_job_null_arguments_fall_back_to_defaults(conn: Conn) -> None:
    row = conn.execute(
        "select enqueue_job('cleanup-storage', null, null, null, null) as id"
    ).fetchone()
    assert row is not None
    stored = job(conn, row["id"])
    assert (stored["payload"], stored["priority"], stored["max_attempts"]) == ({}, 0, 3)


def test_enqueue_job_refuses_a_malformed_job_type(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        enqueue(conn, "Generate Image; drop table job_queue")
    assert conn.execute("select count(*) as n from job_queue").fetchone() == {"n": 0}


def test_enqueue_job_notifies_a_listening_connection(conn: Conn, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("listen job_queue")
        enqueue(conn, "download-image")
        received = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in received] == [("job_queue", "download-image")]


def test_enqueue_job_notifies_only_when_the_transaction_commits(
    conn: Conn, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("listen job_queue")
        with conn.transaction(force_rollback=True):
            enqueue(conn)
        assert list(listener.notifies(timeout=0.3)) == []


def test_active_dedupe_key_returns_the_existing_job(conn: Conn) -> None:
    first = enqueue(conn, dedupe_key="generate-image:abc")
    again = enqueue(conn, dedupe_key="generate-image:abc", payload={"other": True})
    assert again == first
    assert conn.execute("select count(*) as n from job_queue").fetchone() == {"n": 1}
    assert job(conn, first)["payload"] == {}

    # Still active while processing.
    claim(conn, "w1")
    assert enqueue(conn, dedupe_key="generate-image:abc") == first


def test_finished_dedupe_key_allows_a_new_job(conn: Conn) -> None:
    first = enqueue(conn, dedupe_key="k")
    claim(conn, "w1")
    assert conn.execute("select complete_job(%s) as ok", (first,)).fetchone() == {"ok": True}
    second = enqueue(conn, dedupe_key="k")
    assert second != first
    assert job(conn, second)["status"] == "pending"


def test_a_dedupe_hit_sends_no_notification(conn: Conn, database_url: str) -> None:
    enqueue(conn, dedupe_key="k")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("listen job_queue")
        enqueue(conn, dedupe_key="k")
        assert list(listener.notifies(timeout=0.3)) == []


# claim_jobs


def test_claim_takes_priority_first_then_the_oldest(conn: Conn) -> None:
    old_low = enqueue(conn, priority=0)
    new_high = enqueue(conn, priority=5)
    old_high = enqueue(conn, priority=5)
    new_low = enqueue(conn, priority=0)
    for seconds, job_id in [(100, old_low), (10, new_high), (50, old_high), (5, new_low)]:
        conn.execute(
            "update job_queue set created_at = now() - make_interval(secs => %s) where id = %s",
            (seconds, job_id),
        )
    order = [claim(conn, "w")[0]["id"] for _ in range(4)]
    assert order == [old_high, new_high, old_low, new_low]
    assert claim(conn, "w") == []


def test_claim_respects_the_due_time(conn: Conn) -> None:
    later = enqueue(conn, scheduled_at="2999-01-01T00:00:00Z")
    assert claim(conn, "w", limit=10) == []
    conn.execute("update job_queue set scheduled_at = now() - interval '1 second'")
    assert [row["id"] for row in claim(conn, "w", limit=10)] == [later]


def test_claim_filters_by_job_type(conn: Conn) -> None:
    generate = enqueue(conn, "generate-image", priority=9)
    download = enqueue(conn, "download-image")
    webhook = enqueue(conn, "process-webhook")
    claimed = claim(conn, "w", limit=10, job_types=["download-image", "process-webhook"])
    assert {row["id"] for row in claimed} == {download, webhook}
    assert job(conn, generate)["status"] == "pending"
    assert claim(conn, "w", limit=10, job_types=["cleanup-storage"]) == []
    assert [row["id"] for row in claim(conn, "w", limit=10, job_types=None)] == [generate]


def test_claim_increments_attempts_and_sets_the_lease(conn: Conn) -> None:
    job_id = enqueue(conn)
    (row,) = claim(conn, "worker-a", lease_seconds=120)
    assert row["id"] == job_id
    assert row["status"] == "processing"
    assert row["attempts"] == 1
    assert row["locked_by"] == "worker-a"
    assert row["started_at"] is not None
    lease = conn.execute(
        "select extract(epoch from locked_until - started_at)::float8 as s from job_queue"
    ).fetchone()
    assert lease == {"s": 120.0}
    assert job(conn, job_id) == row


def test_claim_respects_the_limit(conn: Conn) -> None:
    for _ in range(5):
        enqueue(conn)
    assert claim(conn, "w", limit=0) == []
    assert len(claim(conn, "w", limit=3)) == 3
    assert len(claim(conn, "w", limit=3)) == 2
    assert claim(conn, "w", limit=3) == []


def test_claim_does_not_take_a_live_lease(conn: Conn) -> None:
    enqueue(conn)
    claim(conn, "worker-a", lease_seconds=300)
    assert claim(conn, "worker-b", limit=10) == []


def test_claim_reclaims_an_expired_lease(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "worker-a")
    conn.execute("update job_queue set locked_until = now() - interval '1 second'")
    (row,) = claim(conn, "worker-b")
    assert row["id"] == job_id
    assert row["attempts"] == 2
    assert row["locked_by"] == "worker-b"
    assert row["status"] == "processing"


def test_an_expired_lease_on_the_final_attempt_fails_the_job_and_its_generation(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = conn.execute(
        "select * from start_generation(%s, 'a cat', 'black-forest-labs/flux-schnell')",
        (user_id,),
    ).fetchone()
    assert started is not None
    job_id = started["job_id"]
    conn.execute("update job_queue set max_attempts = 1 where id = %s", (job_id,))
    claim(conn, "worker-a")
    conn.execute("update job_queue set locked_until = now() - interval '1 second'")

    assert claim(conn, "worker-b", limit=10) == []

    failed = job(conn, job_id)
    assert failed["status"] == "failed"
    assert failed["completed_at"] is not None
    assert failed["locked_by"] is None and failed["locked_until"] is None
    assert "stopped responding" in failed["error_message"]
    generation = conn.execute(
        "select status, error_message from image_generations where id = %s",
        (started["generation_id"],),
    ).fetchone()
    assert generation is not None
    assert generation["status"] == "failed"
    assert "try again" in generation["error_message"]


def test_an_exhausted_lease_of_another_job_type_is_left_alone(conn: Conn) -> None:
    job_id = enqueue(conn, "download-image", max_attempts=1)
    claim(conn, "worker-a")
    conn.execute("update job_queue set locked_until = now() - interval '1 second'")
    claim(conn, "worker-b", job_types=["generate-image"])
    assert job(conn, job_id)["status"] == "processing"


# claim_next_job


def test_claim_next_job_with_the_original_signature(conn: Conn) -> None:
    download = enqueue(conn, "download-image")
    generate = enqueue(conn, "generate-image")
    row = conn.execute("select * from claim_next_job(array['generate-image'])").fetchone()
    assert row is not None and row["id"] == generate
    assert row["attempts"] == 1 and row["status"] == "processing"
    assert row["locked_by"].startswith("sql:")
    lease = conn.execute(
        "select extract(epoch from locked_until - started_at)::float8 as s"
        " from job_queue where id = %s",
        (generate,),
    ).fetchone()
    assert lease == {"s": 600.0}
    row = conn.execute("select * from claim_next_job()").fetchone()
    assert row is not None and row["id"] == download
    assert conn.execute("select * from claim_next_job()").fetchall() == []


# heartbeat_jobs


def test_heartbeat_extends_only_this_workers_leases(conn: Conn) -> None:
    mine = [enqueue(conn), enqueue(conn)]
    claim(conn, "worker-a", limit=2, lease_seconds=30)
    theirs = enqueue(conn)
    claim(conn, "worker-b", lease_seconds=30)
    finished = enqueue(conn)
    claim(conn, "worker-a", lease_seconds=30)
    conn.execute("select complete_job(%s)", (finished,))
    before = job(conn, theirs)["locked_until"]

    held = conn.execute(
        "select heartbeat_jobs('worker-a', %s, 600) as id", ([*mine, theirs, finished],)
    ).fetchall()

    assert {row["id"] for row in held} == set(mine)
    for job_id in mine:
        lease = conn.execute(
            "select extract(epoch from locked_until - now())::float8 as s"
            " from job_queue where id = %s",
            (job_id,),
        ).fetchone()
        assert lease is not None and 590 < lease["s"] <= 600
    assert job(conn, theirs)["locked_until"] == before
    assert job(conn, finished)["locked_until"] is None


def test_heartbeat_with_no_jobs_returns_nothing(conn: Conn) -> None:
    assert conn.execute("select heartbeat_jobs('w', '{}'::uuid[])").fetchall() == []


# complete_job


def test_complete_job_success(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "worker-a")
    ok = conn.execute(
        "select complete_job(%s, p_result => '{\"url\": \"u\"}', p_worker_id => 'worker-a') as ok",
        (job_id,),
    ).fetchone()
    assert ok == {"ok": True}
    done = job(conn, job_id)
    assert done["status"] == "completed"
    assert done["result"] == {"url": "u"}
    assert done["completed_at"] is not None
    assert done["error_message"] is None
    assert done["locked_by"] is None and done["locked_until"] is None


def test_complete_job_with_the_original_three_arguments(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "w")
    ok = conn.execute(
        "select complete_job(%s, 'boom', '{\"code\": 500}'::jsonb) as ok", (job_id,)
    ).fetchone()
    assert ok == {"ok": True}
    retried = job(conn, job_id)
    assert retried["status"] == "pending"
    assert retried["error_message"] == "boom"
    assert retried["error_details"] == {"code": 500}

    make_due(conn, job_id)
    claim(conn, "w")
    assert conn.execute("select complete_job(%s, null, null) as ok", (job_id,)).fetchone() == {
        "ok": True
    }
    done = job(conn, job_id)
    assert done["status"] == "completed"
    assert done["error_message"] is None and done["error_details"] is None


def test_retry_schedule_is_2_4_8_seconds_then_failed(conn: Conn) -> None:
    job_id = enqueue(conn, max_attempts=4)
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0)]:
        (row,) = claim(conn, "w")
        assert row["attempts"] == attempt
        conn.execute("select complete_job(%s, %s)", (job_id, f"failure {attempt}"))
        retried = job(conn, job_id)
        assert retried["status"] == "pending"
        assert retried["locked_by"] is None and retried["locked_until"] is None
        assert retried["completed_at"] is None
        assert base * 0.9 <= backoff_seconds(conn, job_id) <= base * 1.1
        # Not claimable before its time.
        assert claim(conn, "w") == []
        make_due(conn, job_id)

    (row,) = claim(conn, "w")
    assert row["attempts"] == 4
    conn.execute("select complete_job(%s, 'failure 4', '{\"final\": true}')", (job_id,))
    failed = job(conn, job_id)
    assert failed["status"] == "failed"
    assert failed["error_message"] == "failure 4"
    assert failed["error_details"] == {"final": True}
    assert failed["completed_at"] is not None
    assert claim(conn, "w") == []


def test_default_max_attempts_fails_on_the_third_error(conn: Conn) -> None:
    job_id = enqueue(conn)
    statuses = []
    for _ in range(3):
        claim(conn, "w")
        conn.execute("select complete_job(%s, 'nope')", (job_id,))
        statuses.append(job(conn, job_id)["status"])
        make_due(conn, job_id)
    assert statuses == ["pending", "pending", "failed"]


def test_backoff_jitter_stays_within_ten_percent_and_varies(conn: Conn) -> None:
    conn.execute("select enqueue_job('generate-image') from generate_series(1, 200)")
    claim(conn, "w", limit=200)
    conn.execute(
        "select complete_job(id, 'transient', p_worker_id => 'w')"
        " from job_queue where status = 'processing'"
    )
    delays = [
        row["s"]
        for row in conn.execute(
            "select extract(epoch from scheduled_at - updated_at)::float8 as s from job_queue"
        )
    ]
    assert len(delays) == 200
    assert all(1.8 <= delay <= 2.2 for delay in delays)
    assert max(delays) - min(delays) > 0.1  # jitter spreads the retries out


def test_non_retryable_error_fails_at_once(conn: Conn) -> None:
    job_id = enqueue(conn, max_attempts=5)
    claim(conn, "w")
    ok = conn.execute(
        "select complete_job(%s, 'invalid input', p_retryable => false) as ok", (job_id,)
    ).fetchone()
    assert ok == {"ok": True}
    failed = job(conn, job_id)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["error_message"] == "invalid input"


def test_complete_job_fencing_refuses_another_worker(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "worker-a")
    before = job(conn, job_id)
    for call in [
        "select complete_job(%s, p_worker_id => 'worker-b') as ok",
        "select complete_job(%s, 'boom', p_worker_id => 'worker-b') as ok",
    ]:
        assert conn.execute(call, (job_id,)).fetchone() == {"ok": False}
    assert job(conn, job_id) == before


def test_complete_job_refuses_a_finished_pending_or_unknown_job(conn: Conn) -> None:
    pending = enqueue(conn)
    assert conn.execute("select complete_job(%s) as ok", (pending,)).fetchone() == {"ok": False}
    assert job(conn, pending)["status"] == "pending"

    claim(conn, "w")
    conn.execute("select complete_job(%s)", (pending,))
    finished = job(conn, pending)
    assert conn.execute("select complete_job(%s, 'late error') as ok", (pending,)).fetchone() == {
        "ok": False
    }
    assert job(conn, pending) == finished

    unknown = conn.execute("select complete_job(gen_random_uuid()) as ok").fetchone()
    assert unknown == {"ok": False}


def test_complete_jobs_completes_only_what_this_worker_holds(conn: Conn) -> None:
    mine = [enqueue(conn) for _ in range(3)]
    claim(conn, "worker-a", limit=3)
    theirs = enqueue(conn)
    claim(conn, "worker-b")
    pending = enqueue(conn)
    done = conn.execute(
        "select complete_jobs('worker-a', %s, %s) as id",
        ([*mine, theirs, pending, uuid.uuid4()], [Jsonb({"i": 0}), None, Jsonb({"i": 2})]),
    ).fetchall()
    assert {row["id"] for row in done} == set(mine)
    results = [job(conn, job_id)["result"] for job_id in mine]
    assert results == [{"i": 0}, None, {"i": 2}]
    for job_id in mine:
        finished = job(conn, job_id)
        assert finished["status"] == "completed" and finished["completed_at"] is not None
        assert finished["locked_by"] is None and finished["locked_until"] is None
    assert job(conn, theirs)["status"] == "processing"
    assert job(conn, pending)["status"] == "pending"
    # Done once: a second call (a retried request) changes nothing.
    again = conn.execute("select complete_jobs('worker-a', %s) as id", (mine,)).fetchall()
    assert again == []


# snooze_job


def test_snooze_hands_the_job_back_until_then_without_spending_an_attempt(conn: Conn) -> None:
    job_id = enqueue(conn)
    claim(conn, "worker-a")

    assert conn.execute("select snooze_job(%s, 'worker-b', now()) as ok", (job_id,)).fetchone() == {
        "ok": False
    }
    snoozed = conn.execute(
        "select snooze_job(%s, 'worker-a', now() + interval '1 hour') as ok", (job_id,)
    ).fetchone()

    assert snoozed == {"ok": True}
    row = job(conn, job_id)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("pending", 0, None)
    assert claim(conn, "worker-c") == []
    conn.execute("update job_queue set scheduled_at = now() where id = %s", (job_id,))
    assert [row["attempts"] for row in claim(conn, "worker-c")] == [1]


# release_jobs


def test_release_jobs_hands_back_only_own_jobs_without_counting_the_attempt(conn: Conn) -> None:
    mine = [enqueue(conn), enqueue(conn)]
    claim(conn, "worker-a", limit=2)
    theirs = enqueue(conn)
    claim(conn, "worker-b")

    released = conn.execute(
        "select release_jobs('worker-a', %s) as n", ([*mine, theirs],)
    ).fetchone()

    assert released == {"n": 2}
    for job_id in mine:
        row = job(conn, job_id)
        assert (row["status"], row["attempts"], row["locked_by"], row["locked_until"]) == (
            "pending",
            0,
            None,
            None,
        )
    assert job(conn, theirs)["locked_by"] == "worker-b"
    assert {row["id"] for row in claim(conn, "worker-c", limit=10)} == set(mine)


# cancel_job


def test_cancel_job(conn: Conn) -> None:
    pending = enqueue(conn)
    processing = enqueue(conn, "download-image")
    claim(conn, "w", job_types=["download-image"])
    done = enqueue(conn, "cleanup-storage")
    claim(conn, "w", job_types=["cleanup-storage"])
    conn.execute("select complete_job(%s)", (done,))

    for job_id in (pending, processing):
        ok = conn.execute("select cancel_job(%s, 'no longer wanted') as ok", (job_id,)).fetchone()
        assert ok == {"ok": True}
        row = job(conn, job_id)
        assert row["status"] == "cancelled"
        assert row["error_message"] == "no longer wanted"
        assert row["completed_at"] is not None
        assert row["locked_by"] is None
    assert conn.execute("select cancel_job(%s) as ok", (done,)).fetchone() == {"ok": False}
    assert job(conn, done)["status"] == "completed"
    assert conn.execute("select cancel_job(gen_random_uuid()) as ok").fetchone() == {"ok": False}

    # A cancelled job is never claimed, and its worker cannot complete it.
    assert claim(conn, "w", limit=10) == []
    late = conn.execute("select complete_job(%s, p_worker_id => 'w') as ok", (processing,))
    assert late.fetchone() == {"ok": False}


def test_cancel_job_default_reason(conn: Conn) -> None:
    job_id = enqueue(conn)
    conn.execute("select cancel_job(%s)", (job_id,))
    assert job(conn, job_id)["error_message"] == "Cancelled"


# Concurrency and leases


def test_concurrent_workers_claim_every_job_exactly_once(conn: Conn, database_url: str) -> None:
    total, workers, batch = 5000, 10, 25
    conn.execute(
        "select enqueue_job('generate-image', jsonb_build_object('n', n))"
        " from generate_series(1, %s) n",
        (total,),
    )
    claimed: list[list[uuid.UUID]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def work(index: int) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as own:
                start.wait()
                while rows := own.execute(
                    "select id from claim_jobs(%s, %s)", (f"worker-{index}", batch)
                ).fetchall():
                    claimed[index].extend(row["id"] for row in rows)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    every = [job_id for ids in claimed for job_id in ids]
    assert len(every) == total
    assert len(set(every)) == total
    # Work was really shared, not done by one connection.
    assert sum(1 for ids in claimed if ids) >= workers // 2
    summary = conn.execute(
        "select status, min(attempts) as lo, max(attempts) as hi, count(*) as n"
        " from job_queue group by status"
    ).fetchall()
    assert summary == [{"status": "processing", "lo": 1, "hi": 1, "n": total}]
    owners = conn.execute("select locked_by, count(*) as n from job_queue group by locked_by")
    assert {row["locked_by"]: row["n"] for row in owners} == {
        f"worker-{i}": len(ids) for i, ids in enumerate(claimed) if ids
    }


def test_a_vanished_workers_job_is_reclaimed_and_its_late_completion_is_fenced(
    conn: Conn, database_url: str
) -> None:
    job_id = enqueue(conn)
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as old_worker:
        (held,) = claim(old_worker, "old-worker", lease_seconds=300)
    assert claim(conn, "new-worker") == []  # the lease holds
    # The old worker stops heartbeating; its lease runs out (set, not waited for).
    conn.execute("update job_queue set locked_until = now() - interval '1 second'")

    (taken,) = claim(conn, "new-worker", lease_seconds=300)
    assert taken["id"] == job_id
    assert taken["attempts"] == held["attempts"] + 1 == 2
    assert taken["locked_by"] == "new-worker"
    before = job(conn, job_id)

    # The old worker comes back: its completion, failure and heartbeat do not count.
    for call in [
        "select complete_job(%s, p_result => '{\"stale\": true}', p_worker_id => 'old-worker')",
        "select complete_job(%s, 'stale failure', p_worker_id => 'old-worker')",
    ]:
        assert conn.execute(call + " as ok", (job_id,)).fetchone() == {"ok": False}
    beat = conn.execute("select heartbeat_jobs('old-worker', array[%s]::uuid[])", (job_id,))
    assert beat.fetchall() == []
    released = conn.execute("select release_jobs('old-worker', array[%s]::uuid[]) as n", (job_id,))
    assert released.fetchone() == {"n": 0}
    assert job(conn, job_id) == before

    ok = conn.execute(
        "select complete_job(%s, p_result => '{\"fresh\": true}', p_worker_id => 'new-worker')"
        " as ok",
        (job_id,),
    ).fetchone()
    assert ok == {"ok": True}
    done = job(conn, job_id)
    assert (done["status"], done["result"]) == ("completed", {"fresh": True})


def test_a_claim_skips_rows_another_claim_has_locked(conn: Conn, database_url: str) -> None:
    """SKIP LOCKED: a worker whose claim has not committed yet holds its rows; another
    worker's claim takes the next row at once instead of waiting behind it."""
    first, second = enqueue(conn, priority=1), enqueue(conn)
    with (
        psycopg.connect(database_url, row_factory=dict_row) as slow,
        psycopg.connect(database_url, row_factory=dict_row) as fast,
    ):
        (held,) = claim(slow, "slow-worker")  # inside a transaction that stays open
        assert held["id"] == first
        fast.execute("set lock_timeout = '2s'")  # a claim that waits fails instead
        (taken,) = claim(fast, "fast-worker", limit=2)
        assert taken["id"] == second
        fast.commit()
        slow.rollback()
    assert job(conn, first)["status"] == "pending"  # the uncommitted claim never happened
    assert job(conn, second)["locked_by"] == "fast-worker"
