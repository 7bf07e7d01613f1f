"""Cancels the apps make by UPDATE (docs/CLIENTS.md flows 1, 2 and 3), and cancel_generation():
each becomes the system's cancel (sql/0020_client_writes.sql): the row fails, its active
jobs are cancelled and a running prediction is cancelled at Replicate."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.simulator import SimulatorConfig
from tests.conftest import signed_in
from tests.support.generations import SCHNELL
from tests.support.stack import run_stack
from worker.service import open_worker

Conn = psycopg.Connection[dict[str, Any]]
ACTIVE_JOBS = "select * from job_queue where payload ->> 'generation_id' = %s::text"


def mobile_insert(conn: Conn, user_id: uuid.UUID) -> dict[str, Any]:
    """apps/mobile/services/imageGeneration.ts: the app's own pending row."""
    with signed_in(conn, user_id):
        row = conn.execute(
            "insert into image_generations (user_id, prompt, negative_prompt, model, style,"
            " width, height, steps, guidance_scale, status) values (%s, 'a red fox', null,"
            " 'flux-schnell', null, 1024, 1024, 4, 0, 'pending') returning *",
            (user_id,),
        ).fetchone()
    assert row is not None
    return row


def start(conn: Conn, user_id: uuid.UUID) -> uuid.UUID:
    row = conn.execute(
        "select generation_id from start_generation(%s, 'a red fox', %s)", (user_id, SCHNELL)
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["generation_id"]))


def test_the_web_cancel_of_a_pending_generation_cancels_its_job(
    conn: Conn, user_id: uuid.UUID
) -> None:
    """apps/web/src/lib/api/generate-async.ts, cancelGeneration: `.update({status:
    'failed', error_message: 'Cancelled by user'}).eq('id', id).eq('status', 'pending')`."""
    row = mobile_insert(conn, user_id)
    # The job the server made for it (the legacy call or process-queue).
    conn.execute(
        "select enqueue_job('generate-image', jsonb_build_object('generation_id', %s::text),"
        " p_created_by => %s, p_dedupe_key => 'generate-image:' || %s)",
        (row["id"], user_id, row["id"]),
    )
    with signed_in(conn, user_id):
        cancelled = conn.execute(
            "update image_generations set status = 'failed', error_message = 'Cancelled by user'"
            " where id = %s and status = 'pending'",
            (row["id"],),
        ).rowcount
    assert cancelled == 1
    after = conn.execute("select * from image_generations where id = %s", (row["id"],)).fetchone()
    assert after is not None
    assert (after["status"], after["error_message"]) == ("failed", "Cancelled by user")
    assert after["completed_at"] is not None
    jobs = conn.execute(ACTIVE_JOBS, (row["id"],)).fetchall()
    assert [(job["status"], job["error_message"]) for job in jobs] == [
        ("cancelled", "Cancelled by user")
    ]
    # No prediction was made: nothing to cancel at Replicate.
    assert conn.execute("select count(*) as n from job_queue").fetchone() == {"n": 1}


def test_cancel_generation_goes_the_same_way(conn: Conn, user_id: uuid.UUID) -> None:
    """The rpc and the UPDATE are one cancel: the job stops, a saved prediction is
    cancelled by a cancel-prediction job."""
    generation_id = start(conn, user_id)
    (job,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    conn.execute("select request_prediction(%s, 'w')", (job["id"],))
    assert conn.execute(
        "select record_prediction(%s, 'w', 'pred-1') as ok", (job["id"],)
    ).fetchone() == {"ok": True}
    with signed_in(conn, user_id):
        assert conn.execute("select cancel_generation(%s) as ok", (generation_id,)).fetchone() == {
            "ok": True
        }
    jobs = {row["job_type"]: row for row in conn.execute("select * from job_queue")}
    assert jobs["generate-image"]["status"] == "cancelled"
    assert jobs["cancel-prediction"]["status"] == "pending"
    assert jobs["cancel-prediction"]["payload"]["prediction_id"] == "pred-1"
    assert jobs["cancel-prediction"]["created_by"] == user_id


def test_a_prediction_created_during_the_cancel_is_cancelled_when_its_id_arrives(
    conn: Conn, user_id: uuid.UUID
) -> None:
    generation_id = start(conn, user_id)
    (job,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    conn.execute("select request_prediction(%s, 'w')", (job["id"],))
    with signed_in(conn, user_id):
        conn.execute(
            "update image_generations set status = 'failed', error_message = 'Cancelled by user'"
            " where id = %s",
            (generation_id,),
        )
    assert conn.execute("select count(*) as n from job_queue").fetchone() == {"n": 1}
    # The create call answers after the cancel: the id cannot be saved, it is cancelled.
    assert conn.execute(
        "select record_prediction(%s, 'w', 'pred-late') as ok", (job["id"],)
    ).fetchone() == {"ok": False}
    cancel = conn.execute("select * from job_queue where job_type = 'cancel-prediction'").fetchall()
    assert [row["payload"]["prediction_id"] for row in cancel] == ["pred-late"]


def test_outputs_that_arrive_after_the_cancel_are_not_stored(
    conn: Conn, user_id: uuid.UUID
) -> None:
    """generation_downloading and finish_generation (with its job or, as the legacy call
    finishes, without) refuse a cancelled generation."""
    generation_id = start(conn, user_id)
    (job,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    with signed_in(conn, user_id):
        conn.execute(
            "update image_generations set status = 'failed' where id = %s", (generation_id,)
        )
    downloading = conn.execute(
        "select generation_downloading(%s, 'w', 'https://r.test/o.webp', 'webp', 8, 8, 1) as id",
        (job["id"],),
    ).fetchone()
    assert downloading == {"id": None}
    finished = conn.execute(
        "select * from finish_generation(%s, 'u/x.webp', 'https://cdn.test/x', 10, 8, 8,"
        " 'webp', %s, 'w')",
        (generation_id, job["id"]),
    ).fetchall()
    assert finished == []
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot become completed"):
        conn.execute(
            "select * from finish_generation(%s, 'u/x.webp', 'https://cdn.test/x', 10, 8, 8,"
            " 'webp', p_user_id => %s)",
            (generation_id, user_id),
        )
    row = conn.execute(
        "select status, error_message from image_generations where id = %s", (generation_id,)
    ).fetchone()
    assert row == {"status": "failed", "error_message": "Cancelled by user"}
    assert conn.execute("select count(*) as n from images").fetchone() == {"n": 0}
    assert [
        row["job_type"] for row in conn.execute("select job_type from job_queue order by 1")
    ] == ["generate-image"]


async def test_cancelling_a_running_generation_cancels_its_prediction(
    conn: Conn, database_url: str, user_id: uuid.UUID, tmp_path: Path
) -> None:
    """apps/mobile/services/imageGenerationAsync.ts, cancel: `.update({status: 'failed',
    error_message: 'Cancelled by user'}).eq('id', generationId)` while the worker waits on
    the prediction; the worker then cancels it at Replicate (the simulator counts it)."""
    generation_id = start(conn, user_id)
    simulator = SimulatorConfig(latency_seconds=60)
    with run_stack(database_url, tmp_path / "storage", simulator) as stack:
        async with open_worker(stack.settings()) as worker:
            runner = asyncio.create_task(worker.runner.run())
            try:
                prediction_id = await poll(
                    lambda: conn.execute(
                        "select replicate_prediction_id as id from image_generations where id = %s",
                        (generation_id,),
                    ).fetchone()["id"]
                )
                with signed_in(conn, user_id):
                    conn.execute(
                        "update image_generations set status = 'failed',"
                        " error_message = 'Cancelled by user' where id = %s",
                        (generation_id,),
                    )
                await poll(lambda: stack.simulator("GET", "stats")["canceled_by_request"] == 1)
                await poll(
                    lambda: (
                        conn.execute(
                            "select status from job_queue where job_type = 'cancel-prediction'"
                        ).fetchone()["status"]
                        == "completed"
                    )
                )
            finally:
                worker.runner.stop()
                await runner
        stats = stack.simulator("GET", "stats")
    assert (stats["predictions_created"], stats["statuses"]) == (1, {"canceled": 1})
    jobs = {row["job_type"]: row for row in conn.execute("select * from job_queue")}
    assert jobs["generate-image"]["status"] == "cancelled"
    assert jobs["cancel-prediction"]["result"] == {
        "prediction_id": prediction_id,
        "status": "canceled",
    }
    row = conn.execute(
        "select status, error_message from image_generations where id = %s", (generation_id,)
    ).fetchone()
    assert row == {"status": "failed", "error_message": "Cancelled by user"}
    assert conn.execute("select count(*) as n from images").fetchone() == {"n": 0}


async def poll(read: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := read()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return value


class CancelDuringUpload:
    """Around the Storage stand-in: the owner cancels (as imageGenerationAsync.ts does)
    just as the worker's upload arrives; notes when the worker then removes the file."""

    def __init__(self, app: ASGIApp, database_url: str, user_id: uuid.UUID) -> None:
        self.app, self.database_url, self.user_id = app, database_url, user_id
        self.cancelled = self.removed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope.get("method"), scope.get("path", "")
        if method in ("POST", "PUT") and "/object/" in path and not self.cancelled:
            claims = json.dumps({"sub": str(self.user_id), "role": "authenticated"})
            async with (
                await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn,
                conn.transaction(),
            ):
                await conn.execute("set local role authenticated")
                await conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
                await conn.execute(
                    "update image_generations set status = 'failed',"
                    " error_message = 'Cancelled by user' where user_id = %s",
                    (self.user_id,),
                )
            self.cancelled = True
        await self.app(scope, receive, send)
        if method == "DELETE":
            self.removed = True


async def test_a_cancel_during_the_download_leaves_no_file_and_no_image(
    conn: Conn, database_url: str, user_id: uuid.UUID, tmp_path: Path
) -> None:
    """The cancel lands while the output is being stored: the generation stays failed,
    no images row is written and the stored file is removed again."""
    generation_id = start(conn, user_id)
    made: list[CancelDuringUpload] = []

    def wrap(app: ASGIApp) -> ASGIApp:
        made.append(CancelDuringUpload(app, database_url, user_id))
        return made[0]

    with run_stack(database_url, tmp_path / "storage", storage_middleware=wrap) as stack:
        async with open_worker(stack.settings()) as worker:
            runner = asyncio.create_task(worker.runner.run())
            try:
                await poll(lambda: made[0].removed)
            finally:
                worker.runner.stop()
                await runner
    row = conn.execute(
        "select status, error_message from image_generations where id = %s", (generation_id,)
    ).fetchone()
    assert row == {"status": "failed", "error_message": "Cancelled by user"}
    assert conn.execute("select count(*) as n from images").fetchone() == {"n": 0}
    assert list((tmp_path / "storage").rglob("*.webp")) == []
    jobs = {row["job_type"]: row["status"] for row in conn.execute("select * from job_queue")}
    # The prediction had succeeded already: there is nothing to cancel at Replicate.
    assert jobs == {"generate-image": "completed", "download-image": "cancelled"}
