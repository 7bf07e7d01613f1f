"""Batches as the mobile app drives them (docs/CLIENTS.md §2 flow 5, M/store/batchStore.ts and
M/components/batch/BatchGenerationModal.tsx): batch-generate, then batch_progress and
batch_generations read as the signed-in user, retry (failed -> pending, then
process-queue), cancel (pending -> failed) and delete, each to its end state."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import psycopg.types.json
import pytest
from supabase_functions.errors import FunctionsHttpError

from devstack.simulator import SimulatorConfig
from tests.conftest import make_user, signed_in
from tests.support.served import Served, serve, wait_until_ended

Conn = psycopg.Connection[Any]
FAIL = "unrenderable"


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    config = SimulatorConfig(latency_seconds=0.05, fail_prompts=(FAIL,))
    with serve(database_url, tmp_path / "storage", config) as running:
        yield running


def model_row(conn: Conn, name: str = "flux-schnell") -> dict[str, Any]:
    row = conn.execute("select id, version from models where name = %s", (name,)).fetchone()
    assert row is not None
    return dict(row)


def batch_body(conn: Conn, prompts: list[str]) -> dict[str, Any]:
    """What createBatch sends: the modal's shared settings (models.id, its version, a preset)."""
    model = model_row(conn)
    return {
        "prompts": [
            {"text": text, "negative_prompt": None, "seed": 7, "tags": ["t"]} for text in prompts
        ],
        "shared_settings": {
            "model_id": str(model["id"]),
            "model_version": model["version"],
            "width": 1344,
            "height": 768,
            "steps": 30,  # the modal's default, beyond flux-schnell's 4: brought within
            "guidance_scale": 7.5,
        },
        "batch_name": "evening",
    }


def progress(conn: Conn, user: uuid.UUID, batch_id: str) -> dict[str, Any] | None:
    """loadBatch: supabase.from('batch_progress').select('*').eq('id', batchId).single()."""
    with signed_in(conn, user):
        row = conn.execute("select * from batch_progress where id = %s", (batch_id,)).fetchone()
    return None if row is None else dict(row)


def wait_for_batch(
    conn: Conn, user: uuid.UUID, batch_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = progress(conn, user, batch_id)
        assert batch is not None
        ended = batch["status"] in ("completed", "partial", "failed")
        if (ended and batch["pending_count"] == batch["processing_count"] == 0) or (
            time.monotonic() > deadline
        ):
            return batch
        time.sleep(0.1)


def start_batch(served: Served, conn: Conn, user: uuid.UUID, prompts: list[str]) -> str:
    answer = served.invoke(user, "batch-generate", batch_body(conn, prompts))
    batch = answer["batch"]
    assert set(batch) == {"id", "name", "total_count", "generations"}
    assert batch["name"] == "evening" and batch["total_count"] == len(prompts)
    assert [item["prompt"] for item in batch["generations"]] == prompts
    return str(batch["id"])


def test_a_batch_runs_to_completed(conn: Conn, served: Served) -> None:
    user, other = make_user(conn), make_user(conn)
    batch_id = start_batch(served, conn, user, ["a fox", "a heron", "a lynx"])
    batch = wait_for_batch(conn, user, batch_id)
    assert (batch["status"], batch["completed_count"], batch["failed_count"]) == (
        "completed",
        3,
        0,
    )
    assert batch["completed_at"] is not None
    assert [item["index"] for item in batch["items"]] == [0, 1, 2]
    assert all(item["status"] == "completed" and item["image_url"] for item in batch["items"])
    # loadUserBatches: batch_generations by user_id, own rows only.
    with signed_in(conn, user):
        mine = conn.execute(
            "select id, status from batch_generations where user_id = %s order by created_at desc",
            (user,),
        ).fetchall()
    assert [str(row["id"]) for row in mine] == [batch_id]
    assert progress(conn, other, batch_id) is None
    with signed_in(conn, other):
        assert conn.execute("select count(*) as n from batch_generations").fetchone() == {"n": 0}
    # Realtime: the app subscribes to both tables.
    published = conn.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'"
    ).fetchall()
    assert {"batch_generations", "image_generations"} <= {row["tablename"] for row in published}


def test_a_failing_item_makes_the_batch_partial_and_a_retry_completes_it(
    conn: Conn, served: Served
) -> None:
    user = make_user(conn)
    batch_id = start_batch(served, conn, user, ["a fox", f"an {FAIL} heron", "a lynx"])
    batch = wait_for_batch(conn, user, batch_id)
    assert (batch["status"], batch["completed_count"], batch["failed_count"]) == ("partial", 2, 1)

    # retryFailed: failed generations -> pending, the batch -> processing, process-queue.
    served.stack.configure_simulator(fail_prompts=[])
    with signed_in(conn, user):
        conn.execute(
            "update image_generations set status = 'pending', error_message = null,"
            " retry_count = 0 where batch_id = %s and status = 'failed'",
            (batch_id,),
        )
    with signed_in(conn, user):
        conn.execute(
            "update batch_generations set status = 'processing', failed_count = 0 where id = %s",
            (batch_id,),
        )
    assert served.invoke(user, "process-queue")["started"] == 1
    batch = wait_for_batch(conn, user, batch_id)
    assert (batch["status"], batch["completed_count"], batch["failed_count"]) == (
        "completed",
        3,
        0,
    )


def test_a_cancelled_batch_fails_what_had_not_started(conn: Conn, served: Served) -> None:
    user = make_user(conn)
    batch_id = start_batch(served, conn, user, ["a fox", f"an {FAIL} heron"])
    assert wait_for_batch(conn, user, batch_id)["status"] == "partial"
    with signed_in(conn, user):  # a retry the app has not sent to process-queue yet
        conn.execute(
            "update image_generations set status = 'pending', error_message = null"
            " where batch_id = %s and status = 'failed'",
            (batch_id,),
        )
    # cancelBatch: pending generations -> failed 'Cancelled by user', the batch -> failed.
    with signed_in(conn, user):
        conn.execute(
            "update image_generations set status = 'failed', error_message = 'Cancelled by user'"
            " where batch_id = %s and status in ('pending')",
            (batch_id,),
        )
    with signed_in(conn, user):
        conn.execute(
            "update batch_generations set status = 'failed', completed_at = now() where id = %s",
            (batch_id,),
        )
    batch = progress(conn, user, batch_id)
    assert batch is not None
    assert (batch["status"], batch["completed_count"], batch["failed_count"]) == ("failed", 1, 1)
    assert [item["error_message"] for item in batch["items"] if item["status"] == "failed"] == [
        "Cancelled by user"
    ]
    assert served.invoke(user, "process-queue")["started"] == 0


def test_deleting_a_batch_deletes_its_generations_and_only_the_owner_may(
    conn: Conn, served: Served
) -> None:
    user, other = make_user(conn), make_user(conn)
    batch_id = start_batch(served, conn, user, ["a fox", "a heron"])
    wait_for_batch(conn, user, batch_id)
    with signed_in(conn, other):
        assert (
            conn.execute("delete from batch_generations where id = %s", (batch_id,)).rowcount == 0
        )
        assert (
            conn.execute(
                "update batch_generations set status = 'failed' where id = %s", (batch_id,)
            ).rowcount
            == 0
        )
    with signed_in(conn, user):
        assert (
            conn.execute("delete from batch_generations where id = %s", (batch_id,)).rowcount == 1
        )
    left = conn.execute(
        "select (select count(*) from image_generations where batch_id = %s) as g,"
        " (select count(*) from images where user_id = %s) as i",
        (batch_id, user),
    ).fetchone()
    assert left == {"g": 0, "i": 0}


def test_a_batch_is_admitted_or_refused_whole(conn: Conn, served: Served) -> None:
    user = make_user(conn)
    too_many = batch_body(conn, [f"prompt {n}" for n in range(11)])  # max_batch_size: 10
    with pytest.raises(FunctionsHttpError) as refused:
        served.invoke(user, "batch-generate", too_many)
    assert refused.value.status == 400 and "at most 10" in refused.value.message
    conn.execute(
        "insert into user_rate_limits (user_id, hourly_generations_limit) values (%s, 4)", (user,)
    )
    start_batch(served, conn, user, ["a", "b"])
    with pytest.raises(FunctionsHttpError) as limited:
        served.invoke(user, "batch-generate", batch_body(conn, ["c", "d", "e"]))
    assert limited.value.status == 429
    counts = conn.execute(
        "select (select count(*) from batch_generations) as b,"
        " (select count(*) from image_generations) as g"
    ).fetchone()
    assert counts == {"b": 1, "g": 2}  # the refused batch wrote nothing
    generations = wait_until_ended(
        conn, [r["id"] for r in conn.execute("select id from image_generations").fetchall()]
    )
    assert {row["status"] for row in generations} == {"completed"}


def test_two_items_finishing_together_are_both_counted(conn: Conn, database_url: str) -> None:
    """Workers finish items of one batch in parallel: the second finish waits for the
    first's count and adds to it (a count read before the wait would lose one)."""
    user = make_user(conn)
    started = conn.execute(
        "select start_batch(%s, %s::jsonb) as batch",
        (user, psycopg.types.json.Jsonb(batch_body(conn, ["a fox", "a heron"]))),
    ).fetchone()
    assert started is not None
    batch = started["batch"]
    first, second = (item["id"] for item in batch["generations"])
    finish = "update image_generations set status = 'completed' where id = %s"
    with psycopg.connect(database_url) as holding:
        holding.execute(finish, (first,))  # its count is written, its transaction open
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(_finish_alone, database_url, finish, second)
            while not conn.execute(
                "select exists (select from pg_stat_activity where wait_event_type = 'Lock'"
                " and query like 'update image_generations%%') as blocked"
            ).fetchone()["blocked"]:
                time.sleep(0.01)
            holding.commit()
            waiting.result(timeout=30)
    row = conn.execute(
        "select status, completed_count, failed_count from batch_generations where id = %s",
        (batch["id"],),
    ).fetchone()
    assert row == {"status": "completed", "completed_count": 2, "failed_count": 0}


def _finish_alone(database_url: str, statement: str, generation_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute(statement, (generation_id,))
