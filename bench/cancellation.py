"""Cancellation: owners cancel their generations through `POST cancel-generation`
(sql/0120_cancel_generation.sql) against `imagegen serve` and the Replicate simulator.

- running: N generations whose predictions run (60 s each) are cancelled one after
  another; how long the answer takes, and how long until Replicate has stopped each
  prediction (the cancel-prediction job calls `POST /predictions/{id}/cancel`);
- queued: N generations cancelled before any worker runs, then a worker starts; how many
  predictions reach Replicate (none may).

    .venv/bin/python -m bench.cancellation [--quick]
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import Cluster, cluster, parse_args, percentile, print_table, write_results
from bench.processes import (
    FLUX,
    JWT_SECRET,
    StandIns,
    make_users,
    service_env,
    stand_ins,
    start_service,
    workspace,
)
from devstack.postgres import free_port
from devstack.tokens import mint_dev_token

LATENCY_SECONDS = 60.0  # per prediction: every cancel lands while it runs
STARTED = (
    "select generation_id from start_generation(p_user_id => %s, p_prompt => %s, p_model_id => %s)"
)


def wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done within {timeout:g} s")
        time.sleep(0.02)


def count(database_url: str, sql: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return int(row[0]) if row else 0


def start_all(database_url: str, users: list[uuid.UUID]) -> list[str]:
    """One generation per user, each cancelled by its owner."""
    ids = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for i, user in enumerate(users):
            row = conn.execute(STARTED, (user, f"cancel me {i}", FLUX)).fetchone()
            assert row is not None
            ids.append(str(row[0]))
    return ids


def cancel(http: httpx.Client, token: str, generation_id: str) -> float:
    """Milliseconds until the answer (200 expected)."""
    began = time.perf_counter()
    answer = http.post(
        "/functions/v1/cancel-generation",
        json={"generation_id": generation_id},
        headers={"Authorization": f"Bearer {token}"},
    )
    if answer.status_code != 200:
        raise RuntimeError(f"cancel answered {answer.status_code}: {answer.text}")
    return (time.perf_counter() - began) * 1000


def running(pg: Cluster, work: Path, n: int) -> dict[str, Any]:
    database_url = pg.migrated_database("bench_cancel_running")
    users = make_users(database_url, n)
    with stand_ins(LATENCY_SECONDS, work) as stand:
        port = free_port()
        env = service_env(database_url, stand, host="127.0.0.1", port=port, max_parallel_jobs=2 * n)
        url = f"http://127.0.0.1:{port}"
        service = start_service("serve", "serve", env, work, ready_url=f"{url}/health")
        try:
            ids = start_all(database_url, users)
            wait_until(
                lambda: (
                    count(
                        database_url,
                        "select count(*) from image_generations"
                        " where replicate_prediction_id is not null",
                    )
                    == n
                ),
                60,
            )
            tokens = [mint_dev_token(JWT_SECRET, u, issuer=f"{stand.url}/auth/v1") for u in users]
            answers: list[float] = []
            stopped: list[float] = []
            with httpx.Client(base_url=url, timeout=30) as http:
                for token, generation_id in zip(tokens, ids, strict=True):
                    began = time.perf_counter()
                    answers.append(cancel(http, token, generation_id))
                    done = len(stopped) + 1
                    wait_until(lambda d=done: canceled(stand) >= d, 30)
                    stopped.append((time.perf_counter() - began) * 1000)
            stats = stand.simulator_stats()
        finally:
            service.stop()
    failed_with_image = count(
        database_url,
        "select count(*) from images i join image_generations g on g.id = i.generation_id"
        " where g.status = 'failed'",
    )
    pg.drop_database("bench_cancel_running")
    return {
        "case": "running",
        "generations": n,
        "answer_p50_ms": percentile(answers, 0.5),
        "answer_p99_ms": percentile(answers, 0.99),
        "provider_stopped_p50_ms": percentile(stopped, 0.5),
        "provider_stopped_p99_ms": percentile(stopped, 0.99),
        "predictions_created": stats["predictions_created"],
        "predictions_canceled": stats["canceled_by_request"],
        "failed_with_image": failed_with_image,
    }


def canceled(stand: StandIns) -> int:
    return int(stand.simulator_stats()["canceled_by_request"])


def queued(pg: Cluster, work: Path, n: int) -> dict[str, Any]:
    database_url = pg.migrated_database("bench_cancel_queued")
    users = make_users(database_url, n)
    with stand_ins(LATENCY_SECONDS, work) as stand:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api_env = service_env(database_url, stand, host="127.0.0.1", port=port)
        api = start_service("api", "api", api_env, work, ready_url=f"{url}/health")
        try:
            ids = start_all(database_url, users)
            tokens = [mint_dev_token(JWT_SECRET, u, issuer=f"{stand.url}/auth/v1") for u in users]
            with httpx.Client(base_url=url, timeout=30) as http:
                answers = [cancel(http, t, g) for t, g in zip(tokens, ids, strict=True)]
        finally:
            api.stop()
        worker = start_service("worker", "worker", service_env(database_url, stand), work)
        try:
            time.sleep(3)  # a worker up and polling: it finds nothing to run
        finally:
            worker.stop()
        stats = stand.simulator_stats()
    pg.drop_database("bench_cancel_queued")
    return {
        "case": "queued",
        "generations": n,
        "answer_p50_ms": percentile(answers, 0.5),
        "answer_p99_ms": percentile(answers, 0.99),
        "provider_stopped_p50_ms": None,
        "provider_stopped_p99_ms": None,
        "predictions_created": stats["predictions_created"],
        "predictions_canceled": stats["canceled_by_request"],
        "failed_with_image": 0,
    }


def main() -> None:
    args = parse_args("Cancellation: cancel running and queued generations over HTTP.")
    n = 5 if args.quick else 50
    with cluster(args.database_url) as pg, workspace() as work:
        rows = [running(pg, work, n), queued(pg, work, n)]
    print_table("cancel-generation: answer, and until Replicate stopped the prediction", rows)
    write_results(
        "cancellation", rows, {"quick": args.quick, "prediction_latency_s": LATENCY_SECONDS}
    )


if __name__ == "__main__":
    main()
