"""The provider's shared create limit: 4 `imagegen worker` processes against a simulator
that takes 10 creates a second (a token bucket of one second's worth, a 429 with
Retry-After above it), with a backlog of generations far larger than the limit carries.

Two runs, each on a fresh database and a reset simulator:
- `shared limit`: the database's bucket at the simulator's rate
  (`configure_provider_limit('replicate', 600)`, its default burst of 5): every worker
  takes a token before each create, a job without one waits in the queue for its turn;
- `no shared limit`: the bucket off (0 a minute); each worker creates as fast as its
  slots free up, and only the 429s (which pause every worker's creates) hold them back.

After a ramp, the simulator's counts are read twice, a window apart: creates accepted a
second (against the limit of 10) and the share of create requests answered 429.

    .venv/bin/python -m bench.provider_limit [--quick]
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
    FLUX,
    PROMPT,
    START,
    Process,
    StandIns,
    configure_admission,
    counts,
    make_users,
    service_env,
    stand_ins,
    start_service,
    workspace,
)

LIMIT_PER_SECOND = 10
WORKERS = 4
USERS = 100
TARGETS = {"share_of_limit_pct": 95.0, "answered_429_pct": 1.0}


@dataclass(frozen=True)
class Plan:
    latency: float  # seconds a prediction runs
    concurrency: int  # slots per worker
    backlog: int  # generations queued at the start
    ramp_seconds: float
    window_seconds: float

    @classmethod
    def for_run(cls, quick: bool) -> Plan:
        if quick:
            return cls(0.5, 10, 120, 2.0, 4.0)
        # 1,000 queued: the limit needs 100 s for them, past the ramp and the window.
        return cls(1.0, 25, 1000, 10.0, 60.0)


MODES = {"shared limit": 600, "no shared limit": 0}  # creates a minute in the database


def simulator(stand: StandIns, method: str, path: str, **body: Any) -> dict[str, Any]:
    url = f"{stand.url}/replicate/_simulator/{path}"
    response = httpx.request(method, url, json=body if method == "POST" else None, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def queue_backlog(database_url: str, count: int) -> None:
    users = make_users(database_url, USERS)
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(START, [(users[i % USERS], PROMPT, FLUX) for i in range(count)])


def trial(pg: Cluster, stand: StandIns, work: Path, mode: str, plan: Plan) -> dict[str, Any]:
    name = f"bench_provider_limit_{MODES[mode]}"
    database_url = pg.migrated_database(name)
    configure_admission(database_url, per_user=100_000, queue_depth=1_000_000)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select configure_provider_limit('replicate', %s)", (MODES[mode],))
    simulator(stand, "POST", "reset")
    queue_backlog(database_url, plan.backlog)
    env = service_env(database_url, stand, max_parallel_jobs=plan.concurrency)
    processes: list[Process] = []
    try:
        processes = [
            start_service("worker", f"{name}-{i}", env, work) for i in range(1, WORKERS + 1)
        ]
        time.sleep(plan.ramp_seconds)
        first, started = simulator(stand, "GET", "stats"), time.monotonic()
        done_first = counts(database_url).get("completed", 0)
        time.sleep(plan.window_seconds)
        last, elapsed = simulator(stand, "GET", "stats"), time.monotonic() - started
        done_last = counts(database_url).get("completed", 0)
        for process in processes:
            process.check_alive()
    finally:
        for process in processes:
            process.stop()
        pg.drop_database(name)
    created = last["predictions_created"] - first["predictions_created"]
    requests = last["create_requests"] - first["create_requests"]
    refused = last["create_rate_limited"] - first["create_rate_limited"]
    creates_per_s = created / elapsed
    return {
        "mode": mode,
        "workers": WORKERS,
        "slots_each": plan.concurrency,
        "limit_per_s": LIMIT_PER_SECOND,
        "creates_per_s": creates_per_s,
        "share_of_limit_pct": 100 * creates_per_s / LIMIT_PER_SECOND,
        "create_requests": requests,
        "answered_429": refused,
        "answered_429_pct": 100 * refused / requests if requests else 0.0,
        "completed_per_s": (done_last - done_first) / elapsed,
    }


def main() -> None:
    args = parse_args("The provider's shared create limit: 4 workers, a simulator at 10/s.")
    plan = Plan.for_run(args.quick)
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as pg, workspace() as work:
        with stand_ins(plan.latency, work, create_limit=LIMIT_PER_SECOND) as stand:
            for mode in MODES:
                rows.append(trial(pg, stand, work, mode, plan))
        settings = pg.settings()
    print_table(
        f"provider limit: {WORKERS} workers, simulator at {LIMIT_PER_SECOND} creates/s "
        f"({plan.window_seconds:g} s window, {plan.backlog} queued)",
        rows,
    )
    shared = rows[0]
    met = (
        shared["share_of_limit_pct"] >= TARGETS["share_of_limit_pct"]
        and shared["answered_429_pct"] <= TARGETS["answered_429_pct"]
    )
    print(
        f"\nshared limit: {shared['share_of_limit_pct']:.1f} % of the limit (target ≥ 95 %), "
        f"{shared['answered_429_pct']:.2f} % answered 429 (target ≤ 1 %): "
        + ("met" if met else "MISSED")
    )
    write_results(
        "provider_limit",
        rows,
        {
            "quick": args.quick,
            "latency_seconds": plan.latency,
            "backlog": plan.backlog,
            "window_seconds": plan.window_seconds,
            "targets": TARGETS,
            "targets_met": met,
            "postgresql_settings": settings,
        },
    )


if __name__ == "__main__":
    main()
