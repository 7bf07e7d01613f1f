"""Completion events: a consumer of the pgmq queue `generation_events` (sql/0085).

Each terminal change of a generation or a batch is one message, published by a trigger
in the change's own transaction. A consumer reads messages with a visibility timeout
(hidden from other readers meanwhile), handles each, then archives it (kept in
`pgmq.a_generation_events`, out of the queue). A consumer that dies before archiving sees
the message again once its timeout has passed: delivery is at least once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from pgmq import Message, PGMQueue
from psycopg_pool import ConnectionPool

QUEUE = "generation_events"
CONNECT_TIMEOUT_SECONDS = 10


def event_record(message: Message) -> dict[str, Any]:
    """What a consumer prints or forwards: the event, with its queue id and time."""
    return {
        "msg_id": message.msg_id,
        "enqueued_at": message.enqueued_at.isoformat(),
        "read_ct": message.read_ct,
        **message.message,
    }


def follow_events(
    database_url: str,
    handle: Callable[[dict[str, Any]], None],
    *,
    visibility_timeout: int = 30,
    batch_size: int = 10,
    poll_seconds: int = 5,
    once: bool = False,
) -> int:
    """Hand every event to `handle`, archiving each after `handle` returned; with `once`,
    stop when the queue has nothing visible left. Returns how many were handled."""
    # One plain connection first: a wrong URL fails at once with the server's reason,
    # where the pool would retry quietly until its timeout.
    psycopg.connect(database_url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
    pool = ConnectionPool(
        database_url,
        min_size=1,
        max_size=1,
        kwargs={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        open=True,
    )
    # init_extension=False: pgmq is installed by the migrations, never by a reader.
    queue = PGMQueue(pool=pool, init_extension=False)
    handled = 0
    try:
        while True:
            if once:
                messages = queue.read_batch(QUEUE, vt=visibility_timeout, batch_size=batch_size)
                if not messages:
                    return handled
            else:  # waits in the database (up to poll_seconds) for the next message
                messages = queue.read_with_poll(
                    QUEUE, vt=visibility_timeout, qty=batch_size, max_poll_seconds=poll_seconds
                )
            for message in messages:
                handle(event_record(message))
                queue.archive(QUEUE, message.msg_id)
                handled += 1
    finally:
        pool.close()
