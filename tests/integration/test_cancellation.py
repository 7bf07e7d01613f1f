"""Cancellation end to end over real HTTP (POST /functions/v1/cancel-generation, sql/0120):
a queued generation never reaches Replicate, a running one has its prediction cancelled
(the simulator counts it), an output that arrives after the cancel is not stored, and a
cancel racing the stored output ends one way or the other. Also what each generation
records of the provider's figures (sql/0121)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.simulator import SimulatorConfig
from tests.conftest import make_user, signed_in
from tests.support.background_server import BackgroundServer
from tests.support.postgrest_standin import create_postgrest_app
from tests.support.served import Served, serve_app
from tests.support.stack import run_stack
from worker.database import Database, Job
from worker.jobs.context import JobContext, LeaseLost
from worker.jobs.download_image import download_image
from worker.models import first_output_url
from worker.postgrest_gateway import PostgrestGateway
from worker.service import open_worker

Conn = psycopg.Connection[dict[str, Any]]
FLUX = "black-forest-labs/flux-schnell"


def start(api: Served, user: uuid.UUID) -> str:
    answer = api.post(
        "start-generation", {"prompt": "a red fox", "model_id": FLUX}, api.token(user)
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["generation_id"])


def cancel(api: Served, user: uuid.UUID, generation_id: str) -> httpx.Response:
    return api.post("cancel-generation", {"generation_id": generation_id}, api.token(user))


def poll(read: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := read()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def generation(conn: Conn, generation_id: str) -> dict[str, Any]:
    row = conn.execute("select * from image_generations where id = %s", (generation_id,)).fetchone()
    assert row is not None
    return row


def jobs(conn: Conn) -> dict[str, str]:
    return {row["job_type"]: row["status"] for row in conn.execute("select * from job_queue")}


def images(conn: Conn) -> int:
    return int(conn.execute("select count(*) as n from images").fetchone()["n"])


def test_only_the_owner_cancels_and_only_what_is_running(
    conn: Conn, database_url: str, tmp_path: Path
) -> None:
    owner, other = make_user(conn), make_user(conn)
    with (
        run_stack(database_url, tmp_path / "storage") as stack,
        serve_app(stack, run_jobs=False) as api,
    ):
        generation_id = start(api, owner)
        refusals = [
            (cancel(api, other, generation_id), 404, "Generation not found"),
            (cancel(api, owner, str(uuid.uuid4())), 404, "Generation not found"),
            (api.post("cancel-generation", {"generation_id": generation_id}), 401, None),
            (
                api.post("cancel-generation", {}, api.token(owner)),
                400,
                "generation_id: Field required",
            ),
            (api.post("cancel-generation", {"generation_id": "x"}, api.token(owner)), 400, None),
        ]
        for answer, status, message in refusals:
            assert answer.status_code == status, answer.text
            assert set(answer.json()) == {"error"}
            assert message is None or answer.json()["error"] == message
        assert generation(conn, generation_id)["status"] == "queued"

        # The later backend's apps name it generationId (docs/CLIENTS.md §3).
        cancelled = api.post("cancel-generation", {"generationId": generation_id}, api.token(owner))
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json() == {
            "success": True,
            "generation_id": generation_id,
            "status": "failed",
            "error_message": "Cancelled by user",
        }
        again = cancel(api, owner, generation_id)
        assert (again.status_code, again.json()) == (
            409,
            {"error": "Generation has already failed"},
        )
    row = generation(conn, generation_id)
    assert (row["status"], row["error_message"]) == ("failed", "Cancelled by user")
    assert jobs(conn) == {"generate-image": "cancelled"}


async def test_a_queued_generation_is_cancelled_without_calling_the_provider(
    conn: Conn, database_url: str, tmp_path: Path
) -> None:
    owner = make_user(conn)
    with run_stack(database_url, tmp_path / "storage") as stack:
        with serve_app(stack, run_jobs=False) as api:
            generation_id = start(api, owner)
            assert cancel(api, owner, generation_id).status_code == 200
        async with open_worker(stack.settings()) as worker:
            assert await worker.runner.run_once(wait=True) == (0, 0)
        stats = stack.simulator("GET", "stats")
    assert (stats["api_requests"], stats["predictions_created"]) == (0, 0)
    assert jobs(conn) == {"generate-image": "cancelled"}
    assert generation(conn, generation_id)["error_message"] == "Cancelled by user"


def test_a_running_generation_has_its_prediction_cancelled(
    conn: Conn, database_url: str, tmp_path: Path
) -> None:
    owner = make_user(conn)
    slow = SimulatorConfig(latency_seconds=60)
    with (
        run_stack(database_url, tmp_path / "storage", slow) as stack,
        serve_app(stack, run_jobs=True) as api,
    ):
        generation_id = start(api, owner)
        prediction_id = poll(lambda: generation(conn, generation_id)["replicate_prediction_id"])
        assert cancel(api, owner, generation_id).status_code == 200
        poll(lambda: jobs(conn).get("cancel-prediction") == "completed")
        stats = stack.simulator("GET", "stats")
    assert (stats["predictions_created"], stats["canceled_by_request"]) == (1, 1)
    assert stats["statuses"] == {"canceled": 1}
    assert jobs(conn) == {"generate-image": "cancelled", "cancel-prediction": "completed"}
    result = conn.execute(
        "select result from job_queue where job_type = 'cancel-prediction'"
    ).fetchone()
    assert result == {"result": {"prediction_id": prediction_id, "status": "canceled"}}
    row = generation(conn, generation_id)
    assert (row["status"], row["error_message"], images(conn)) == ("failed", "Cancelled by user", 0)


class HeldUpload:
    """Around the Storage stand-in: holds the worker's upload until released, and notes
    whether the worker removed the file afterwards."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.arrived, self.release, self.removed = (threading.Event() for _ in range(3))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope.get("method"), scope.get("path", "")
        if method in ("POST", "PUT") and "/object/" in path:
            self.arrived.set()
            await asyncio.to_thread(self.release.wait, 30)
        await self.app(scope, receive, send)
        if method == "DELETE":
            self.removed.set()


@pytest.mark.parametrize("order", ["cancel-then-store", "store-then-cancel", "both-at-once"])
def test_a_cancel_racing_the_stored_output_ends_one_way(
    conn: Conn, database_url: str, tmp_path: Path, order: str
) -> None:
    """Never both (an image on a failed row), never neither (stuck in downloading)."""
    owner = make_user(conn)
    held: list[HeldUpload] = []

    def wrap(app: ASGIApp) -> ASGIApp:
        held.append(HeldUpload(app))
        return held[0]

    storage = tmp_path / "storage"
    with (
        run_stack(database_url, storage, storage_middleware=wrap) as stack,
        serve_app(stack, run_jobs=True) as api,
    ):
        generation_id = start(api, owner)
        upload = held[0]
        assert upload.arrived.wait(30)
        answers: list[httpx.Response] = []
        canceller = threading.Thread(
            target=lambda: answers.append(cancel(api, owner, generation_id))
        )
        if order == "cancel-then-store":
            canceller.start()
            canceller.join()
            upload.release.set()
        elif order == "store-then-cancel":
            upload.release.set()
            canceller.start()
        else:
            canceller.start()
            upload.release.set()
        canceller.join()
        row = poll(
            lambda: (
                (g := generation(conn, generation_id))["status"] in ("completed", "failed")
                and "processing" not in jobs(conn).values()
                and g
            )
        )
        if row["status"] == "failed":
            assert upload.removed.wait(30), "the cancelled generation's file was left behind"
        stats = stack.simulator("GET", "stats")

    (answer,) = answers
    files = list(storage.rglob("*.webp"))
    if row["status"] == "completed":
        assert order != "cancel-then-store"
        assert (answer.status_code, answer.json()) == (
            409,
            {"error": "Generation has already completed"},
        )
        assert (images(conn), len(files)) == (1, 1)
        assert jobs(conn) == {"generate-image": "completed", "download-image": "completed"}
    else:
        assert (answer.status_code, row["error_message"]) == (200, "Cancelled by user")
        assert (images(conn), files) == (0, [])
        assert jobs(conn) == {"generate-image": "completed", "download-image": "cancelled"}
    # The prediction had succeeded before the download began: nothing to cancel.
    assert (stats["predictions_created"], stats["cancel_requests"]) == (1, 0)


async def test_a_download_cancelled_before_its_upload_uploads_nothing(
    conn: Conn, database_url: str, tmp_path: Path, user_id: uuid.UUID
) -> None:
    """The cancel lands while the output downloads: the worker checks its job before
    uploading and stores nothing (the file never reaches Storage)."""
    uploads: list[str] = []

    def count(app: ASGIApp) -> ASGIApp:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("method") in ("POST", "PUT") and "/object/" in scope.get("path", ""):
                uploads.append(scope["path"])
            await app(scope, receive, send)

        return counted

    with run_stack(database_url, tmp_path / "storage", storage_middleware=count) as stack:
        settings = stack.settings()
        worker_id = settings.worker_id
        async with open_worker(settings) as worker:
            created = await worker.replicate.create_prediction(
                f"/models/{FLUX}/predictions",
                {"input": {"prompt": "a red fox", "aspect_ratio": "1:1"}},
            )
            done = await worker.replicate.wait_for_prediction(created, deadline_seconds=30)
            row = conn.execute(
                "select generation_id from start_generation(%s, 'a red fox', %s)", (user_id, FLUX)
            ).fetchone()
            (job,) = conn.execute("select * from claim_jobs(%s, 1)", (worker_id,)).fetchall()
            conn.execute(
                "select generation_downloading(%s, %s, %s, 'webp', 1024, 1024, 1)",
                (job["id"], worker_id, first_output_url(done.output)),
            )
            (download,) = conn.execute("select * from claim_jobs(%s, 1)", (worker_id,)).fetchall()
            with signed_in(conn, user_id):
                conn.execute("select cancel_generation(%s)", (row["generation_id"],))
            context = JobContext(worker.db, settings, worker.replicate, worker.storage, worker_id)
            with pytest.raises(LeaseLost):
                await download_image(Job.from_row(download), context)
    assert uploads == []
    assert images(conn) == 0


def test_a_completed_generation_keeps_the_providers_figures(
    conn: Conn, database_url: str, tmp_path: Path
) -> None:
    owner = make_user(conn)
    conn.execute("update models set cost_per_generation = 0.003 where replicate_id = %s", (FLUX,))
    with (
        run_stack(
            database_url, tmp_path / "storage", SimulatorConfig(latency_seconds=0.3)
        ) as stack,
        serve_app(stack, run_jobs=True) as api,
    ):
        generation_id = start(api, owner)
        row = poll(lambda: (g := generation(conn, generation_id))["status"] == "completed" and g)
    figures = row["provider_metrics"]
    assert figures["prediction_id"] == row["replicate_prediction_id"]
    assert figures["status"] == "succeeded"
    assert figures["metrics"]["predict_time"] == pytest.approx(0.3, abs=0.1)
    assert [step["status"] for step in figures["history"]] == [
        "starting",
        "processing",
        "succeeded",
    ]
    assert row["predict_time"] == Decimal(str(figures["metrics"]["predict_time"]))
    assert row["estimated_cost"] == Decimal("0.003")


async def test_the_cancel_and_the_figures_travel_over_postgrest_too(
    conn: Conn, database_url: str, user_id: uuid.UUID
) -> None:
    """A deployment with only SUPABASE_URL and the service key: the same calls by RPC."""
    key = "postgrest-test-service-key"
    postgrest = create_postgrest_app(database_url, service_role_key=key, anon_key="anon")
    with BackgroundServer(Starlette(routes=[Mount("/rest/v1", postgrest)])) as server:
        gateway = PostgrestGateway(server.url, key, timeout=5)
        try:
            db = Database(gateway)
            first, _ = await db.start_generation(user_id, prompt="a fox", model_id=FLUX)
            [job] = await db.claim_jobs("w", 1, ["generate-image"], 60)
            figures = {"status": "succeeded", "metrics": {"predict_time": 0.5}, "history": []}
            assert await db.generation_downloading(
                job.id, "w", output_url="https://x.test/o.webp", format="webp", width=8,
                height=8, generation_time_seconds=1, provider_metrics=figures,
            )  # fmt: skip
            second, _ = await db.start_generation(user_id, prompt="a fox", model_id=FLUX)
            assert await db.cancel_generation(second, uuid.uuid4()) == "unknown"
            assert await db.cancel_generation(second, user_id) == "cancelled"
            assert await db.cancel_generation(second, user_id) == "failed"
        finally:
            await gateway.close()
    assert generation(conn, str(first))["predict_time"] == Decimal("0.5")
    assert generation(conn, str(second))["error_message"] == "Cancelled by user"
