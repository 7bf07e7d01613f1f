"""Cost of growth: queue overhead and claim latency with 0, 100k and 1M finished jobs.

For each history size a fresh database gets that many finished jobs (95 % completed, 5 %
failed, finished over the last 14 days, each with a generation id as real ones have),
filled by one `insert ... select generate_series` and then vacuumed and analysed, as
autovacuum would after such an insert. On it: the no-op drain of bench.queue_overhead,
the NOTIFY pickup latency of bench.pickup_latency, and `claim_jobs` alone (one job, client
round trip). Then the retention job (`prune_finished_jobs`, 7 days) runs and the same is
measured again at once, before any vacuum, as right after the nightly prune.

    .venv/bin/python -m bench.growth [--quick]
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from bench.common import Cluster, cluster, parse_args, percentile, print_table, write_results
from bench.pickup_latency import measure as measure_pickup
from bench.queue_overhead import NOOP, drain_ours, fill_ours
from worker.logs import configure_logging

RETENTION = "7 days"


def fill_history(url: str, rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        if rows:
            conn.execute(
                """
                insert into job_queue (job_type, payload, status, attempts, created_at,
                                       scheduled_at, started_at, completed_at, updated_at,
                                       error_message)
                select 'generate-image',
                       jsonb_build_object('generation_id', gen_random_uuid()),
                       case when g %% 20 = 0 then 'failed' else 'completed' end,
                       1, t - interval '40 seconds', t - interval '40 seconds',
                       t - interval '30 seconds', t, t,
                       case when g %% 20 = 0 then 'Image generation failed' end
                from generate_series(1, %(rows)s) g,
                     lateral (select now() - (g::float8 / %(rows)s) * interval '14 days' as t) at
                """,
                {"rows": rows},
            )
        conn.execute("vacuum (analyze) job_queue")
    return time.perf_counter() - started


def claim_alone(url: str, samples: int) -> float:
    """p50 ms of `claim_jobs` for one due job, with the job enqueued just before."""
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(samples):
            conn.execute("insert into job_queue (job_type) values (%s)", (NOOP,))
            started = time.perf_counter()
            row = conn.execute(
                "select id from claim_jobs('bench-alone', 1, array[%s], 60)", (NOOP,)
            ).fetchone()
            times.append((time.perf_counter() - started) * 1000)
            assert row is not None
            conn.execute("select complete_jobs('bench-alone', array[%s])", (row[0],))
    return percentile(times, 0.5)


def finished_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select count(*) from job_queue where status in ('completed', 'failed', 'cancelled')"
        ).fetchone()
    return int(row[0]) if row else 0


async def measure_all(url: str, quick: bool) -> dict[str, Any]:
    jobs, seconds = (3_000, 1.5) if quick else (30_000, 5.0)
    await fill_ours(url, jobs)
    drain = await drain_ours(url, jobs, seconds, concurrency=200)
    pickup = await measure_pickup(
        url, 30 if quick else 150, listen=True, poll_interval=5.0, gap=(0.005, 0.02)
    )
    claim_ms = await asyncio.to_thread(claim_alone, url, 20 if quick else 100)
    return {
        "drain_jobs_per_s": drain.jobs_per_s,
        "pickup_p50_ms": pickup["p50_ms"],
        "pickup_p99_ms": pickup["p99_ms"],
        "claim_jobs_p50_ms": claim_ms,
    }


def run_size(server: Cluster, history: int, quick: bool) -> list[dict[str, Any]]:
    url = server.migrated_database("bench_growth")
    fill_seconds = fill_history(url, history)
    rows = [
        {
            "history": history,
            "phase": "filled, vacuumed",
            "finished_rows": finished_rows(url),
            **asyncio.run(measure_all(url, quick)),
            "setup_s": fill_seconds,
        }
    ]
    if history:
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("select prune_finished_jobs(%s::interval)", (RETENTION,))
        prune_seconds = time.perf_counter() - started
        rows.append(
            {
                "history": history,
                "phase": f"after prune ({RETENTION})",
                "finished_rows": finished_rows(url),
                **asyncio.run(measure_all(url, quick)),
                "setup_s": prune_seconds,
            }
        )
    server.drop_database("bench_growth")
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "cost of growth")
    configure_logging("warning", "json")
    sizes = (0, 10_000) if args.quick else (0, 100_000, 1_000_000)
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as server:
        settings = server.settings()
        for history in sizes:
            rows += run_size(server, history, args.quick)
            print(f"history {history:,}: done", flush=True)
    print_table("Cost of growth: finished jobs in job_queue vs the claim path", rows)
    write_results("growth", rows, {"quick": args.quick, "server_settings": settings})


if __name__ == "__main__":
    main()
