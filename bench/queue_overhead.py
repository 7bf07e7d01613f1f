"""Queue overhead: no-op jobs through enqueue -> claim -> complete, ours and the peers'.

The same run, on the same durable cluster, drains a queue of no-op jobs through:
- ours: the real `Runner` over the real `PostgresGateway`, with a no-op job type
  registered only here (it completes its own job, as every real handler does);
- Procrastinate: `run_worker_async` at the same concurrency, over a pool of the same
  size;
- PgQueuer: as its performance guide recommends for throughput (asyncpg, one connection
  per QueueManager, batch size raised for short jobs), as many managers as we have
  connections.
Every system gets the same payload (`{"n": i}` as JSON), the same connections and the
same durability (fsync and synchronous_commit on). The queue is filled in bulk before the
clock starts; a trial ends when the queue is drained or its time is up, and the rate is
jobs finished over wall time. pgbench with a one-row update-and-commit script on the
same cluster and client count gives the machine's ceiling for committed transactions.

    .venv/bin/python -m bench.queue_overhead [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.common import Cluster, cluster, parse_args, print_table, write_results
from worker.database import Database, Job
from worker.logs import configure_logging
from worker.postgres_gateway import PostgresGateway
from worker.runner import Runner

NOOP = "bench-noop"
# Connections each system may use for claiming and completing (our worker's default pool).
CONNECTIONS = 10


@dataclass
class Trial:
    system: str
    config: str
    connections: int
    concurrency: int
    jobs: int
    seconds: float
    jobs_per_s: float


@dataclass
class Scale:
    """How much work each trial gets: enough jobs to stay busy for `seconds`."""

    ours_jobs: int
    pgqueuer_jobs: int
    procrastinate_jobs: int
    seconds: float
    pgbench_seconds: int
    # Jobs in flight per round, the same for every system: PgQueuer's is managers x batch.
    levels: tuple[int, ...]

    @classmethod
    def for_run(cls, quick: bool) -> Scale:
        if quick:
            return cls(2_000, 2_000, 1_000, 1.0, 1, (100,))
        return cls(60_000, 60_000, 15_000, 6.0, 5, (10, 100, 500, 1000))


class Progress:
    """Counts finished jobs and says when `target` is reached."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.done = 0
        self.finished = asyncio.Event()

    def tick(self) -> None:
        self.done += 1
        if self.done >= self.target:
            self.finished.set()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), timeout=seconds)


async def analyze(url: str) -> None:
    """Statistics for the freshly filled tables, as autovacuum would gather: the same for
    every system, so no planner works blind."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("analyze")


# Ours.


async def fill_ours(url: str, jobs: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "insert into job_queue (job_type, payload) "
            "select %s, jsonb_build_object('n', g) from generate_series(1, %s) g",
            (NOOP, jobs),
        )
    await analyze(url)


@dataclass
class NoopContext:
    db: Database
    worker_id: str
    progress: Progress


async def noop_job(job: Job, ctx: NoopContext) -> None:
    # A handler completes its own job on success (worker/jobs/__init__.py).
    if await ctx.db.complete_job(job.id, ctx.worker_id):
        ctx.progress.tick()


async def drain_ours(
    url: str,
    jobs: int,
    seconds: float,
    *,
    concurrency: int,
    connections: int = CONNECTIONS,
    listen: bool = True,
) -> Trial:
    gateway = PostgresGateway(url, max_size=connections)
    await gateway.open()
    db = Database(gateway)
    progress = Progress(jobs)
    worker_id = f"bench-{uuid.uuid4().hex[:8]}"
    handlers: dict[str, Callable[[Job, Any], Awaitable[None]]] = {NOOP: noop_job}
    runner = Runner(
        db,
        handlers,
        NoopContext(db, worker_id, progress),
        worker_id=worker_id,
        concurrency=concurrency,
        listen=listen,
        job_types=[NOOP],
    )
    try:
        started = time.perf_counter()
        task = asyncio.create_task(runner.run())
        await progress.wait(seconds)
        elapsed = time.perf_counter() - started
        runner.stop()
        await task
    finally:
        await gateway.close()
    return Trial(
        "ours",
        f"Runner concurrency={concurrency}",
        connections,
        concurrency,
        progress.done,
        elapsed,
        progress.done / elapsed,
    )


# Procrastinate.


async def drain_procrastinate(url: str, jobs: int, seconds: float, *, concurrency: int) -> Trial:
    from procrastinate import App, PsycopgConnector

    # The worker's LISTEN takes one connection of the pool: one more keeps `CONNECTIONS`
    # for the work, as our runner has besides its own LISTEN connection.
    app = App(connector=PsycopgConnector(conninfo=url, min_size=1, max_size=CONNECTIONS + 1))
    progress = Progress(jobs)

    @app.task(name="noop", queue="bench")
    async def noop(n: int) -> None:
        progress.tick()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for first in range(0, jobs, 5_000):
            chunk: list[dict[str, Any]] = [{"n": i} for i in range(first, min(first + 5_000, jobs))]
            await noop.batch_defer_async(*chunk)
        await analyze(url)
        started = time.perf_counter()
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=["bench"],
                concurrency=concurrency,
                wait=False,
                listen_notify=True,
                install_signal_handlers=False,
            )
        )
        await progress.wait(seconds)
        elapsed = time.perf_counter() - started
        if not worker.done():
            worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    return Trial(
        "procrastinate",
        f"worker concurrency={concurrency}",
        CONNECTIONS,
        concurrency,
        progress.done,
        elapsed,
        progress.done / elapsed,
    )


# PgQueuer.


async def drain_pgqueuer(url: str, jobs: int, seconds: float, *, batch_size: int) -> Trial:
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer, Queries
    from pgqueuer import Job as PgJob
    from pgqueuer.domain.types import QueueExecutionMode

    setup = await asyncpg.connect(url)
    try:
        queries = Queries(AsyncpgDriver(setup))
        await queries.install()
        for first in range(0, jobs, 5_000):
            count = min(5_000, jobs - first)
            payloads: list[bytes | None] = [
                json.dumps({"n": i}).encode() for i in range(first, first + count)
            ]
            await queries.enqueue(["noop"] * count, payloads, [0] * count)
    finally:
        await setup.close()
    await analyze(url)

    progress = Progress(jobs)
    connections = [await asyncpg.connect(url) for _ in range(CONNECTIONS)]
    managers = [PgQueuer(AsyncpgDriver(conn)) for conn in connections]

    async def noop(job: PgJob) -> None:
        progress.tick()

    for manager in managers:
        manager.entrypoint("noop")(noop)
    try:
        started = time.perf_counter()
        runs = asyncio.gather(
            *(
                manager.run(batch_size=batch_size, mode=QueueExecutionMode.drain)
                for manager in managers
            )
        )
        await progress.wait(seconds)
        for manager in managers:
            manager.shutdown.set()
        await runs
        elapsed = time.perf_counter() - started
    finally:
        for conn in connections:
            await conn.close()
    return Trial(
        "pgqueuer",
        f"{CONNECTIONS} QueueManagers, batch_size={batch_size}",
        CONNECTIONS,
        CONNECTIONS * batch_size,
        progress.done,
        elapsed,
        progress.done / elapsed,
    )


# pgbench.


def pgbench(server: Cluster, clients: int, seconds: int) -> float:
    """Transactions/s of a one-row update-and-commit script on `server` (durable)."""
    url = server.create_database("bench_pgbench", migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table counter (id integer primary key, n bigint not null)")
        conn.execute("insert into counter select g, 0 from generate_series(1, 1000) g")
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "update_one_row.sql"
        script.write_text(
            "\\set id random(1, 1000)\nupdate counter set n = n + 1 where id = :id;\n"
        )
        info = server.conninfo()
        command = [
            str(server.bin_dir / "pgbench"),
            "--no-vacuum",
            f"--host={info['host']}",
            f"--port={info['port']}",
            f"--username={info['user'] or 'postgres'}",
            f"--client={clients}",
            f"--jobs={min(clients, 2)}",
            f"--time={seconds}",
            f"--file={script}",
            "bench_pgbench",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    server.drop_database("bench_pgbench")
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


# The run.


async def run_all(server: Cluster, scale: Scale) -> tuple[list[Trial], float]:
    trials: list[Trial] = []
    levels = scale.levels

    async def fresh(name: str, migrated: bool) -> str:
        if migrated:
            return await asyncio.to_thread(server.migrated_database, name)
        return await asyncio.to_thread(server.create_database, name, False)

    # PgQueuer's default batch is 10; its guide says to raise it for short jobs.
    pgqueuer_batches = tuple(level // CONNECTIONS for level in levels)
    # Round by round, so a burst of load from elsewhere on the machine hits every system.
    for round_, concurrency in enumerate(levels):
        url = await fresh("bench_ours", True)
        await fill_ours(url, scale.ours_jobs)
        trials.append(
            await drain_ours(url, scale.ours_jobs, scale.seconds, concurrency=concurrency)
        )
        url = await fresh("bench_procrastinate", False)
        trials.append(
            await drain_procrastinate(
                url, scale.procrastinate_jobs, scale.seconds, concurrency=concurrency
            )
        )
        url = await fresh("bench_pgqueuer", False)
        trials.append(
            await drain_pgqueuer(
                url, scale.pgqueuer_jobs, scale.seconds, batch_size=pgqueuer_batches[round_]
            )
        )
    trials.sort(key=lambda trial: ("ours", "procrastinate", "pgqueuer").index(trial.system))
    tps = await asyncio.to_thread(pgbench, server, CONNECTIONS, scale.pgbench_seconds)
    return trials, tps


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "queue overhead")
    configure_logging("warning", "json")
    logging.basicConfig(level=logging.WARNING)
    # "App is instantiated in the main module": true, and harmless here.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    scale = Scale.for_run(args.quick)
    with cluster(args.database_url) as server:
        settings = server.settings()
        trials, tps = asyncio.run(run_all(server, scale))

    rows = [asdict(trial) for trial in trials]
    print_table("Queue overhead: no-op jobs, enqueue -> claim -> complete", rows)
    best = {
        system: max((t for t in trials if t.system == system), key=lambda t: t.jobs_per_s)
        for system in ("ours", "procrastinate", "pgqueuer")
    }
    ours = best["ours"].jobs_per_s
    summary = [
        {"measure": "ours, best (jobs/s)", "value": ours, "target": ">= 10,000"},
        {
            "measure": "ours / Procrastinate (best each)",
            "value": ours / best["procrastinate"].jobs_per_s,
            "target": ">= 2",
        },
        {
            "measure": "ours / PgQueuer (best each)",
            "value": ours / best["pgqueuer"].jobs_per_s,
            "target": ">= 1",
        },
        {"measure": f"pgbench one-row update, {CONNECTIONS} clients (tps)", "value": tps},
        {"measure": "ours as a share of pgbench tps", "value": ours / tps},
    ]
    print_table("Summary", summary)
    write_results(
        "queue_overhead",
        rows,
        {
            "quick": args.quick,
            "server_settings": settings,
            "pgbench_tps": tps,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
