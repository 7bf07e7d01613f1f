"""Database restart (issue 5, part 2): PostgreSQL restarts (fast mode, immediate mode, and
down for longer than a lease) while a worker process generates images. The worker
reconnects by itself within 5 s, LISTEN comes back (jobs enqueued afterwards are picked up
by NOTIFY, long before the poll interval), and nothing is lost or paid for twice.

The session's cluster is shared by every test, so this one runs its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from devstack.postgres import LocalPostgres
from devstack.simulator import SimulatorConfig
from tests.conftest import make_user
from tests.support.generations import start_generation
from tests.support.pg import connect
from tests.support.stack import run_stack
from tests.support.torture import TortureReport, scale
from tests.support.workers import simulator_predictions, spawn_worker, wait_for
from worker.migrate import migrate

pytestmark = pytest.mark.torture

# A retry after a failed attempt (its backoff over) waits for the next poll, so the poll
# stays moderate. Three probes, one after the other, each picked up within a quarter of
# the poll interval are all polls with a chance of 1 in 64: NOTIFY explains them. The
# margin is wide (NOTIFY takes milliseconds) so a busy machine does not fail the test;
# how fast the worker is back after a restart is a figure of the summary table, and
# pickup latency is measured in bench/pickup_latency.py.
POLL_SECONDS = 10
PICKUP_WITHIN = POLL_SECONDS / 4
PROBES = 3
BACK_WITHIN = 30.0  # a deadline, not a measurement: the worker must come back at all
LEASE_SECONDS = 5
OUTAGE_SECONDS = scale(6.0, 12.0)  # longer than a lease: held jobs are taken over after
MODELS = ["black-forest-labs/flux-schnell", "stability-ai/sdxl", "google/imagen-4"]


def restart(cluster: LocalPostgres, mode: str) -> None:
    """`fast` or `immediate` restart; `outage`: down for OUTAGE_SECONDS, then back."""
    if mode != "outage":
        cluster.restart(mode)
        return
    cluster.stop("fast")
    time.sleep(OUTAGE_SECONDS)
    cluster.start()


def query(url: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def listening(url: str) -> bool:
    """Whether some session (the worker's) is listening on the queue's channel now."""
    rows = query(
        url,
        "select count(*) as n from pg_stat_activity"
        " where datname = current_database() and query ilike 'listen %%job_queue%%'"
        " and pid <> pg_backend_pid()",
    )
    return bool(rows[0]["n"])


async def seconds_until(check: Any, timeout: float, *args: Any) -> float | None:
    """Seconds until `check(*args)` holds (polled every 20 ms), or None at the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(check, *args):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    return None


def picked_up(url: str, generation_id: uuid.UUID) -> bool:
    rows = query(url, "select status from image_generations where id = %s", (generation_id,))
    return rows[0]["status"] != "queued"


def worker_wrote_since(url: str, since: Any) -> bool:
    """Whether the worker changed a job (claim, heartbeat, completion) after `since`."""
    rows = query(url, "select count(*) as n from job_queue where updated_at > %s", (since,))
    return bool(rows[0]["n"])


def in_flight(url: str) -> int:
    rows = query(url, "select count(*) as n from job_queue where status = 'processing'")
    return int(rows[0]["n"])


async def test_database_restarts_lose_and_duplicate_nothing(
    cluster: LocalPostgres, tmp_path: Path, torture_report: TortureReport
) -> None:
    url = cluster.create_database("restart")
    migrate(url)
    batch = scale(30, 150)
    ids: list[uuid.UUID] = []
    figures: dict[str, Any] = {}
    with (
        run_stack(url, tmp_path / "storage", SimulatorConfig(latency_seconds=0.5)) as stack,
        connect(url) as setup,
    ):
        # Few enough per user for admission control (at most 50 unfinished each).
        users = [make_user(setup) for _ in range(batch // 30 + 1)]
        log_file = tmp_path / "worker.log"
        worker = spawn_worker(
            stack.settings(),
            log_file,
            POLL_INTERVAL_SECONDS=str(POLL_SECONDS),
            LEASE_SECONDS=str(LEASE_SECONDS),
            MAX_PARALLEL_JOBS="8",
            REPLICATE_WAIT_SECONDS="1",
        )
        try:
            assert await seconds_until(listening, 15, url) is not None, log_file.read_text()
            for mode in ("fast", "immediate", "outage"):
                with connect(url) as conn:
                    wave = [
                        start_generation(
                            conn,
                            users[i % len(users)],
                            MODELS[i % len(MODELS)],
                            f"{mode} {i}: a kite",
                        )
                        for i in range(batch)
                    ]
                ids += wave
                # Restart while jobs are held and predictions are running.
                assert await seconds_until(lambda: in_flight(url) >= 4, 15) is not None
                began = time.monotonic()
                await asyncio.to_thread(restart, cluster, mode)
                figures[f"{mode}_restart_s"] = round(time.monotonic() - began, 2)

                # From here on the server is up: the worker comes back (LISTEN again, work
                # written); how long it took goes to the summary table.
                up, up_at = time.monotonic(), query(url, "select now() as at")[0]["at"]
                for name, check, args in (
                    ("listen_back", listening, (url,)),
                    ("work_back", worker_wrote_since, (url, up_at)),
                ):
                    assert await seconds_until(check, BACK_WITHIN, *args) is not None, (mode, name)
                    figures[f"{mode}_{name}_s"] = round(time.monotonic() - up, 2)

                # Everything held at the restart ends; then, with the worker idle, a job
                # enqueued now can only be picked up fast by NOTIFY.
                rows = await wait_for(url, wave, timeout=scale(60, 120))
                stuck = {g: r["status"] for g, r in rows.items() if r["status"] != "completed"}
                assert not stuck, (mode, stuck, [r["error_message"] for r in rows.values()])
                pickups = []
                for n in range(PROBES):
                    with connect(url) as conn:
                        probe = start_generation(conn, users[0], MODELS[0], f"{mode} probe {n}")
                    ids.append(probe)
                    pickup = await seconds_until(picked_up, PICKUP_WITHIN, url, probe)
                    assert pickup is not None, f"probe not picked up in {PICKUP_WITHIN} s ({mode})"
                    pickups.append(pickup)
                figures[f"{mode}_notify_pickup_s"] = round(max(pickups), 2)
            rows = await wait_for(url, ids, timeout=30)
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)

        assert {r["status"] for r in rows.values()} == {"completed"}, [
            r["error_message"] for r in rows.values() if r["status"] != "completed"
        ]
        with connect(url) as conn:
            images = conn.execute(
                "select generation_id, count(*) as n from images group by generation_id"
            ).fetchall()
            jobs = conn.execute(
                "select job_type, status, count(*) as n, max(attempts) as most"
                " from job_queue group by job_type, status order by job_type"
            ).fetchall()
        assert sorted(row["generation_id"] for row in images) == sorted(ids)
        assert {row["n"] for row in images} == {1}
        assert [(j["job_type"], j["status"], j["n"]) for j in jobs] == [
            ("download-image", "completed", len(ids)),
            ("generate-image", "completed", len(ids)),
        ]
        objects = stack.storage_root / "objects" / "generated-images"
        assert sum(1 for p in objects.rglob("*") if p.is_file()) == len(ids)

        predictions = simulator_predictions(stack)
        by_prompt: dict[str, int] = defaultdict(int)
        for prediction in predictions:
            by_prompt[prediction["input"]["prompt"]] += 1
        twice = {prompt: n for prompt, n in by_prompt.items() if n > 1}
        assert not twice, twice
        assert len(predictions) == stack.predictions_created() == len(ids)

    adoptions = log_file.read_text().count("adopted an unsaved prediction")
    torture_report.record(
        "db restart: fast, immediate, outage",
        "ok",
        generations=len(ids),
        predictions=len(predictions),
        adoptions=adoptions,
        most_attempts=max(j["most"] for j in jobs),
        **figures,
    )
