"""The provider's shared create limit with real workers and the simulator's create limit
(sql/0111_provider_limits.sql, worker/provider_limit.py): workers together keep to the
limit, a job that must wait goes back to the queue (no slot, no attempt spent), and a 429
pauses every worker's creates."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from devstack.simulator import SimulatorConfig
from tests.support.faults import spread
from tests.support.stack import Stack, run_stack
from worker.service import open_worker
from worker.settings import Settings


@pytest.fixture
def stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    config = SimulatorConfig(latency_seconds=0.05, seed=5)
    with run_stack(database_url, tmp_path / "storage", config) as running:
        yield running


@contextlib.asynccontextmanager
async def workers(settings: list[Settings]) -> AsyncIterator[None]:
    """Runners of their own (worker id, pool), as separate worker processes would be."""
    async with contextlib.AsyncExitStack() as stack:
        runners = [(await stack.enter_async_context(open_worker(s))).runner for s in settings]
        tasks = [asyncio.create_task(runner.run()) for runner in runners]
        try:
            yield
        finally:
            for runner in runners:
                runner.stop()
            await asyncio.gather(*tasks)


async def until_ended(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        rows = conn.execute(
            "select status from image_generations where id = any(%s)", (ids,)
        ).fetchall()
        statuses = [row["status"] for row in rows]
        if set(statuses) <= {"completed", "failed"} or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.1)


def snoozed() -> float:
    """Jobs handed back to wait, in this process (the runners run here)."""
    value = REGISTRY.get_sample_value(
        "imagegen_jobs_finished_total", {"job_type": "generate-image", "outcome": "snoozed"}
    )
    return value or 0.0


def generate_attempts(conn: psycopg.Connection[Any]) -> list[int]:
    rows = conn.execute("select attempts from job_queue where job_type = 'generate-image'")
    return [row["attempts"] for row in rows.fetchall()]


async def test_two_workers_together_keep_to_the_shared_limit(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """The simulator takes 5 creates a second (a burst of 5); the shared limit is 4 a
    second (a burst of 2). Two workers with 8 slots each and 16 generations at once: not
    one create is refused, and the jobs that waited for their turn spent no attempt."""
    stack.configure_simulator(create_limit_per_second=5)
    conn.execute("select configure_provider_limit('replicate', 240, 2)")
    conn.execute("update imagegen.provider_limits set tokens = 2")
    ids = spread(conn, 16, per_user=8)
    before = snoozed()
    settings = [
        stack.settings(worker_id=f"limit-{n}", max_parallel_jobs=8, replicate_wait_seconds=0)
        for n in (1, 2)
    ]
    async with workers(settings):
        statuses = await until_ended(conn, ids)
    assert statuses == ["completed"] * 16
    stats = stack.simulator("GET", "stats")
    assert stats["create_rate_limited"] == 0
    assert stats["predictions_created"] == 16
    assert snoozed() - before >= 10  # 16 at once, 2 in the bucket: the rest took turns
    assert generate_attempts(conn) == [1] * 16


async def test_a_429_pauses_every_worker_until_retry_after(
    conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """No shared limit (0), the simulator's at 1 create a second: the creates past the
    first are answered 429 with Retry-After: 1. Each 429 pauses every worker's creates
    (the row says until when), its job goes back to the queue without spending an
    attempt, and every generation completes with one prediction."""
    stack.configure_simulator(create_limit_per_second=1, create_limit_burst=1)
    conn.execute("select configure_provider_limit('replicate', 0)")
    ids = spread(conn, 3)
    before = snoozed()
    settings = [
        stack.settings(worker_id=f"pause-{n}", max_parallel_jobs=2, replicate_wait_seconds=0)
        for n in (1, 2)
    ]
    async with workers(settings):
        statuses = await until_ended(conn, ids)
        row = conn.execute("select paused_until from imagegen.provider_limits").fetchone()
    assert statuses == ["completed"] * 3
    assert row is not None and row["paused_until"] is not None
    stats = stack.simulator("GET", "stats")
    assert stats["create_rate_limited"] >= 1
    assert stats["predictions_created"] == 3
    # Not resent in place by its worker: each 429 sent its job back to the queue.
    assert snoozed() - before >= stats["create_rate_limited"]
    assert generate_attempts(conn) == [1] * 3
