"""Replicate misbehaving, through the simulator's knobs and a server that never answers:
every generation ends (completed, or failed with a message its user can read), none stays
active past its deadline, and no fault is retried without end."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from devstack.simulator import SimulatorConfig
from tests.support.faults import assert_readable, backoff_skipped, hung_server, spread, unfinished
from tests.support.pg import Server, fresh_database
from tests.support.stack import Stack, run_stack
from tests.support.torture import FULL, TortureReport, scale
from tests.support.workers import run_worker_until
from worker.settings import Settings

pytestmark = pytest.mark.torture

FLUX = "black-forest-labs/flux-schnell"
COUNT = scale(3, 20)
HTTP_TIMEOUT = 0.5
JOB_TIMEOUT = 10.0
# Three attempts, each bounded by the job timeout, and the 2 s + 4 s backoff between them
# (skipped in quick runs), with room for scheduling.
DEADLINE = 3 * JOB_TIMEOUT + (0 if not FULL else 8) + 5


@pytest.fixture
def stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    with run_stack(
        database_url, tmp_path / "storage", SimulatorConfig(latency_seconds=0.05, seed=11)
    ) as running:
        yield running


def settings(stack: Stack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "http_timeout_seconds": HTTP_TIMEOUT,
        "replicate_wait_seconds": 0,
        "job_timeout_seconds": JOB_TIMEOUT,
        "poll_interval_seconds": 0.2,
    }
    return stack.settings(**(values | overrides))


async def run(
    conn: psycopg.Connection[Any],
    database_url: str,
    worker_settings: Settings,
    count: int = COUNT,
) -> tuple[list[uuid.UUID], dict[uuid.UUID, dict[str, Any]], float]:
    ids = spread(conn, count)
    started = time.monotonic()
    async with backoff_skipped(database_url, enabled=not FULL):
        rows = await run_worker_until(worker_settings, database_url, ids, timeout=DEADLINE)
    return ids, rows, round(time.monotonic() - started, 2)


def jobs_of(conn: psycopg.Connection[Any], job_type: str) -> list[dict[str, Any]]:
    return conn.execute(
        "select status, attempts, error_message from job_queue where job_type = %s",
        (job_type,),
    ).fetchall()


# Faults after which every generation must fail, once its attempts are spent or at once
# when retrying cannot help; the message must say what went wrong in words.
HUNG = "hung"
FAILING: dict[str, tuple[dict[str, Any], str, int]] = {
    # scenario: (simulator knobs, words the message must contain, attempts expected)
    "5xx on every call": ({"server_error_rate": 1.0}, "Replicate", 3),
    "5xx as a proxy's HTML page": ({"server_error_rate": 1.0, "html_errors": True}, "502", 3),
    "non-JSON body": ({"malformed_rate": 1.0}, "Replicate", 3),
    "slower than our HTTP timeout": ({"api_delay_seconds": 1.5}, "timed out", 3),
    "output is not a URL": ({"output_override": "a picture of a cat"}, "image", 1),
    "output is a number": ({"output_override": 42}, "image", 1),
    "output is an empty list": ({"output_override": []}, "image", 1),
    "output file is an HTML page": (
        {"output_body": "<html>Access denied</html>", "output_content_type": "text/html"},
        "image",
        1,
    ),
    "output file is text claiming image/webp": (
        {"output_body": "not an image at all", "output_content_type": "image/webp"},
        "image",
        1,
    ),
    "output served with the wrong image type": ({"output_content_type": "image/png"}, "png", 1),
    "output URL expired": ({"output_ttl_seconds": 0}, "gone", 1),
    # Not a simulator knob: Replicate's address accepts connections and never answers.
    "hung connection": ({HUNG: True}, "timed out", 3),
}


async def test_provider_faults_fail_clearly(
    pg_server: Server, template_database: str, tmp_path: Path, torture_report: TortureReport
) -> None:
    """Each scenario on a database and stack of its own, all at once (they mostly wait)."""

    async def scenario(name: str) -> list[str]:
        knobs, words, attempts = FAILING[name]
        with (
            contextlib.contextmanager(fresh_database)(pg_server, template_database) as url,
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
            run_stack(url, tmp_path / name, SimulatorConfig(latency_seconds=0.05)) as stack,
        ):
            overrides: dict[str, Any] = {"database_pool_size": 2}
            if knobs.get(HUNG):
                overrides["replicate_base_url"] = f"{hung}/v1"
            else:
                await asyncio.to_thread(stack.configure_simulator, **knobs)
            ids, rows, seconds = await run(conn, url, settings(stack, **overrides))
            left = unfinished(conn, ids)
            messages = sorted({str(row["error_message"]) for row in rows.values()})
            jobs = jobs_of(conn, "generate-image") + jobs_of(conn, "download-image")
            problems = []
            if left != {"generations": 0, "jobs": 0}:
                problems.append(f"still active after {DEADLINE} s: {left}")
            if {row["status"] for row in rows.values()} != {"failed"}:
                problems.append(f"statuses {[row['status'] for row in rows.values()]}")
            for message in messages:
                try:
                    assert_readable(message)
                    assert words.lower() in message.lower(), f"no {words!r} in {message!r}"
                except AssertionError as exc:
                    problems.append(f"unreadable message: {exc}")
            # A fault that retrying cannot mend is not retried; the others stop at the
            # job's max_attempts.
            if max(job["attempts"] for job in jobs) != attempts:
                problems.append(f"attempts {[job['attempts'] for job in jobs]}, not {attempts}")
            torture_report.record(
                f"provider: {name}",
                "ok" if not problems else "FAILED",
                generations=len(ids),
                seconds=seconds,
                predictions=stack.predictions_created(),
                message=" | ".join(messages),
            )
            return [f"{name}: {problem}" for problem in problems]

    with hung_server() as hung:
        outcomes = await asyncio.gather(*(scenario(name) for name in FAILING))
    problems = [problem for outcome in outcomes for problem in outcome]
    assert not problems, "\n".join(problems)


async def test_rate_limits_are_waited_out_as_retry_after_says(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack, torture_report: TortureReport
) -> None:
    """Every call is answered 429 with `Retry-After: 2` for 3 s, then Replicate recovers:
    everything completes and no 429 created a prediction. A 429 to a create pauses every
    worker's creates and the job waits in the queue (sql/0111_provider_limits.sql); its
    retry first looks for the prediction in the list (the create's intent was recorded),
    a call this scenario answers 429 too: at most three calls a generation meanwhile."""
    stack.configure_simulator(rate_limit_rate=1.0, retry_after_seconds=2)

    async def recover() -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(stack.configure_simulator, rate_limit_rate=0.0)

    recovery = asyncio.create_task(recover())
    ids, rows, seconds = await run(conn, database_url, settings(stack))
    await recovery
    limited = stack.simulator("GET", "stats")["rate_limited"]
    torture_report.record(
        "provider: 429 with Retry-After for 3 s",
        "ok" if {row["status"] for row in rows.values()} == {"completed"} else "FAILED",
        generations=len(ids),
        seconds=seconds,
        answered_429=limited,
        predictions=stack.predictions_created(),
    )
    assert {row["status"] for row in rows.values()} == {"completed"}
    assert limited <= 3 * len(ids)
    assert stack.predictions_created() == len(ids)


async def test_provider_outage_is_ridden_out(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack, torture_report: TortureReport
) -> None:
    """For 1.5 s, 30 % of the calls are answered 5xx and 20 % 429; the queue's retry
    backoff (2 s, kept in this test) carries every generation past the outage."""
    stack.configure_simulator(server_error_rate=0.3, rate_limit_rate=0.2, retry_after_seconds=0)

    async def recover() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(stack.configure_simulator, server_error_rate=0, rate_limit_rate=0)

    recovery = asyncio.create_task(recover())
    count = scale(10, 100)
    ids = spread(conn, count)
    started = time.monotonic()
    rows = await run_worker_until(
        settings(stack, max_parallel_jobs=20), database_url, ids, timeout=DEADLINE
    )
    await recovery
    stats = stack.simulator("GET", "stats")
    statuses = [row["status"] for row in rows.values()]
    torture_report.record(
        "provider: 1.5 s outage (30 % 5xx, 20 % 429)",
        "ok" if set(statuses) == {"completed"} else "FAILED",
        generations=count,
        seconds=round(time.monotonic() - started, 2),
        completed=statuses.count("completed"),
        answered_5xx=stats["server_errors"],
        answered_429=stats["rate_limited"],
        predictions=stack.predictions_created(),
    )
    assert set(statuses) == {"completed"}, [r["error_message"] for r in rows.values()]
