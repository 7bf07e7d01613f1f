"""The worker end to end: real database, the Replicate simulator and the Storage
stand-in over real HTTP, for both database gateways."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import psycopg
import pytest
from PIL import Image

from tests.conftest import make_user
from tests.support.generations import start_generation
from tests.support.stack import Stack
from tests.support.workers import FAMILY_MODELS, run_worker_until, wait_for
from worker.models import CONTENT_TYPES, GenerationParams, expected_size
from worker.service import open_worker
from worker.settings import Settings


@pytest.fixture(params=["postgres", "postgrest"])
def gateway(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_generations_of_every_family_complete(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack, gateway: str
) -> None:
    count = 100 if gateway == "postgres" else 30
    users = [make_user(conn) for _ in range(5)]
    ids = [
        start_generation(conn, users[i % 5], FAMILY_MODELS[i % len(FAMILY_MODELS)])
        for i in range(count)
    ]

    rows = await run_worker_until(stack.settings(gateway, max_parallel_jobs=25), database_url, ids)

    assert {row["status"] for row in rows.values()} == {"completed"}, [
        row["error_message"] for row in rows.values() if row["status"] != "completed"
    ]
    images = conn.execute(
        "select i.*, m.replicate_id as model_id, g.width as asked_width,"
        " g.height as asked_height from images i"
        " join image_generations g on g.id = i.generation_id join models m on m.id = g.model_id"
        " where i.generation_id = any(%s)",
        (ids,),
    ).fetchall()
    assert len(images) == count
    async with httpx.AsyncClient(timeout=10) as http:
        for image in images:
            response = await http.get(image["public_url"])
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(CONTENT_TYPES[image["format"]])
            assert len(response.content) == image["file_size"]
            assert (
                image["storage_path"]
                == f"{image['user_id']}/{image['generation_id']}.{image['format']}"
            )
            params = GenerationParams(
                prompt="x",
                model_id=image["model_id"],
                width=image["asked_width"],
                height=image["asked_height"],
            )
            if image["format"] == "svg":
                assert response.content.lstrip().startswith((b"<svg", b"<?xml"))
            else:
                with Image.open(io.BytesIO(response.content)) as picture:
                    assert picture.format.lower() == image["format"]
                    assert picture.size == (image["width"], image["height"])
            assert (image["width"], image["height"]) == expected_size(params)

    health = conn.execute(
        "select status, count from queue_health where job_type = 'download-image'"
    ).fetchall()
    assert health == [{"status": "completed", "count": count}]
    assert stack.predictions_created() == count


async def test_transient_failures_end_completed(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack, gateway: str
) -> None:
    stack.configure_simulator(server_error_rate=0.3, rate_limit_rate=0.2, seed=7)
    user = make_user(conn)
    ids = [start_generation(conn, user, "black-forest-labs/flux-schnell") for _ in range(10)]
    rows = await run_worker_until(stack.settings(gateway), database_url, ids)
    assert {row["status"] for row in rows.values()} == {"completed"}


async def test_permanent_failure_fails_with_readable_message_after_attempts(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack, gateway: str
) -> None:
    stack.configure_simulator(failure_rate=1.0)
    user = make_user(conn)
    ids = [start_generation(conn, user, "black-forest-labs/flux-schnell")]
    settings = stack.settings(gateway)
    rows = await run_worker_until(settings, database_url, ids, timeout=60)
    row = rows[ids[0]]
    assert row["status"] == "failed"
    assert row["error_message"]  # the prediction's own error, for the user to read
    job = conn.execute(
        "select status, attempts, max_attempts from job_queue where payload->>'generation_id' = %s",
        (str(ids[0]),),
    ).fetchone()
    assert job == {"status": "failed", "attempts": 3, "max_attempts": 3}
    # Each attempt's prediction failed, so each retry needed (and paid for) a new one.
    assert stack.predictions_created() == 3


async def test_unknown_job_type_fails_permanently(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack
) -> None:
    job_id = conn.execute("select enqueue_job('resize-image', '{}'::jsonb) as id").fetchone()["id"]
    async with open_worker(stack.settings()) as worker:
        await worker.runner.run_once(wait=True)
    job = conn.execute(
        "select status, attempts, error_message from job_queue where id = %s", (job_id,)
    ).fetchone()
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "Unknown job type" in job["error_message"]


def _worker_process(settings: Settings, **env: str) -> subprocess.Popen[bytes]:
    variables = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "SUPABASE_URL": settings.supabase_url or "",
        "SUPABASE_SERVICE_ROLE_KEY": settings.supabase_service_role_key.get_secret_value()
        if settings.supabase_service_role_key
        else "",
        "REPLICATE_BASE_URL": settings.replicate_base_url,
        "REPLICATE_API_TOKEN": "r8_test_token_for_the_simulator",
        "OUTPUT_PRIVATE_ORIGINS": settings.output_private_origins or "",
        "POLL_INTERVAL_SECONDS": "0.5",
        "LOG_FORMAT": "json",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "worker"],
        env=variables,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _job_states(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {
        row["status"]: row["count"]
        for row in conn.execute("select status, count(*) from job_queue group by status").fetchall()
    }


async def test_killed_runner_resumes_the_saved_prediction(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack
) -> None:
    stack.configure_simulator(latency_seconds=3.0)
    user = make_user(conn)
    generation_id = start_generation(conn, user, "black-forest-labs/flux-dev")
    process = _worker_process(stack.settings(), LEASE_SECONDS="10", REPLICATE_WAIT_SECONDS="1")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = conn.execute(
                "select replicate_prediction_id from image_generations where id = %s",
                (generation_id,),
            ).fetchone()
            if row["replicate_prediction_id"]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the worker never saved a prediction id")
        process.kill()  # kill -9 while it waits on the prediction
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    rows = await run_worker_until(
        stack.settings(lease_seconds=10), database_url, [generation_id], 60
    )
    assert rows[generation_id]["status"] == "completed"
    assert stack.predictions_created() == 1


async def test_sigterm_loses_nothing(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack
) -> None:
    stack.configure_simulator(latency_seconds=4.0)
    user = make_user(conn)
    ids = [start_generation(conn, user, "black-forest-labs/flux-schnell") for _ in range(50)]
    process = _worker_process(
        stack.settings(),
        MAX_PARALLEL_JOBS="50",
        SHUTDOWN_GRACE_SECONDS="1",
        REPLICATE_WAIT_SECONDS="1",
    )
    try:
        deadline = time.monotonic() + 20
        while _job_states(conn).get("processing", 0) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _job_states(conn).get("processing") == 50
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    states = _job_states(conn)
    assert states.get("processing", 0) == 0 and states.get("failed", 0) == 0
    assert sum(states.values()) == 50
    released = conn.execute(
        "select count(*) from job_queue where status = 'pending' and attempts = 0"
    ).fetchone()["count"]
    assert released == states.get("pending", 0) == 50
    # A new worker finishes every one of them, resuming the predictions already made.
    rows = await run_worker_until(stack.settings(max_parallel_jobs=50), database_url, ids, 60)
    assert {row["status"] for row in rows.values()} == {"completed"}
    assert stack.predictions_created() == 50


async def test_default_lease_and_poll_carry_a_job_no_notify_announced(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack
) -> None:
    """The production timings together (tests elsewhere shorten them): a retry whose
    backoff ends sends no NOTIFY, so the default poll finds it, and the default lease
    holds it while it runs."""
    defaults = {
        name: Settings.model_fields[name].default
        for name in ("poll_interval_seconds", "lease_seconds", "max_parallel_jobs")
    }
    stack.configure_simulator(latency_seconds=2.0)
    with conn.transaction():  # its NOTIFY goes out while the job is not due yet
        generation_id = start_generation(conn, make_user(conn), "black-forest-labs/flux-schnell")
        conn.execute(
            "update job_queue set scheduled_at = now() + interval '1 second'"
            " where payload->>'generation_id' = %s",
            (str(generation_id),),
        )
    settings = stack.settings(**defaults)
    async with open_worker(settings) as worker:
        task = asyncio.create_task(worker.runner.run())
        try:
            lease = None
            deadline = time.monotonic() + 30
            while lease is None and time.monotonic() < deadline:
                lease = conn.execute(
                    "select extract(epoch from locked_until - started_at)::int as seconds"
                    " from job_queue where status = 'processing' and job_type = 'generate-image'"
                ).fetchone()
                await asyncio.sleep(0.05)
            assert lease == {"seconds": defaults["lease_seconds"]} == {"seconds": 120}
            rows = await wait_for(database_url, [generation_id], timeout=30)
        finally:
            worker.runner.stop()
            await task
    assert rows[generation_id]["status"] == "completed"
    attempts = conn.execute("select job_type, attempts from job_queue order by job_type").fetchall()
    assert attempts == [
        {"job_type": "download-image", "attempts": 1},
        {"job_type": "generate-image", "attempts": 1},
    ]
