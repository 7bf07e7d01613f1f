"""Supabase Storage misbehaving: uploads answered 5xx or stalled past our timeout are
retried and the generations end completed; a generation is never completed without its
file in the store; a Storage that stays down fails generations with a readable message.

The faults come from an ASGI middleware around the Storage stand-in, here in the tests:
the stand-in itself (also the dev mode's local store) has no fault switch to leave on."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.faults import assert_readable, backoff_skipped, spread, unfinished
from tests.support.stack import Stack, run_stack
from tests.support.torture import FULL, TortureReport, scale
from tests.support.workers import run_worker_until
from worker.settings import Settings

pytestmark = pytest.mark.torture

FLUX = "black-forest-labs/flux-schnell"
HTTP_TIMEOUT = 0.5
STALL_SECONDS = 1.0  # longer than HTTP_TIMEOUT: the worker gives up on the upload
BUCKET = "generated-images"


class FlakyUploads:
    """Uploads (POST/PUT under /object/) fail with Storage's 503 body, or stall: held
    STALL_SECONDS, then stored and answered (long after the client gave up)."""

    def __init__(
        self, app: ASGIApp, *, error_rate: float, stall_rate: float, seed: int = 5
    ) -> None:
        self.app = app
        self.error_rate = error_rate
        self.stall_rate = stall_rate
        self.rng = random.Random(seed)
        self.uploads = self.errors = self.stalls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_upload = (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT")
            and "/object/" in scope["path"]
        )
        if not is_upload:
            await self.app(scope, receive, send)
            return
        self.uploads += 1
        roll = self.rng.random()
        if roll < self.error_rate:
            self.errors += 1
            await _drain(receive)
            body = {"statusCode": "503", "error": "Service Unavailable", "message": "(injected)"}
            await _answer(send, 503, body)
        elif roll < self.error_rate + self.stall_rate:
            self.stalls += 1
            await asyncio.sleep(STALL_SECONDS)
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def figures(self) -> dict[str, int]:
        return {"uploads": self.uploads, "answered_503": self.errors, "stalled": self.stalls}


async def _drain(receive: Receive) -> None:
    message: Message = {"more_body": True}
    while message.get("more_body") and message.get("type") != "http.disconnect":
        message = await receive()


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    content = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def stack_with(
    database_url: str, tmp_path: Path, error_rate: float, stall_rate: float
) -> tuple[contextlib.AbstractContextManager[Stack], list[FlakyUploads]]:
    made: list[FlakyUploads] = []

    def wrap(app: ASGIApp) -> ASGIApp:
        made.append(FlakyUploads(app, error_rate=error_rate, stall_rate=stall_rate))
        return made[-1]

    return run_stack(database_url, tmp_path / "storage", storage_middleware=wrap), made


def worker_settings(stack: Stack, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "http_timeout_seconds": HTTP_TIMEOUT,
        "replicate_wait_seconds": 0,
        "job_timeout_seconds": 20,
        "poll_interval_seconds": 0.2,
        "max_parallel_jobs": 20,
    }
    return stack.settings(**(values | overrides))


def assert_files_of_completed(conn: psycopg.Connection[Any], stack: Stack) -> int:
    """Every completed generation has its images row and, in the store, its whole file."""
    rows = conn.execute(
        "select g.id, g.status, i.storage_path, i.file_size, i.format"
        " from image_generations g left join images i on i.generation_id = g.id"
        " where g.status = 'completed'"
    ).fetchall()
    for row in rows:
        assert row["storage_path"], f"completed without an images row: {row['id']}"
        stored = stack.storage_root / "objects" / BUCKET / row["storage_path"]
        assert stored.is_file(), f"completed without its file: {stored}"
        content = stored.read_bytes()
        assert len(content) == row["file_size"], row
        with Image.open(io.BytesIO(content)) as picture:
            assert picture.format.lower() == row["format"]
    return len(rows)


async def test_flaky_uploads_are_retried_and_complete(
    conn: psycopg.Connection[Any],
    database_url: str,
    tmp_path: Path,
    torture_report: TortureReport,
) -> None:
    """Half the uploads fail: 30 % answered 503, 20 % stalled past our timeout."""
    count = scale(12, 150)
    running, made = stack_with(database_url, tmp_path, error_rate=0.3, stall_rate=0.2)
    with running as stack:
        ids = spread(conn, count)
        started = time.monotonic()
        async with backoff_skipped(database_url, enabled=not FULL):
            rows = await run_worker_until(worker_settings(stack), database_url, ids, timeout=60)
        seconds = round(time.monotonic() - started, 2)
        statuses = [row["status"] for row in rows.values()]
        with_files = assert_files_of_completed(conn, stack)
        torture_report.record(
            "storage: 30 % 503 + 20 % stalled uploads",
            "ok" if set(statuses) == {"completed"} else "FAILED",
            generations=count,
            seconds=seconds,
            completed=statuses.count("completed"),
            with_file=with_files,
            **made[0].figures(),
        )
        assert unfinished(conn, ids) == {"generations": 0, "jobs": 0}
        assert set(statuses) == {"completed"}, sorted(
            {str(row["error_message"]) for row in rows.values()}
        )
        assert with_files == count


async def test_storage_down_fails_clearly_and_never_completes_without_a_file(
    conn: psycopg.Connection[Any],
    database_url: str,
    tmp_path: Path,
    torture_report: TortureReport,
) -> None:
    count = scale(3, 20)
    running, made = stack_with(database_url, tmp_path, error_rate=1.0, stall_rate=0.0)
    with running as stack:
        ids: list[uuid.UUID] = spread(conn, count)
        started = time.monotonic()
        async with backoff_skipped(database_url, enabled=not FULL):
            rows = await run_worker_until(worker_settings(stack), database_url, ids, timeout=60)
        messages = sorted({str(row["error_message"]) for row in rows.values()})
        torture_report.record(
            "storage: every upload 503",
            "ok" if {row["status"] for row in rows.values()} == {"failed"} else "FAILED",
            generations=count,
            seconds=round(time.monotonic() - started, 2),
            message=" | ".join(messages),
            **made[0].figures(),
        )
        assert unfinished(conn, ids) == {"generations": 0, "jobs": 0}
        assert {row["status"] for row in rows.values()} == {"failed"}
        for message in messages:
            assert_readable(message)
        assert assert_files_of_completed(conn, stack) == 0
        assert not list((stack.storage_root / "objects").rglob("*.webp"))
