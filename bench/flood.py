"""Flood: one client keeps 400 start-generation requests in flight (closed loop, one
token) against one `imagegen api` process; meanwhile another user's start-generation
and `/health` are timed, one request at a time.

Three phases: no flood (the baseline); the flood with the per-client cap on requests
in flight (the default, api/limits.py); the flood with the cap lifted
(MAX_REQUESTS_IN_FLIGHT_PER_CLIENT far above the flood), as before the cap. The
flooding user is at the per-user limit of active generations almost at once, so what it
gets is 429s: from the API process under the cap, from the database without it.

    .venv/bin/python -m bench.flood [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import cluster, parse_args, percentile, print_table, write_results
from bench.processes import (
    FLUX,
    JWT_SECRET,
    ROOT,
    make_users,
    service_env,
    stand_ins,
    start_service,
    workspace,
)
from devstack.postgres import free_port
from devstack.tokens import mint_dev_token
from worker.settings import Settings

ROUTE = "/functions/v1/start-generation"
BODY = json.dumps({"prompt": "a flood of lighthouses", "model_id": FLUX})
FLOOD_CONNECTIONS = 400


def probe(api_url: str, tokens: list[str], seconds: float) -> tuple[dict[str, list[float]], int]:
    """Other users' start-generation and /health, alternately, for `seconds`: their
    latencies (ms) and how many of the start-generations were answered 200."""
    times: dict[str, list[float]] = {"other": [], "health": []}
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=api_url, timeout=60) as http:
        i = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = http.post(
                ROUTE, content=BODY, headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            )
            times["other"].append((time.perf_counter() - started) * 1000)
            statuses.append(response.status_code)
            started = time.perf_counter()
            http.get("/health")
            times["health"].append((time.perf_counter() - started) * 1000)
            i += 1
            time.sleep(0.02)
    return times, sum(status == 200 for status in statuses)


def phase(
    name: str, pg: Any, stand: Any, work: Path, cap: int | None, flood: bool, seconds: float
) -> dict[str, Any]:
    database_url = pg.migrated_database("bench_flood")
    greedy, *others = make_users(database_url, 200)
    port = free_port()
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    if cap is not None:
        settings["max_requests_in_flight_per_client"] = cap
    api_url = f"http://127.0.0.1:{port}"
    api = start_service(
        "api", "api", service_env(database_url, stand, **settings), work, f"{api_url}/health"
    )
    issuer = f"{stand.url}/auth/v1"
    tokens_file = work / "flood-token.json"
    tokens_file.write_text(json.dumps([mint_dev_token(JWT_SECRET, greedy, issuer=issuer)]))
    other_tokens = [mint_dev_token(JWT_SECRET, user, issuer=issuer) for user in others]
    loadgen = None
    try:
        if flood:
            command = [
                sys.executable, "-m", "bench.loadgen", "--url", f"{api_url}{ROUTE}",
                "--tokens", str(tokens_file), "--body", BODY, "--duration", str(seconds + 2),
                "--warmup", "1", "--connections", str(FLOOD_CONNECTIONS),
            ]  # fmt: skip
            loadgen = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)  # the flood's connections open and its first answers come back
        times, other_ok = probe(api_url, other_tokens, seconds)
        flood_result = json.loads(loadgen.communicate()[0]) if loadgen else None
        api.check_alive()
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
        api.stop()
    pg.drop_database("bench_flood")
    return {
        "phase": name,
        "flood_in_flight": FLOOD_CONNECTIONS if flood else 0,
        "cap_per_client": (Settings().max_requests_in_flight_per_client if cap is None else "off"),
        "flood_answered_per_s": (
            round(flood_result["requests"] / flood_result["seconds"]) if flood_result else None
        ),
        "flood_statuses": flood_result["statuses"] if flood_result else None,
        "other_requests": len(times["other"]),
        "other_200": other_ok,
        "other_p50_ms": percentile(times["other"], 0.5),
        "other_p99_ms": percentile(times["other"], 0.99),
        "health_p50_ms": percentile(times["health"], 0.5),
        "health_p99_ms": percentile(times["health"], 0.99),
    }


def main() -> None:
    args = parse_args("Flood: one client's 400 requests in flight; another user and /health.")
    seconds = 3.0 if args.quick else 15.0
    rows = []
    with cluster(args.database_url) as pg, workspace() as work, stand_ins(1.0, work) as stand:
        rows.append(phase("no flood", pg, stand, work, None, False, seconds))
        rows.append(phase("flood, capped", pg, stand, work, None, True, seconds))
        rows.append(phase("flood, cap lifted", pg, stand, work, 1_000_000, True, seconds))
    shown = [{k: v for k, v in row.items() if k != "flood_statuses"} for row in rows]
    print_table("flood: one client, 400 in flight (one `imagegen api` process)", shown)
    write_results("flood", rows, {"quick": args.quick, "seconds_per_phase": seconds})


if __name__ == "__main__":
    main()
