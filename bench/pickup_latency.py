"""Pickup latency: enqueue -> claimed, on an idle worker, woken by NOTIFY or by polling only.

One job at a time, each enqueued after the previous one ran and a random idle gap: the
clock starts client-side just before the `enqueue_job` call (one autocommit statement,
so its commit and its NOTIFY are included) and stops when the real `Runner` starts the
job's handler. The server's own view (`started_at - created_at` in job_queue, both
`now()` of their transactions) is printed beside it as a cross-check. With NOTIFY off
the runner finds jobs by polling at the default interval (5 s), so each sample waits for
the next poll.

    .venv/bin/python -m bench.pickup_latency [--quick]
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.common import cluster, parse_args, percentile, print_table, write_results
from worker.database import Database, Job
from worker.logs import configure_logging
from worker.postgres_gateway import PostgresGateway
from worker.runner import Runner
from worker.settings import Settings

JOB_TYPE = "bench-pickup"
DEFAULT_POLL = Settings.model_fields["poll_interval_seconds"].default


@dataclass
class PickupContext:
    db: Database
    worker_id: str
    claimed: dict[uuid.UUID, float]
    arrived: asyncio.Event


async def record_pickup(job: Job, ctx: PickupContext) -> None:
    ctx.claimed[job.id] = time.perf_counter()
    ctx.arrived.set()
    await ctx.db.complete_job(job.id, ctx.worker_id)


async def measure(
    url: str, samples: int, *, listen: bool, poll_interval: float, gap: tuple[float, float]
) -> dict[str, Any]:
    """Latencies (ms) of `samples` pickups by one idle runner."""
    gateway = PostgresGateway(url)
    await gateway.open()
    db = Database(gateway)
    worker_id = f"bench-{uuid.uuid4().hex[:8]}"
    context = PickupContext(db, worker_id, {}, asyncio.Event())
    runner = Runner(
        db,
        {JOB_TYPE: record_pickup},
        context,
        worker_id=worker_id,
        concurrency=10,
        poll_interval=poll_interval,
        listen=listen,
        job_types=[JOB_TYPE],
    )
    enqueued: dict[uuid.UUID, float] = {}
    task = asyncio.create_task(runner.run())
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await asyncio.sleep(0.5)  # the runner's first claim and LISTEN are done
            for n in range(samples):
                await asyncio.sleep(random.uniform(*gap))
                context.arrived.clear()
                started = time.perf_counter()
                cursor = await conn.execute(
                    "select enqueue_job(%s, jsonb_build_object('n', %s::int))", (JOB_TYPE, n)
                )
                row = await cursor.fetchone()
                assert row is not None
                enqueued[row[0]] = started
                await asyncio.wait_for(context.arrived.wait(), timeout=poll_interval + 10)
            await asyncio.sleep(0.05)  # the last completion
            cursor = await conn.execute(
                "select extract(epoch from started_at - created_at) * 1000 from job_queue"
                " where id = any(%s)",
                (list(enqueued),),
            )
            server = [float(row[0]) for row in await cursor.fetchall()]
    finally:
        runner.stop()
        await task
        await gateway.close()
    client = [(context.claimed[job_id] - at) * 1000 for job_id, at in enqueued.items()]
    return {
        "wake-up": "NOTIFY" if listen else f"poll every {poll_interval:g} s",
        "samples": len(client),
        "p50_ms": percentile(client, 0.50),
        "p90_ms": percentile(client, 0.90),
        "p99_ms": percentile(client, 0.99),
        "max_ms": max(client),
        "server_p50_ms": percentile(server, 0.50),
    }


async def run_all(url: str, quick: bool) -> list[dict[str, Any]]:
    notify_samples = 40 if quick else 400
    # Quick mode is a smoke test: a short poll keeps it to seconds.
    poll = 0.5 if quick else DEFAULT_POLL
    poll_samples = 4 if quick else 10
    return [
        await measure(
            url, notify_samples, listen=True, poll_interval=DEFAULT_POLL, gap=(0.005, 0.03)
        ),
        # Gaps spread over one poll interval so the samples cover every phase of the poll.
        await measure(url, poll_samples, listen=False, poll_interval=poll, gap=(0.0, poll)),
    ]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "pickup latency")
    configure_logging("warning", "json")
    with cluster(args.database_url) as server:
        url = server.migrated_database("bench_pickup")
        rows = asyncio.run(run_all(url, args.quick))
        settings = server.settings()
    print_table("Pickup latency: enqueue -> handler started, idle worker", rows)
    notify = rows[0]
    summary = [
        {"measure": "NOTIFY p50 (ms)", "value": notify["p50_ms"], "target": "<= 4"},
        {"measure": "NOTIFY p99 (ms)", "value": notify["p99_ms"], "target": "<= 20"},
    ]
    print_table("Summary", summary)
    write_results(
        "pickup_latency",
        rows,
        {"quick": args.quick, "server_settings": settings, "summary": summary},
    )


if __name__ == "__main__":
    main()
