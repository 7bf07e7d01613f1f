"""Accept path: `start-generation` over real HTTP with signed user tokens.

`imagegen api` runs alone (no job runner in it, so only accepting is measured), as a
process of its own, one uvicorn process, with its default settings (pool of 10
connections). Admission control stays on as in production: the per-user limit at its
default, with enough users that nobody reaches it, and the queue bound raised above
what a phase can enqueue (no worker drains the queue here). Load comes from
`bench.loadgen` in another process over keep-alive connections:
- fixed rates (open loop: latency counted from when each request was due);
- saturation (closed loop: every connection sends again as soon as it is answered).
Each phase starts on empty tables. Client latency is the load generator's; server
latency is the service's own histogram (/metrics), interpolated within its buckets.

    .venv/bin/python -m bench.accept_path [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.common import cluster, parse_args, print_table, write_results
from bench.processes import (
    FLUX,
    JWT_SECRET,
    ROOT,
    CpuMeter,
    configure_admission,
    make_users,
    postgres_cpu,
    service_env,
    stand_ins,
    start_service,
    waited_children_cpu_seconds,
    workspace,
)
from devstack.postgres import free_port
from devstack.tokens import mint_dev_token

ROUTE = "/functions/v1/start-generation"
HISTOGRAM = "imagegen_http_request_duration_seconds"
BODY = json.dumps({"prompt": "a lighthouse at dusk, oil on canvas", "model_id": FLUX})
USERS = 2_000
CONNECTIONS = 32
WARMUP_SECONDS = 1.0
TARGETS = {"p50_ms_at_300": 3.0, "p99_ms_at_300": 15.0, "saturation_accepted_per_s": 1500}


@dataclass
class Phase:
    name: str
    rate: float  # requests/s; 0 is the closed loop
    seconds: float


def phases(quick: bool) -> list[Phase]:
    if quick:
        return [Phase("100/s", 100, 1), Phase("saturation", 0, 1)]
    return [Phase("100/s", 100, 15), Phase("300/s", 300, 15), Phase("saturation", 0, 15)]


def histogram(base_url: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound -> count) of 200 answers to start-generation."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_bucket")
                and labels.get("route") == ROUTE
                and labels.get("status") == "200"
            ):
                buckets[float(labels["le"])] = sample.value
    return buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """As PromQL's histogram_quantile over the difference: linear within a bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower * 1000
            inside = cumulative - below
            share = (rank - below) / inside if inside else 1.0
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, cumulative
    return float("nan")


def empty_tables(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("truncate public.images, public.image_generations, public.job_queue")
        conn.execute("vacuum analyze public.image_generations, public.job_queue")


def count_rows(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select (select count(*) from image_generations),"
            " (select count(*) from job_queue where status = 'pending')"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def run_phase(
    phase: Phase, api_url: str, meter: CpuMeter, tokens_file: Path, database_url: str
) -> dict[str, Any]:
    empty_tables(database_url)
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"{api_url}{ROUTE}",
        "--tokens",
        str(tokens_file),
        "--body",
        BODY,
        "--rate",
        str(phase.rate),
        "--duration",
        str(phase.seconds),
        "--warmup",
        str(WARMUP_SECONDS),
        "--connections",
        str(CONNECTIONS),
    ]
    # The server's histogram and the CPU shares include the generator's warm-up.
    before = histogram(api_url)
    meter.start()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    cpu = meter.stop()
    after = histogram(api_url)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    accepted = int(result["statuses"].get("200", 0))
    refused = sum(n for code, n in result["statuses"].items() if code != "200")
    generations, pending = count_rows(database_url)
    latency = result["latency_ms"]
    return {
        "phase": phase.name,
        "offered_per_s": phase.rate or None,
        "accepted_per_s": accepted / result["seconds"],
        "requests": result["requests"],
        "non_200": refused,
        "errors": sum(result["errors"].values()),
        "p50_ms": latency["p50"],
        "p95_ms": latency["p95"],
        "p99_ms": latency["p99"],
        "max_ms": latency["max"],
        "server_p50_ms": histogram_quantile(before, after, 0.50),
        "server_p99_ms": histogram_quantile(before, after, 0.99),
        **cpu,
        "rows_written": generations,
        "pending_at_end": pending,
        "first_error": result["first_error"],
        "statuses": result["statuses"],
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    at_300 = next((row for row in rows if row["offered_per_s"] == 300), {})
    saturation = next((row for row in rows if row["phase"] == "saturation"), {})
    return [
        {"measure": "p50 at 300/s (ms, client)", "value": at_300.get("p50_ms"), "target": "<= 3"},
        {"measure": "p99 at 300/s (ms, client)", "value": at_300.get("p99_ms"), "target": "<= 15"},
        {
            "measure": "accepted/s at saturation",
            "value": saturation.get("accepted_per_s"),
            "target": ">= 1,500",
        },
    ]


def main() -> None:
    args = parse_args("Accept path: start-generation over HTTP, at fixed rates and saturation.")
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as pg, workspace() as work:
        database_url = pg.migrated_database("bench_accept_path")
        users = make_users(database_url, USERS)
        # No worker drains the queue here: the bound is raised above what a phase enqueues.
        configure_admission(database_url, per_user=50, queue_depth=10_000_000)
        with stand_ins(1.0, work) as stand:
            port = free_port()
            env = service_env(database_url, stand, host="127.0.0.1", port=port)
            api_url = f"http://127.0.0.1:{port}"
            issuer = f"{stand.url}/auth/v1"
            tokens = [mint_dev_token(JWT_SECRET, user, issuer=issuer) for user in users]
            tokens_file = work / "tokens.json"
            tokens_file.write_text(json.dumps(tokens))
            api = start_service("api", "api", env, work, ready_url=f"{api_url}/health")
            sources = {"api": api.cpu_seconds, "loadgen": waited_children_cpu_seconds}
            sources |= postgres_cpu(pg.local.data_dir if pg.local else None)
            meter = CpuMeter(sources)
            try:
                for phase in phases(args.quick):
                    rows.append(run_phase(phase, api_url, meter, tokens_file, database_url))
                    api.check_alive()
            finally:
                api.stop()
        settings = pg.settings()
    shown = [
        {key: value for key, value in row.items() if key not in ("first_error", "statuses")}
        for row in rows
    ]
    print_table("accept path: POST start-generation (one `imagegen api` process)", shown)
    print_table("Summary", summary(rows))
    write_results(
        "accept_path",
        rows,
        {
            "quick": args.quick,
            "summary": summary(rows),
            "targets": TARGETS,
            "server": "imagegen api: one uvicorn process, no job runner, pool of 10",
            "users": USERS,
            "connections": CONNECTIONS,
            "body": json.loads(BODY),
            "postgresql_settings": settings,
        },
    )


if __name__ == "__main__":
    main()
