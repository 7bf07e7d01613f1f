"""Crash recovery: kill -9 an `imagegen worker` holding N jobs; how long until every one
of them runs on another worker (claimed by it, or already done by it).

Two ways the survivor can learn of the death:
- liveness (the default): the dead worker's session lock is gone, found by the next
  `reclaim_dead_workers` (every LIVENESS_CHECK_SECONDS) — sql/0040_worker_liveness.sql;
- lease only (liveness checks pushed out of reach): the jobs wait until their lease,
  LEASE_SECONDS after the last heartbeat, runs out.
Worker A claims all N jobs (the simulator makes each prediction take long enough), B is
started and idle, then A is killed; B's claims are timed from the kill.

    .venv/bin/python -m bench.crash_recovery [--quick]
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.common import cluster, parse_args, print_table, write_results
from bench.processes import (
    FLUX,
    START,
    make_users,
    raise_create_limit,
    service_env,
    stand_ins,
    start_service,
    workspace,
)

LATENCY_SECONDS = 20.0  # per prediction: longer than any recovery measured here


def held_by(database_url: str, worker_id: str) -> int:
    """Generate-image jobs that worker holds or has finished."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "select count(*) from job_queue where job_type = 'generate-image'"
            " and (locked_by = %s or (status = 'completed' and attempts > 1))",
            (worker_id,),
        ).fetchone()
    return int(row[0]) if row else 0


def wait_until(check: Any, timeout: float, *args: Any) -> float:
    started = time.monotonic()
    while not check(*args):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"not done within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - started


def trial(pg: Any, work: Any, name: str, jobs: int, lease: int, check: float) -> dict[str, Any]:
    database_url = pg.migrated_database(f"bench_crash_{name.replace(' ', '_')}")
    users = make_users(database_url, jobs // 40 + 1)
    raise_create_limit(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for i in range(jobs):
            conn.execute(START, (users[i % len(users)], f"crash recovery {i}", FLUX))
    with stand_ins(LATENCY_SECONDS, work) as stand:
        settings = {
            "lease_seconds": lease,
            "liveness_check_seconds": check,
            "max_parallel_jobs": jobs,
            "poll_interval_seconds": 0.5,
        }
        first = start_service(
            "worker", "worker-a", service_env(database_url, stand, worker_id="a", **settings), work
        )
        second = None
        try:
            wait_until(lambda: held_by(database_url, "a") == jobs, 60)
            second = start_service(
                "worker",
                "worker-b",
                service_env(database_url, stand, worker_id="b", **settings),
                work,
            )
            time.sleep(3)  # B up, registered and idle: what is timed is the detection
            first.popen.kill()
            first.popen.wait()
            recovered = wait_until(lambda: held_by(database_url, "b") == jobs, lease + 60)
        finally:
            first.stop()
            if second is not None:
                second.stop()
    pg.drop_database(database_url.rsplit("/", 1)[1])
    return {
        "detection": name,
        "jobs": jobs,
        "lease_s": lease,
        "liveness_check_s": check if check < 3600 else None,
        "all_running_elsewhere_s": round(recovered, 2),
    }


def main() -> None:
    args = parse_args("Crash recovery: kill -9 a worker holding N jobs.")
    jobs = 6 if args.quick else 24
    lease = 10 if args.quick else 120
    rows = []
    with cluster(args.database_url) as pg, workspace() as work:
        rows.append(trial(pg, work, "liveness", jobs, lease, 2.0))
        rows.append(trial(pg, work, "lease only", jobs, lease, 3600.0))
    print_table("crash recovery: kill -9 of a worker holding every job", rows)
    write_results(
        "crash_recovery",
        rows,
        {"quick": args.quick, "prediction_latency_s": LATENCY_SECONDS},
    )


if __name__ == "__main__":
    main()
