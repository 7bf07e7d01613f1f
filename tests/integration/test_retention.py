"""The cleanup-storage job (worker/jobs/cleanup_storage.py, sql/0150_storage_cleanup.sql)
end to end: the real runner and its claim, the Storage stand-in over real HTTP listed and
deleted through storage3, the verdicts in SQL."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.conftest import make_user
from tests.support.stack import Stack, run_stack
from worker.service import open_worker
from worker.storage import SupabaseStorage

BUCKET = "generated-images"


@dataclass
class Files:
    """The bucket as the test sees it: upload, age and check objects."""

    stack: Stack

    def disk(self, path: str) -> Path:
        return self.stack.storage_root / "objects" / BUCKET / path

    async def put(self, path: str, age_hours: float) -> str:
        storage = SupabaseStorage(self.stack.url, self.stack.service_role_key, BUCKET, timeout=10)
        try:
            await storage.upload(path, io.BytesIO(b"RIFF....WEBP"), "image/webp")
        finally:
            await storage.aclose()
        stamp = time.time() - age_hours * 3600
        os.utime(self.disk(path), (stamp, stamp))  # the store lists the file's mtime
        return path

    def exists(self, path: str) -> bool:
        return self.disk(path).is_file()


class ListHook:
    """Storage middleware: runs `action` when a list request for `prefix` arrives, before
    Storage answers it (a row written while the job is still listing)."""

    def __init__(self) -> None:
        self.prefix: str | None = None
        self.action: Callable[[], None] = lambda: None
        self.ran = 0

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or "/object/list/" not in scope["path"]:
                await app(scope, receive, send)
                return
            chunks: list[bytes] = []

            async def replay() -> Message:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    body = json.loads(b"".join(chunks) or b"{}")
                    if self.prefix is not None and body.get("prefix") == self.prefix:
                        self.ran += 1
                        self.action()
                return message

            await app(scope, replay, send)

        return wrapped


@pytest.fixture
def hook() -> ListHook:
    return ListHook()


@pytest.fixture
def stack(database_url: str, tmp_path: Path, hook: ListHook) -> Iterator[Stack]:
    with run_stack(database_url, tmp_path / "storage", storage_middleware=hook) as running:
        yield running


@pytest.fixture
def files(stack: Stack) -> Files:
    return Files(stack)


def generation(
    conn: psycopg.Connection[Any], user_id: uuid.UUID, status: str = "completed"
) -> uuid.UUID:
    row = conn.execute(
        "insert into image_generations (user_id, prompt, model, status)"
        " values (%s, 'retention test', 'flux-schnell', %s) returning id",
        (user_id, status),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"] if isinstance(row, dict) else row[0]))


def image_row(
    conn: psycopg.Connection[Any],
    stack: Stack,
    user_id: uuid.UUID,
    storage_path: str,
    public_path: str | None = None,
) -> None:
    """An images row pointing at `storage_path` (and its public URL at `public_path`)."""
    gen = generation(conn, user_id)
    conn.execute(
        "insert into images (generation_id, user_id, filename, storage_path, public_url)"
        " values (%s, %s, %s, %s, %s)",
        (
            gen,
            user_id,
            storage_path.rsplit("/", 1)[-1],
            storage_path,
            f"{stack.url}/storage/v1/object/public/{BUCKET}/{public_path or storage_path}",
        ),
    )


async def run_cleanup(stack: Stack, gateway: str = "postgres", **settings: Any) -> dict[str, Any]:
    """Enqueue the job as the nightly cron does and let a real worker run it: its result."""
    async with open_worker(stack.settings(gateway, **settings)) as worker:
        job_id = await worker.db.enqueue_storage_cleanup()
        claimed, errors = await worker.runner.run_once(wait=True)
        assert (claimed, errors) == (1, 0)
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute(
            "select status, result from job_queue where id = %s", (job_id,)
        ).fetchone()
    assert row is not None and row[0] == "completed", row
    result: dict[str, Any] = row[1]
    return result


async def test_orphans_go_and_nothing_a_row_points_at_is_deleted(
    conn: psycopg.Connection[Any], stack: Stack, files: Files
) -> None:
    alice, bob = make_user(conn), make_user(conn)
    kept = [
        await files.put(f"{alice}/kept.webp", 72),  # storage_path of a row
        await files.put(f"{alice}/renamed.webp", 72),  # only the row's public_url
        await files.put(f"{bob}/shared.webp", 72),  # public_url percent-encoded
    ]
    image_row(conn, stack, alice, kept[0])
    image_row(conn, stack, alice, f"{alice}/old-name.webp", public_path=f"{alice}/renamed.webp")
    image_row(conn, stack, bob, f"{bob}/other.webp", public_path=f"{bob}/%73hared.webp")
    # Named after generations that could still write them: one in progress, one just retried.
    downloading = generation(conn, alice, "downloading")
    retried = generation(conn, bob, "failed")
    in_use = [
        await files.put(f"{alice}/{downloading}.webp", 72),
        await files.put(f"{bob}/{retried}.png", 72),
    ]
    orphans = [
        await files.put(f"{alice}/{uuid.uuid4()}.webp", 72),  # its generation was deleted
        await files.put(f"{bob}/stray.png", 30),
        await files.put("at-the-root.txt", 48),
        await files.put(f"{bob}/deeper/nested.webp", 100),
    ]
    recent = await files.put(f"{bob}/{uuid.uuid4()}.webp", 2)
    # Rows whose object is gone: in a listed folder, and in a folder with nothing left.
    carol = make_user(conn)
    image_row(conn, stack, alice, f"{alice}/gone.webp")
    image_row(conn, stack, carol, f"{carol}/gone too.webp")
    conn.execute("update images set created_at = now() - interval '1 hour'")

    result = await run_cleanup(stack, storage_cleanup_delete=True)

    for path in [*kept, *in_use, recent]:
        assert files.exists(path), path
    for path in orphans:
        assert not files.exists(path), path
    assert result | {"orphan_sample": sorted(result["orphan_sample"])} == result | {
        "dry_run": False,
        "grace_hours": 24.0,
        "objects": 10,
        "referenced": 3,
        "in_use": 2,
        "recent": 1,
        "orphans": 4,
        "orphan_sample": sorted(orphans),
        "deleted": 4,
        "spared": 0,
        "deferred": 0,
    }
    assert result["missing_objects"] == 4  # the two rows pointing at old-name and other too
    assert {f"{alice}/gone.webp", f"{carol}/gone too.webp"} <= set(result["missing_sample"])
    # The images rows are reported, never deleted.
    assert conn.execute("select count(*) as n from images").fetchone() == {"n": 5}


@pytest.mark.parametrize("gateway", ["postgres", "postgrest"])
async def test_a_dry_run_deletes_nothing(
    conn: psycopg.Connection[Any], stack: Stack, files: Files, gateway: str
) -> None:
    user = make_user(conn)
    orphans = [await files.put(f"{user}/{n}.webp", 48) for n in range(3)]
    referenced = await files.put(f"{user}/kept.webp", 48)
    image_row(conn, stack, user, referenced)

    result = await run_cleanup(stack, gateway)  # STORAGE_CLEANUP_DELETE unset: dry run

    assert all(files.exists(path) for path in [*orphans, referenced])
    assert result["dry_run"] is True
    assert (result["orphans"], result["deleted"], result["referenced"]) == (3, 0, 1)
    assert sorted(result["orphan_sample"]) == sorted(orphans)


async def test_a_row_written_after_the_listing_keeps_its_file(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack, files: Files, hook: ListHook
) -> None:
    first, second = sorted([make_user(conn), make_user(conn)], key=str)
    late = await files.put(f"{first}/late.webp", 72)
    orphan = await files.put(f"{second}/orphan.webp", 72)

    def write_the_row() -> None:
        with psycopg.connect(database_url, autocommit=True) as other:
            image_row(other, stack, first, late)

    # The folders are listed in order: when the second is listed, the first's file has
    # been judged an orphan already; the row arrives before anything is deleted.
    hook.prefix, hook.action = str(second), write_the_row

    result = await run_cleanup(stack, storage_cleanup_delete=True)

    assert hook.ran == 1
    assert files.exists(late)
    assert not files.exists(orphan)
    assert (result["orphans"], result["spared"], result["deleted"]) == (2, 1, 1)


@pytest.mark.parametrize(
    ("age_hours", "grace_hours", "deleted"),
    [(23, 24, False), (25, 24, True), (47, 48, False), (49, 48, True)],
)
async def test_the_grace_period_holds(
    conn: psycopg.Connection[Any],
    stack: Stack,
    files: Files,
    age_hours: float,
    grace_hours: float,
    deleted: bool,
) -> None:
    path = await files.put(f"{make_user(conn)}/unreferenced.webp", age_hours)

    result = await run_cleanup(
        stack, storage_cleanup_delete=True, storage_cleanup_grace_hours=grace_hours
    )

    assert files.exists(path) is not deleted
    assert result["deleted"] == int(deleted)
    assert result["recent"] == int(not deleted)


async def test_deletions_stop_at_the_cap(
    conn: psycopg.Connection[Any], stack: Stack, files: Files
) -> None:
    user = make_user(conn)
    paths = [await files.put(f"{user}/{n}.webp", 48) for n in range(5)]

    result = await run_cleanup(stack, storage_cleanup_delete=True, storage_cleanup_max_deletes=2)

    assert sum(files.exists(path) for path in paths) == 3
    assert (result["orphans"], result["deleted"], result["deferred"]) == (5, 2, 3)
