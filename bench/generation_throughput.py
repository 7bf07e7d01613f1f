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

Webhooks mode (`--mode webhooks`, or `both`, the default): one `imagegen serve` process
(the runner and the endpoint the simulator delivers its signed webhooks to, PUBLIC_URL
pointing at itself) whose generations hold no slot while the model runs. Two trials:
`steady`, fed as above at a rate beyond what one process completes, at 30 s latency,
counted the same way next to polling; and `hold`, 10,000 generations started at once (one
transaction), at 30 s latency (how many are in flight at the peak: the first outputs come
back 30 s after their create) and at 120 s (long enough for the process to create them
all: measured while all 10,000 are in flight), then until every one has completed, with
one prediction each.

Every trial runs under a raised account limit (CREATE_LIMIT_PER_MINUTE, set with
configure_provider_limit): at Replicate's default of 600 creates a minute, 36,000
generations an hour is the most any number of workers completes, and no more than 300
predictions are in flight at 30 s (Little's law: 10 a second for 30 s).

    .venv/bin/python -m bench.generation_throughput [--quick] [--mode polling|webhooks|both]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.common import Cluster, cluster, parse_args, print_table, write_results
from bench.processes import (
    CREATE_LIMIT_PER_MINUTE,
    FLUX,
    PROMPT,
    START,
    CpuMeter,
    Feeder,
    Process,
    StandIns,
    configure_admission,
    counts,
    make_users,
    postgres_cpu,
    raise_create_limit,
    service_env,
    stand_ins,
    start_service,
    workspace,
)
from devstack.postgres import free_port
from devstack.simulator import DEV_WEBHOOK_SECRET

OLD_PLATFORM_PER_HOUR = 180
TARGETS = {
    "generations_per_hour": 60_000,
    "worker_cpu_pct": 50,
    "peak_rss_mb": 250,
    "webhooks_in_flight": 10_000,
}
USERS = 500
# Generations waiting on a webhook are pending jobs: the default queue bound (10,000)
# and per-user limit would refuse the starts of the hold trial before the worker is tested.
WEBHOOK_ADMISSION = {"per_user": 1000, "queue_depth": 1_000_000}
IN_FLIGHT = (
    "select count(*) from image_generations"
    " where status = 'processing' and replicate_prediction_id is not null"
)


@dataclass(frozen=True)
class WebhookPlan:
    slots: int  # MAX_PARALLEL_JOBS: creating and storing, never waiting
    hold_count: int
    hold_latencies: tuple[float, ...]
    hold_window_seconds: float
    steady: tuple[float, float, float] | None  # (latency, offered per second, window)

    @classmethod
    def for_run(cls, quick: bool) -> WebhookPlan:
        if quick:
            return cls(
                slots=50,
                hold_count=200,
                hold_latencies=(15.0,),
                hold_window_seconds=2.0,
                steady=None,
            )
        return cls(
            slots=200,
            hold_count=10_000,
            hold_latencies=(30.0, 120.0),
            hold_window_seconds=20.0,
            steady=(30.0, 40.0, 40.0),
        )


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


def webhook_service(
    database_url: str, stand: StandIns, work: Path, name: str, slots: int, latency: float
) -> Process:
    """`imagegen serve` with webhooks on: PUBLIC_URL is its own address."""
    configure_admission(
        database_url, WEBHOOK_ADMISSION["per_user"], WEBHOOK_ADMISSION["queue_depth"]
    )
    port = free_port()
    env = service_env(
        database_url,
        stand,
        max_parallel_jobs=slots,
        shutdown_grace_seconds=1,
        worker_id=f"bench-hooks-{slots}",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        replicate_webhook_secret=DEV_WEBHOOK_SECRET,
        replicate_wait_seconds=0,  # the create answers at once; the webhook says when it ends
        webhook_grace_seconds=latency + 30,  # the model's real latency past its estimate (3 s)
    )
    return start_service("serve", name, env, work, ready_url=f"http://127.0.0.1:{port}/health")


def in_flight(database_url: str) -> int:
    return _count(database_url, IN_FLIGHT)


def predictions_saved(database_url: str) -> int:
    """Generations whose prediction has been created (and its id saved), so far."""
    return _count(
        database_url,
        "select count(*) from image_generations where replicate_prediction_id is not null",
    )


def _count(database_url: str, query: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


def trial(
    pg: Cluster,
    stand: StandIns,
    work: Path,
    latency: float,
    concurrency: int,
    plan: Plan,
    *,
    rate: float | None = None,
    webhooks: bool = False,
) -> dict[str, Any]:
    """Fed at `rate` a second (default: what `concurrency` slots carry at this latency)."""
    mode = "webhooks" if webhooks else "polling"
    name = f"bench_generation_{mode}_{int(latency * 1000)}_{concurrency}"
    database_url = pg.migrated_database(name)
    users = make_users(database_url, USERS)
    raise_create_limit(database_url)
    rate = rate or concurrency / latency
    if webhooks:
        worker = webhook_service(database_url, stand, work, f"serve-{name}", concurrency, latency)
    else:
        env = service_env(
            database_url,
            stand,
            max_parallel_jobs=concurrency,
            shutdown_grace_seconds=1,  # stopping is not measured; hand back what is running
            worker_id=f"bench-{concurrency}",
        )
        worker = start_service("worker", f"worker-{name}", env, work)
    sources = {"worker": worker.cpu_seconds, "stand_ins": stand.process.cpu_seconds}
    sources |= postgres_cpu(pg.local.data_dir if pg.local else None)
    meter = CpuMeter(sources)
    feeder = Feeder(database_url, users, rate)
    try:
        feeder.start()
        time.sleep(latency + plan.ramp_extra_seconds)
        worker.check_alive()
        window = plan.window_seconds.get(latency, 40.0)
        first, started = counts(database_url), time.monotonic()
        flying = [in_flight(database_url)]
        meter.start()
        time.sleep(window)
        cpu = meter.stop()
        last, elapsed = counts(database_url), time.monotonic() - started
        flying.append(in_flight(database_url))
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
        "mode": mode,
        "latency_s": latency,
        "concurrency": concurrency,
        "in_flight": sum(flying) / len(flying),
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


def hold_trial(
    pg: Cluster, stand: StandIns, work: Path, plan: WebhookPlan, latency: float
) -> dict[str, Any]:
    """`hold_count` generations started at once; the process creates their predictions,
    then carries them in flight (measured over a window), then stores every output."""
    count = plan.hold_count
    name = f"bench_generation_hold_{count}_{int(latency)}"
    database_url = pg.migrated_database(name)
    users = make_users(database_url, USERS)
    raise_create_limit(database_url)
    worker = webhook_service(database_url, stand, work, f"serve-{name}", plan.slots, latency)
    sources = {"worker": worker.cpu_seconds, "stand_ins": stand.process.cpu_seconds}
    sources |= postgres_cpu(pg.local.data_dir if pg.local else None)
    before = stand.simulator_stats()
    creating, holding, storing = CpuMeter(sources), CpuMeter(sources), CpuMeter(sources)
    try:
        inserting = time.monotonic()
        with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
            cursor.executemany(START, [(users[i % USERS], PROMPT, FLUX) for i in range(count)])
        creating.start()
        started = time.monotonic()
        # Until all are in flight, or the first could have ended: a slow machine reports
        # the lower peak it reached (the table says so) instead of failing the run.
        peak = 0
        while (peak := max(peak, in_flight(database_url))) < count:
            worker.check_alive()
            if time.monotonic() - started > latency:
                break
            time.sleep(0.2)
        created_s = time.monotonic() - started
        created = predictions_saved(database_url)
        create_cpu = creating.stop()
        _, rss_before_hold = worker.memory_mb()
        holding.start()
        time.sleep(plan.hold_window_seconds)
        hold_cpu = holding.stop()
        held = in_flight(database_url)
        rss_held, peak_held = worker.memory_mb()
        storing.start()
        store_started = time.monotonic()
        deadline = started + latency + count / 5 + 120
        while (done := counts(database_url)).get("completed", 0) + done.get("failed", 0) < count:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {count} ended: {done}")
            time.sleep(1.0)
        store_cpu = storing.stop()
        stored_s = time.monotonic() - store_started
        _, peak_rss = worker.memory_mb()
    finally:
        worker.stop()
        pg.drop_database(name)
    after = stand.simulator_stats()
    return {
        "mode": "webhooks hold",
        "latency_s": latency,
        "concurrency": plan.slots,
        "generations": count,
        "start_s": started - inserting,
        "in_flight_peak": peak,
        "in_flight_at_window_end": held,
        "create_s": created_s,
        "created": created,
        "created_per_s": created / created_s,
        "create_cpu_ms_per_generation": (
            create_cpu["worker_cpu_pct"] * 10 * created_s / created if created else None
        ),
        "hold_window_s": plan.hold_window_seconds,
        "worker_cpu_pct": hold_cpu["worker_cpu_pct"],
        "rss_while_held_mb": rss_held,
        "peak_rss_held_mb": max(peak_held, rss_before_hold),
        "store_s": stored_s,
        "stored_per_h": count / stored_s * 3600,
        "store_worker_cpu_pct": store_cpu["worker_cpu_pct"],
        "peak_rss_mb": peak_rss,
        "completed": done.get("completed", 0),
        "failed": done.get("failed", 0),
        "predictions_created": after["predictions_created"] - before["predictions_created"],
        "webhooks_sent": after["webhooks_sent"] - before["webhooks_sent"],
        "postgres_cpu_pct_held": hold_cpu.get("postgres_cpu_pct"),
        "machine_busy_pct_held": hold_cpu["machine_busy_pct"],
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best sustained polling rate at the longest latency, with that run's CPU and
    memory; then the webhook runs beside it."""
    polling = [row for row in rows if row["mode"] == "polling"]
    longest = max(row["latency_s"] for row in polling)
    best = max(
        (row for row in polling if row["latency_s"] == longest),
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
        *webhook_summary(rows),
    ]


def webhook_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for row in rows:
        if row["mode"] == "webhooks":
            run = f"webhooks at {row['latency_s']:g} s, {row['concurrency']} slots"
            lines += [
                {
                    "measure": f"generations/h, {run}",
                    "value": row["generations_per_h"],
                    "target": "",
                },
                {"measure": f"in flight, {run}", "value": row["in_flight"], "target": ""},
                {"measure": f"worker CPU, {run}", "value": row["worker_cpu_pct"], "target": ""},
            ]
        elif row["mode"] == "webhooks hold":
            run = f"{row['generations']:,} started at once, {row['latency_s']:g} s"
            lines += [
                {
                    "measure": f"in flight at the peak, {run}",
                    "value": row["in_flight_peak"],
                    "target": ">= 10,000",
                },
                {"measure": f"created per s, {run}", "value": row["created_per_s"], "target": ""},
            ]
            if row["in_flight_at_window_end"] == row["generations"]:  # all held at once
                lines.append(
                    {
                        "measure": f"worker CPU while all are held, {run}",
                        "value": row["worker_cpu_pct"],
                        "target": "<= 50",
                    }
                )
            lines += [
                {
                    "measure": f"peak RSS, {run}, stored too (MB)",
                    "value": row["peak_rss_mb"],
                    "target": "<= 250",
                },
                {
                    "measure": f"predictions per generation, {run}",
                    "value": row["predictions_created"] / row["generations"],
                    "target": "1",
                },
            ]
    return lines


def _mode_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("polling", "webhooks", "both"), default="both")


def main() -> None:
    args = parse_args(
        "Generation throughput of one worker process against the simulator.", _mode_argument
    )
    plan = Plan.for_run(args.quick)
    hooks = WebhookPlan.for_run(args.quick)
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as pg, workspace() as work:
        concurrencies = dict(plan.concurrencies)
        if args.mode == "webhooks":  # polling at its best only, for the comparison
            latency = max(concurrencies)
            concurrencies = {latency: (max(concurrencies[latency]),)}
        for latency, slots in concurrencies.items():
            with stand_ins(latency, work) as stand:
                for concurrency in slots:
                    rows.append(trial(pg, stand, work, latency, concurrency, plan))
                    print(
                        f"polling, latency {latency:g} s, concurrency {concurrency}: "
                        f"{rows[-1]['generations_per_h']:,.0f}/h",
                        flush=True,
                    )
                if args.mode != "polling" and hooks.steady and hooks.steady[0] == latency:
                    _, rate, _ = hooks.steady
                    rows.append(
                        trial(pg, stand, work, latency, hooks.slots, plan, rate=rate, webhooks=True)
                    )
                    print(
                        f"webhooks, latency {latency:g} s, {hooks.slots} slots: "
                        f"{rows[-1]['generations_per_h']:,.0f}/h, "
                        f"{rows[-1]['in_flight']:,.0f} in flight",
                        flush=True,
                    )
        for hold_latency in hooks.hold_latencies if args.mode != "polling" else ():
            with stand_ins(hold_latency, work) as stand:
                rows.append(hold_trial(pg, stand, work, hooks, hold_latency))
                print(
                    f"webhooks, {hooks.hold_count:,} at once at {hold_latency:g} s: "
                    f"{rows[-1]['in_flight_peak']:,} in flight at the peak, "
                    f"{rows[-1]['worker_cpu_pct']:.1f} % CPU while held",
                    flush=True,
                )
        settings = pg.settings()
    steady = [row for row in rows if row["mode"] != "webhooks hold"]
    print_table("generation throughput: one `imagegen worker` (webhooks: `serve`) process", steady)
    print_table("webhooks: generations in flight at once", [r for r in rows if r not in steady])
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
            "mode": args.mode,
            "webhook_plan": hooks.__dict__,
            "webhook_admission": WEBHOOK_ADMISSION,
            "create_limit_per_minute": CREATE_LIMIT_PER_MINUTE,
            "notes": (
                "offered = concurrency / latency, evenly; counted over the window after a "
                "ramp of latency + 5 s; CPU in % of one core over the window; peak RSS is "
                "VmHWM; cpu_ms_per_generation = worker CPU time / completions in the window"
            ),
            "postgresql_settings": settings,
        },
        variant=None if args.mode == "both" else args.mode,
    )


if __name__ == "__main__":
    main()
