"""Generation throughput: one `imagegen worker` process against the Replicate simulator.

For each model latency (30 s, and 5 s) and concurrency (MAX_PARALLEL_JOBS 50, 200, 500;
and 600 at 30 s, since 500 slots of 30 s can carry 60,000/h only with no overhead at all),
a fresh database is fed generations (through `start_generation`, as the API does) at
the rate the concurrency can carry at that latency (concurrency / latency per second),
evenly spread, by a thread of this script. The worker runs everything a generation
needs: claim, create the prediction, poll it, hand over to the download job, download
the image, check it, upload it to Storage, finish. Its settings are the defaults but
for the concurrency (pool of 10 connections, polls as shipped, NOTIFY on, info logs as
JSON lines, to a file).

After a ramp (the latency, plus 5 s), completions are counted over a window: that is
the sustained rate. The simulator and Storage stand-in run in a process of their own,
so the worker's CPU share (of one core, over the window) and its peak resident memory
are its own. The old platform did 180 generations an hour (3 a minute).

    .venv/bin/python -m bench.generation_throughput [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Cluster, cluster, parse_args, print_table, write_results
from bench.processes import (
    FLUX,
    CpuMeter,
    Feeder,
    StandIns,
    counts,
    make_users,
    postgres_cpu,
    service_env,
    stand_ins,
    start_service,
    workspace,
)

OLD_PLATFORM_PER_HOUR = 180
TARGETS = {"generations_per_hour": 60_000, "worker_cpu_pct": 50, "peak_rss_mb": 250}
USERS = 500


@dataclass(frozen=True)
class Plan:
    concurrencies: dict[float, Sequence[int]]  # by model latency (s)
    ramp_extra_seconds: float
    window_seconds: dict[float, float]

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        if quick:
            return cls({1.0: (20,)}, 1.0, {1.0: 2.0})
        # 500 slots at 30 s carry 60,000/h at the very best: 600 shows the target with room.
        return cls({30.0: (50, 200, 500, 600), 5.0: (50, 200, 500)}, 5.0, {30.0: 40.0, 5.0: 15.0})


def trial(
    pg: Cluster,
    stand: StandIns,
    work: Path,
    latency: float,
    concurrency: int,
    plan: Plan,
) -> dict[str, Any]:
    name = f"bench_generation_{int(latency * 1000)}_{concurrency}"
    database_url = pg.migrated_database(name)
    users = make_users(database_url, USERS)
    env = service_env(
        database_url,
        stand,
        max_parallel_jobs=concurrency,
        shutdown_grace_seconds=1,  # stopping is not measured; hand back what is running
        worker_id=f"bench-{concurrency}",
    )
    rate = concurrency / latency
    worker = start_service("worker", f"worker-{name}", env, work)
    sources = {"worker": worker.cpu_seconds, "stand_ins": stand.process.cpu_seconds}
    sources |= postgres_cpu(pg.local.data_dir if pg.local else None)
    meter = CpuMeter(sources)
    feeder = Feeder(database_url, users, rate)
    try:
        feeder.start()
        time.sleep(latency + plan.ramp_extra_seconds)
        worker.check_alive()
        window = plan.window_seconds[latency]
        first, started = counts(database_url), time.monotonic()
        meter.start()
        time.sleep(window)
        cpu = meter.stop()
        last, elapsed = counts(database_url), time.monotonic() - started
        worker.check_alive()
        _, peak_rss = worker.memory_mb()
    finally:
        feeder.stop()
        worker.stop()
        pg.drop_database(name)
    done = last.get("completed", 0) - first.get("completed", 0)
    per_hour = done / elapsed * 3600
    worker_cpu = cpu.pop("worker_cpu_pct")
    return {
        "latency_s": latency,
        "concurrency": concurrency,
        "offered_per_h": rate * 3600,
        "generations_per_h": per_hour,
        "ideal_per_h": concurrency / latency * 3600,
        "efficiency_pct": 100 * per_hour / (concurrency / latency * 3600),
        "vs_old_platform": per_hour / OLD_PLATFORM_PER_HOUR,
        "worker_cpu_pct": worker_cpu,
        "cpu_ms_per_generation": worker_cpu * 10 / (done / elapsed) if done else None,
        "peak_rss_mb": peak_rss,
        "failed": last.get("failed", 0),
        "backlog_at_end": last["pending_jobs"],
        **cpu,
        "window_s": elapsed,
        "completed_in_window": done,
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best sustained rate at the longest latency, with that run's CPU and memory."""
    longest = max(row["latency_s"] for row in rows)
    best = max(
        (row for row in rows if row["latency_s"] == longest),
        key=lambda row: row["generations_per_h"],
    )
    run = f"at {longest:g} s, concurrency {best['concurrency']}"
    return [
        {
            "measure": f"generations/h {run}",
            "value": best["generations_per_h"],
            "target": ">= 60,000",
        },
        {"measure": "worker CPU (% of a core)", "value": best["worker_cpu_pct"], "target": "<= 50"},
        {"measure": "worker peak RSS (MB)", "value": best["peak_rss_mb"], "target": "<= 250"},
        {
            "measure": f"x the old platform ({OLD_PLATFORM_PER_HOUR}/h)",
            "value": best["vs_old_platform"],
            "target": "",
        },
        {
            "measure": "peak RSS, all runs (MB)",
            "value": max(row["peak_rss_mb"] for row in rows),
            "target": "<= 250",
        },
    ]


def main() -> None:
    args = parse_args("Generation throughput of one worker process against the simulator.")
    plan = Plan.for_run(args.quick)
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as pg, workspace() as work:
        for latency, concurrencies in plan.concurrencies.items():
            with stand_ins(latency, work) as stand:
                for concurrency in concurrencies:
                    rows.append(trial(pg, stand, work, latency, concurrency, plan))
                    print(
                        f"latency {latency:g} s, concurrency {concurrency}: "
                        f"{rows[-1]['generations_per_h']:,.0f}/h",
                        flush=True,
                    )
        settings = pg.settings()
    print_table("generation throughput: one `imagegen worker` process", rows)
    print_table("Summary", summary(rows))
    write_results(
        "generation_throughput",
        rows,
        {
            "quick": args.quick,
            "summary": summary(rows),
            "targets": TARGETS,
            "old_platform_per_hour": OLD_PLATFORM_PER_HOUR,
            "model": FLUX,
            "notes": (
                "offered = concurrency / latency, evenly; counted over the window after a "
                "ramp of latency + 5 s; CPU in % of one core over the window; peak RSS is "
                "VmHWM; cpu_ms_per_generation = worker CPU time / completions in the window"
            ),
            "postgresql_settings": settings,
        },
    )


if __name__ == "__main__":
    main()
