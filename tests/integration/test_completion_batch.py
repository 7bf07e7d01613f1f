"""Successful completions of one worker that arrive together share one `complete_jobs`
call (worker/database.py), over both gateways, with the same answers as one by one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.stack import run_stack
from worker.database import Database
from worker.gateway import Gateway
from worker.postgres_gateway import PostgresGateway
from worker.postgrest_gateway import PostgrestGateway


class Recording:
    """A gateway that remembers which functions were called."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.calls: list[str] = []

    async def call(self, function: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.calls.append(function)
        return await self.gateway.call(function, args)


def claimed_jobs(database_url: str, worker: str, count: int) -> list[uuid.UUID]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(count):
            conn.execute("select enqueue_job('download-image')")
        rows = conn.execute(
            "select id from claim_jobs(%s, %s, array['download-image'])", (worker, count)
        ).fetchall()
    return [row[0] for row in rows]


def statuses(database_url: str, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select id, status, result from job_queue where id = any(%s)", (job_ids,)
        ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


@pytest.mark.parametrize("kind", ["postgres", "postgrest"])
async def test_concurrent_completions_share_a_call_and_keep_their_answers(
    database_url: str, tmp_path: Path, kind: str
) -> None:
    mine = claimed_jobs(database_url, "worker-a", 30)
    theirs = claimed_jobs(database_url, "worker-b", 1)
    with run_stack(database_url, tmp_path / "storage") as stack:
        gateway: Any = (
            PostgresGateway(database_url, max_size=4)
            if kind == "postgres"
            else PostgrestGateway(stack.url, stack.service_role_key, timeout=10)
        )
        if kind == "postgres":
            await gateway.open()
        recording = Recording(gateway)
        db = Database(recording)  # type: ignore[arg-type]
        try:
            answers = await asyncio.gather(
                *(
                    db.complete_job(job_id, "worker-a", result={"n": n} if n % 2 else None)
                    for n, job_id in enumerate(mine)
                ),
                db.complete_job(theirs[0], "worker-a"),
            )
            # A failure is never held back for a batch: it is its own call, as before.
            failed = await db.complete_job(mine[0], "worker-a", error="late", retryable=False)
        finally:
            await gateway.close()

    assert answers == [True] * len(mine) + [False]
    assert failed is False
    assert "complete_jobs" in recording.calls
    assert len(recording.calls) < len(mine)
    rows = statuses(database_url, [*mine, *theirs])
    assert all(
        rows[job_id] == ("completed", {"n": n} if n % 2 else None) for n, job_id in enumerate(mine)
    )
    assert rows[theirs[0]][0] == "processing"


async def test_a_failed_batch_call_fails_every_caller_in_it(database_url: str) -> None:
    mine = claimed_jobs(database_url, "worker-a", 5)

    class Broken:
        async def call(self, function: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
            await asyncio.sleep(0)
            raise RuntimeError(f"{function} refused")

    db = Database(Broken())  # type: ignore[arg-type]
    outcomes = await asyncio.gather(
        *(db.complete_job(job_id, "worker-a") for job_id in mine), return_exceptions=True
    )
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
