"""Scale-out: 1, 2 and 4 `imagegen worker` processes on one database.

Each trial starts from a fresh database and a reset simulator. Generations are fed
evenly at what the workers' slots can carry together (workers x concurrency /
latency a second); completions are counted over a window after a ramp, as in
`bench.generation_throughput`. Then the feed stops, every generation is let finish,
and the run is checked for double processing:
- the simulator created exactly one prediction per generation (a generation run twice
  pays twice: this is the count that matters);
- every job ran exactly once (attempts = 1), one generate and one download job each;
- every completed generation has exactly one images row, and the simulator served each
  output once.

    .venv/bin/python -m bench.scale_out [--quick]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import Cluster, cluster, parse_args, print_table, write_results
from bench.processes import (
    CpuMeter,
    Feeder,
    Process,
    StandIns,
    counts,
    make_users,
    postgres_cpu,
    raise_create_limit,
    service_env,
    stand_ins,
    start_service,
    workspace,
)

USERS = 500


@dataclass(frozen=True)
class Plan:
    workers: tuple[int, ...]
    latency: float
    concurrency: int  # per worker
    ramp_seconds: float
    window_seconds: float

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        if quick:
            return cls((1, 2), 0.5, 10, 1.0, 2.0)
        return cls((1, 2, 4), 5.0, 50, 8.0, 15.0)


def wait_until_finished(database_url: str, processes: list[Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select count(*) from image_generations where imagegen.is_active(status)"
            ).fetchone()
            if row and row[0] == 0:
                return
            for process in processes:
                process.check_alive()
            time.sleep(0.2)
    raise RuntimeError(f"generations still active after {timeout:g} s")


def audit(database_url: str, stand: StandIns) -> dict[str, Any]:
    """The double-processing evidence: counts that must all agree."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            select
                (select count(*) from image_generations),
                (select count(*) from image_generations where status = 'completed'),
                (select count(*) from image_generations where status = 'failed'),
                (select count(*) from images),
                (select count(*) from (
                    select generation_id from images group by generation_id having count(*) > 1
                ) twice),
                (select count(*) from image_generations g where g.status = 'completed'
                    and not exists (select from images i where i.generation_id = g.id)),
                (select count(*) from job_queue where attempts > 1),
                (select count(*) from job_queue where job_type = 'generate-image'),
                (select count(*) from job_queue where job_type = 'download-image'),
                (select count(distinct replicate_prediction_id) from image_generations)
            """
        ).fetchone()
    assert row is not None
    stats = stand.simulator_stats()
    (
        generations,
        completed,
        failed,
        images,
        doubled_images,
        without_image,
        retried_jobs,
        generate_jobs,
        download_jobs,
        distinct_predictions,
    ) = (int(value) for value in row)
    checks = {
        "one prediction per generation": stats["predictions_created"] == generations,
        "distinct prediction ids": distinct_predictions == generations,
        "every job ran once": retried_jobs == 0,
        "one generate and one download job each": generate_jobs == download_jobs == generations,
        "one images row per completed generation": (
            images == completed and doubled_images == 0 and without_image == 0
        ),
        "each output downloaded once": stats.get("downloads") == completed,
        "nothing failed": failed == 0,
    }
    return {
        "generations": generations,
        "predictions_created": stats["predictions_created"],
        "images": images,
        "jobs_retried": retried_jobs,
        "outputs_downloaded": stats.get("downloads"),
        "double_processed": sum(not ok for ok in checks.values()),
        "checks": checks,
    }


def trial(pg: Cluster, stand: StandIns, work: Path, workers: int, plan: Plan) -> dict[str, Any]:
    name = f"bench_scale_out_{workers}"
    database_url = pg.migrated_database(name)
    users = make_users(database_url, USERS)
    raise_create_limit(database_url)
    httpx.post(f"{stand.url}/replicate/_simulator/reset", timeout=30).raise_for_status()
    env = service_env(database_url, stand, max_parallel_jobs=plan.concurrency)
    processes: list[Process] = []
    rate = workers * plan.concurrency / plan.latency
    feeder = Feeder(database_url, users, rate)
    try:
        processes = [
            start_service("worker", f"{name}-{i}", env, work) for i in range(1, workers + 1)
        ]
        sources = {
            f"worker{i}": process.cpu_seconds for i, process in enumerate(processes, start=1)
        }
        sources |= postgres_cpu(pg.local.data_dir if pg.local else None)
        meter = CpuMeter(sources)
        feeder.start()
        time.sleep(plan.ramp_seconds)
        first, started = counts(database_url), time.monotonic()
        meter.start()
        time.sleep(plan.window_seconds)
        cpu = meter.stop()
        last, elapsed = counts(database_url), time.monotonic() - started
        feeder.stop()
        wait_until_finished(database_url, processes, timeout=plan.latency * 3 + 60)
        evidence = audit(database_url, stand)
    finally:
        feeder.stop()
        for process in processes:
            process.stop()
        pg.drop_database(name)
    done = last.get("completed", 0) - first.get("completed", 0)
    worker_cpu = sum(value for key, value in cpu.items() if key.startswith("worker"))
    return {
        "workers": workers,
        "concurrency_each": plan.concurrency,
        "offered_per_s": rate,
        "generations_per_s": done / elapsed,
        "workers_cpu_pct": worker_cpu,
        "postgres_cpu_pct": cpu.get("postgres_cpu_pct"),
        "machine_busy_pct": cpu["machine_busy_pct"],
        **{key: value for key, value in evidence.items() if key != "checks"},
        "checks": evidence["checks"],
    }


def main() -> None:
    args = parse_args("Scale-out: 1, 2 and 4 worker processes on one database.")
    plan = Plan.for_run(args.quick)
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as pg, workspace() as work:
        with stand_ins(plan.latency, work) as stand:
            for workers in plan.workers:
                rows.append(trial(pg, stand, work, workers, plan))
        settings = pg.settings()
    base = rows[0]["generations_per_s"] or float("nan")
    for row in rows:
        row["ratio_to_one"] = row["generations_per_s"] / base
    shown = [{key: value for key, value in row.items() if key != "checks"} for row in rows]
    print_table(f"scale-out: worker processes on one database (latency {plan.latency:g} s)", shown)
    failed = [
        (row["workers"], check) for row in rows for check, ok in row["checks"].items() if not ok
    ]
    print("\ndouble processing: " + ("none" if not failed else f"CHECKS FAILED {failed}"))
    write_results(
        "scale_out",
        rows,
        {
            "quick": args.quick,
            "latency_seconds": plan.latency,
            "concurrency_per_worker": plan.concurrency,
            "window_seconds": plan.window_seconds,
            "double_processing": not failed,
            "postgresql_settings": settings,
        },
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
