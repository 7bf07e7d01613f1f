"""Completion events (sql/0085): one pgmq message per terminal change of a generation or
a batch, in the change's own transaction; read with pgmq-py and with `imagegen events`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pgmq import PGMQueue
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import signed_in
from tests.support.cli import run_cli
from tests.support.generations import SCHNELL, finish, start
from worker.events import QUEUE, follow_events

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def queue(database_url: str) -> Iterator[PGMQueue]:
    pool = ConnectionPool(database_url, min_size=1, max_size=2, open=True)
    try:
        yield PGMQueue(pool=pool, init_extension=False)
    finally:
        pool.close()


def drain(queue: PGMQueue) -> list[dict[str, Any]]:
    """Every visible event, read with a visibility timeout and archived once read."""
    events = []
    while messages := queue.read_batch(QUEUE, vt=30, batch_size=50):
        for message in messages:
            events.append(message.message)
            assert queue.archive(QUEUE, message.msg_id)
    return events


def cancel(conn: Conn, user_id: uuid.UUID, generation_id: uuid.UUID) -> None:
    """The apps' cancel: a table write as the signed-in owner (docs/CLIENTS.md)."""
    with signed_in(conn, user_id):
        conn.execute(
            "update image_generations set status = 'failed', error_message = 'stop' where id = %s",
            (generation_id,),
        )


def test_each_terminal_change_publishes_one_event(
    conn: Conn, user_id: uuid.UUID, queue: PGMQueue
) -> None:
    done, cancelled = start(conn, user_id), start(conn, user_id)
    finish(conn, done["generation_id"], user_id, user_id=user_id)
    cancel(conn, user_id, cancelled["generation_id"])
    # Changes that are not terminal, or not a change of status, publish nothing.
    conn.execute(
        "update image_generations set error_message = 'reported' where id = %s",
        (cancelled["generation_id"],),
    )
    start(conn, user_id)

    events = drain(queue)
    assert sorted((e["event"], e["generation_id"]) for e in events) == sorted(
        [
            ("generation.completed", str(done["generation_id"])),
            ("generation.failed", str(cancelled["generation_id"])),
        ]
    )
    failed = next(e for e in events if e["event"] == "generation.failed")
    assert failed["user_id"] == str(user_id)
    assert (failed["status"], failed["error_message"]) == ("failed", "stop")
    assert drain(queue) == []  # archived: never delivered twice


def test_a_rolled_back_change_publishes_nothing(
    conn: Conn, user_id: uuid.UUID, queue: PGMQueue
) -> None:
    started = start(conn, user_id)
    with pytest.raises(RuntimeError), conn.transaction():
        conn.execute(
            "update image_generations set status = 'failed' where id = %s",
            (started["generation_id"],),
        )
        raise RuntimeError("the writer gives up")
    assert conn.execute(
        "select status from image_generations where id = %s", (started["generation_id"],)
    ).fetchone() == {"status": "queued"}
    assert drain(queue) == []


def test_a_retried_generation_publishes_again_when_it_ends_again(
    conn: Conn, user_id: uuid.UUID, queue: PGMQueue
) -> None:
    started = start(conn, user_id)
    cancel(conn, user_id, started["generation_id"])
    with signed_in(conn, user_id):  # the batch retry: failed -> pending
        conn.execute(
            "update image_generations set status = 'pending', error_message = null,"
            " retry_count = 0 where id = %s",
            (started["generation_id"],),
        )
    cancel(conn, user_id, started["generation_id"])
    assert [e["event"] for e in drain(queue)] == ["generation.failed", "generation.failed"]


def test_an_ended_batch_publishes_after_its_items(
    conn: Conn, user_id: uuid.UUID, queue: PGMQueue
) -> None:
    request = {
        "prompts": [{"text": "a fox"}, {"text": "a heron"}],
        "shared_settings": {"model_id": SCHNELL},
    }
    row = conn.execute("select start_batch(%s, %s) as batch", (user_id, Jsonb(request))).fetchone()
    batch = row["batch"]
    first, second = (uuid.UUID(g["id"]) for g in batch["generations"])
    finish(conn, first, user_id, user_id=user_id)
    cancel(conn, user_id, second)

    events = drain(queue)
    assert [e["event"] for e in events] == [
        "generation.completed",
        "generation.failed",
        "batch.partial",
    ]
    ended = events[-1]
    assert ended["batch_id"] == batch["id"] and ended["user_id"] == str(user_id)
    assert (ended["total_count"], ended["completed_count"], ended["failed_count"]) == (2, 1, 1)
    assert {e.get("batch_id") for e in events} == {batch["id"]}


def test_follow_events_hands_over_each_event_once(
    conn: Conn, database_url: str, user_id: uuid.UUID, queue: PGMQueue
) -> None:
    started = [start(conn, user_id) for _ in range(3)]
    for item in started:
        cancel(conn, user_id, item["generation_id"])
    seen: list[dict[str, Any]] = []
    assert follow_events(database_url, seen.append, batch_size=2, once=True) == 3
    assert {e["generation_id"] for e in seen} == {str(s["generation_id"]) for s in started}
    assert all(isinstance(e["msg_id"], int) and e["enqueued_at"] for e in seen)
    assert follow_events(database_url, seen.append, once=True) == 0
    assert drain(queue) == []


def test_imagegen_events_prints_one_json_line_per_event(
    conn: Conn, database_url: str, user_id: uuid.UUID, queue: PGMQueue
) -> None:
    done = start(conn, user_id)
    finish(conn, done["generation_id"], user_id, user_id=user_id)

    result = run_cli("events", "--once", env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    event = json.loads(line)
    assert event["event"] == "generation.completed"
    assert event["generation_id"] == str(done["generation_id"])
    # Printed, then archived: a second reader finds nothing, the archive has it.
    assert drain(queue) == []
    archived = conn.execute(f"select message from pgmq.a_{QUEUE}").fetchall()
    assert [a["message"]["generation_id"] for a in archived] == [str(done["generation_id"])]


def test_imagegen_events_refuses_a_database_it_cannot_reach() -> None:
    result = run_cli("events", "--once", "--database-url", "postgresql://127.0.0.1:1/none")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot read the events")
