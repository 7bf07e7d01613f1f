"""Helpers of the fault tests (provider, storage): a server that accepts connections and
never answers, skipping the queue's retry backoff in quick runs, and what a message a
user can read looks like."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg

from tests.conftest import make_user
from tests.support.generations import start_generation

# An exception class name (ReadTimeout, RemoteProtocolError) is not for users.
_CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)+\b")


def assert_readable(message: str | None) -> None:
    """Short plain prose: no HTML, no exception class names, no traceback."""
    assert message, "no error message"
    assert len(message) <= 300, message
    assert "<" not in message and "Traceback" not in message, message
    assert not _CLASS_NAME.search(message), message


@contextlib.contextmanager
def hung_server() -> Iterator[str]:
    """A loopback address that accepts TCP connections, reads nothing and never answers."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = listener.accept()
                held.append(connection)

    thread = threading.Thread(target=accept, name="hung-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


@contextlib.asynccontextmanager
async def backoff_skipped(database_url: str, enabled: bool = True) -> AsyncIterator[None]:
    """While inside, a job waiting out its retry backoff is due at once (and the workers
    are woken): quick runs test what the retries do, not how long they wait."""
    if not enabled:
        yield
        return

    async def pull_forward() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            while True:
                cursor = await conn.execute(
                    "update job_queue set scheduled_at = now()"
                    " where status = 'pending' and scheduled_at > now()"
                )
                if cursor.rowcount:
                    await conn.execute("select pg_notify('job_queue', 'backoff skipped')")
                await asyncio.sleep(0.1)

    task = asyncio.create_task(pull_forward())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def unfinished(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> dict[str, Any]:
    """Generations not in a terminal status and jobs still queued or running."""
    generations = conn.execute(
        "select count(*) from image_generations where id = any(%s) and imagegen.is_active(status)",
        (ids,),
    ).fetchone()
    jobs = conn.execute(
        "select count(*) from job_queue where status in ('pending', 'processing')"
    ).fetchone()
    assert generations is not None and jobs is not None
    count = "count"
    return {
        "generations": generations[count] if isinstance(generations, dict) else generations[0],
        "jobs": jobs[count] if isinstance(jobs, dict) else jobs[0],
    }


def spread(
    conn: psycopg.Connection[Any],
    count: int,
    per_user: int = 25,
    model_id: str = "black-forest-labs/flux-schnell",
) -> list[uuid.UUID]:
    """`count` generations, `per_user` to a user: well inside the per-user limit."""
    users = [make_user(conn) for _ in range(-(-count // per_user))]
    return [start_generation(conn, users[i // per_user], model_id) for i in range(count)]
