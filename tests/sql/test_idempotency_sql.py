"""Idempotent submits in SQL (sql/0110_idempotent_requests.sql): start_once on the real
cluster."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.conftest import make_user
from tests.support.generations import SCHNELL

Conn = psycopg.Connection[dict[str, Any]]

REQUEST = {"prompt": "a lighthouse", "model_id": SCHNELL, "width": 1024, "height": 1024}
BATCH = {
    "prompts": [{"text": "a fox"}, {"text": "a hare"}],
    "shared_settings": {"model_id": SCHNELL},
}


def start_once(
    conn: Conn,
    user: uuid.UUID,
    key: str,
    request: dict[str, Any],
    endpoint: str = "start-generation",
) -> dict[str, Any]:
    row = conn.execute(
        "select * from start_once(%s, %s, %s, %s)", (user, key, endpoint, Jsonb(request))
    ).fetchone()
    assert row is not None
    return row


def counts(conn: Conn) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from image_generations) as g, (select count(*) from job_queue) as j,"
        " (select count(*) from imagegen.idempotent_requests) as k"
    ).fetchone()
    assert row is not None
    return row["g"], row["j"], row["k"]


def test_the_same_key_answers_the_first_answer_and_writes_nothing(conn: Conn) -> None:
    user = make_user(conn)
    first = start_once(conn, user, "key-1", REQUEST)
    assert first["replayed"] is False
    assert set(first["response"]) == {"generation_id", "job_id"}
    before = counts(conn)
    # The same request in another key order and spelling reads the same.
    again = start_once(conn, user, "key-1", dict(reversed(list(REQUEST.items()))))
    assert again == {"response": first["response"], "replayed": True}
    assert counts(conn) == before == (1, 1, 1)


def test_the_same_key_with_another_body_is_refused_with_pt422(conn: Conn) -> None:
    user = make_user(conn)
    start_once(conn, user, "key-1", REQUEST)
    with pytest.raises(psycopg.Error) as refused:
        start_once(conn, user, "key-1", REQUEST | {"prompt": "a different lighthouse"})
    assert refused.value.sqlstate == "PT422"
    # On the other endpoint, the same key is another request too.
    with pytest.raises(psycopg.Error) as other:
        start_once(conn, user, "key-1", BATCH, endpoint="batch-generate")
    assert other.value.sqlstate == "PT422"
    assert counts(conn) == (1, 1, 1)


def test_keys_are_per_user(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    a = start_once(conn, alice, "shared-key", REQUEST)
    b = start_once(conn, bob, "shared-key", REQUEST | {"prompt": "bob's"})
    assert not a["replayed"] and not b["replayed"]
    assert a["response"] != b["response"]
    assert counts(conn)[0] == 2


def test_a_key_older_than_24_hours_starts_anew_and_old_keys_are_cleaned(conn: Conn) -> None:
    user = make_user(conn)
    first = start_once(conn, user, "old", REQUEST)
    for n in range(5):
        start_once(conn, user, f"other-{n}", REQUEST)
    conn.execute(
        "update imagegen.idempotent_requests set created_at = now() - interval '24 hours 1 second'"
    )
    # Another body is no conflict any more: the key is forgotten.
    fresh = start_once(conn, user, "old", REQUEST | {"prompt": "a new day"})
    assert fresh["replayed"] is False and fresh["response"] != first["response"]
    keys = conn.execute("select key from imagegen.idempotent_requests").fetchall()
    assert [row["key"] for row in keys] == ["old"]  # the five expired ones went with it


def test_a_batch_is_started_once(conn: Conn) -> None:
    user = make_user(conn)
    first = start_once(conn, user, "batch-1", BATCH, endpoint="batch-generate")
    again = start_once(conn, user, "batch-1", BATCH, endpoint="batch-generate")
    assert first["response"]["total_count"] == 2 and again["replayed"] is True
    assert again["response"] == first["response"]
    assert counts(conn) == (2, 2, 1)


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "é", "line\nbreak"])
def test_a_malformed_key_is_invalid_input(conn: Conn, key: str) -> None:
    user = make_user(conn)
    with pytest.raises(psycopg.Error) as refused:
        start_once(conn, user, key, REQUEST)
    assert refused.value.sqlstate == "22023"
    assert "Idempotency-Key" in str(refused.value)
    assert counts(conn) == (0, 0, 0)


def test_a_refused_start_keeps_no_key(conn: Conn) -> None:
    """A start that fails (here: an unknown model) rolls its key back: the key may be
    used again for a request that works."""
    user = make_user(conn)
    with pytest.raises(psycopg.Error):
        start_once(conn, user, "key-1", REQUEST | {"model_id": "no/such-model"})
    assert counts(conn) == (0, 0, 0)
    assert start_once(conn, user, "key-1", REQUEST)["replayed"] is False


def wait_for_a_lock_waiter(conn: Conn) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute(
            "select count(*) as n from pg_stat_activity"
            " where wait_event_type = 'Lock' and datname = current_database()"
        ).fetchone()
        if row and row["n"]:
            return
        time.sleep(0.02)
    raise AssertionError("the second request never waited on the first one's key")


def test_concurrent_requests_with_one_key_start_one_generation(
    conn: Conn, database_url: str
) -> None:
    """The second waits on the first's uncommitted key, then answers its answer."""
    user = make_user(conn)
    answers: list[dict[str, Any]] = []
    with psycopg.connect(database_url, row_factory=dict_row) as first:
        held = start_once(first, user, "race", REQUEST)  # its transaction still open

        def second() -> None:
            with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as c:
                answers.append(start_once(c, user, "race", REQUEST))

        thread = threading.Thread(target=second)
        thread.start()
        wait_for_a_lock_waiter(conn)  # on the key, not starting a second generation
        first.commit()
        thread.join(10)
    assert answers == [{"response": held["response"], "replayed": True}]
    assert counts(conn) == (1, 1, 1)


def test_start_once_is_for_the_service_only(conn: Conn) -> None:
    rows = conn.execute(
        "select has_function_privilege(r, 'public.start_once(uuid, text, text, jsonb)', 'execute')"
        " as can from unnest(array['anon', 'authenticated', 'service_role']) r"
    ).fetchall()
    assert [row["can"] for row in rows] == [False, False, True]
