"""The provider's shared create limit in SQL (sql/0111_provider_limits.sql): the token
bucket, turns, pauses and the operators' view, on the real cluster."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import make_user

Conn = psycopg.Connection[dict[str, Any]]


def take(conn: Conn, job_id: uuid.UUID | None = None, provider: str = "replicate") -> float:
    row = conn.execute("select take_provider_token(%s, %s) as wait", (provider, job_id)).fetchone()
    assert row is not None
    return float(row["wait"])


def configure(conn: Conn, per_minute: int, burst: float) -> None:
    """The limit, with a full bucket."""
    conn.execute("select configure_provider_limit('replicate', %s, %s)", (per_minute, burst))
    conn.execute("update imagegen.provider_limits set tokens = burst, refilled_at = now()")


def test_replicate_has_a_row_of_600_a_minute(conn: Conn) -> None:
    row = conn.execute("select * from provider_limit_status").fetchone()
    assert row is not None
    assert (row["provider"], row["creates_per_minute"]) == ("replicate", 600)
    assert row["paused_until"] is None and row["turns_waiting"] == 0


def test_the_burst_is_granted_then_callers_are_told_to_wait(conn: Conn) -> None:
    configure(conn, 1, 3)  # one a minute: nothing refills while the test runs
    assert [take(conn) for _ in range(3)] == [0, 0, 0]
    wait = take(conn)  # no job: told how long, nothing taken ahead
    assert 55 < wait <= 60
    assert 55 < take(conn) <= 60


def test_a_refused_job_gets_a_turn_and_each_turn_its_own_time(conn: Conn) -> None:
    configure(conn, 1, 1)
    assert take(conn, uuid.uuid4()) == 0
    first, second = uuid.uuid4(), uuid.uuid4()
    wait_first, wait_second = take(conn, first), take(conn, second)
    assert 55 < wait_first <= 60
    assert 115 < wait_second <= 120  # one more interval: the next token, not the same one
    # Back before its turn: the same turn, not a new one at the back.
    assert wait_first - 1 < take(conn, first) <= wait_first
    status = conn.execute("select turns_waiting from provider_limit_status").fetchone()
    assert status == {"turns_waiting": 2}
    # At its turn it is granted at once: its token was taken when the turn was given.
    conn.execute(
        "update imagegen.provider_turns set turn_at = clock_timestamp() where job_id = %s",
        (first,),
    )
    assert take(conn, first) == 0
    assert conn.execute("select count(*) as n from imagegen.provider_turns").fetchone() == {"n": 1}


def test_a_pause_holds_every_caller_and_moves_the_turns_back(conn: Conn) -> None:
    configure(conn, 600, 5)
    waiting = uuid.uuid4()
    for _ in range(5):
        take(conn)
    before = take(conn, waiting)
    assert 0 < before <= 0.1
    assert conn.execute("select pause_provider('replicate', 30) as left").fetchone() == {"left": 30}
    assert 29 < take(conn) <= 30.2  # a fresh caller waits out the pause
    # The turn handed out before the pause falls after it, not at its end with the rest.
    assert 29 < take(conn, waiting) <= 30 + before + 0.01
    # A shorter pause does not shorten it.
    left = conn.execute("select pause_provider('replicate', 5) as left").fetchone()
    assert left is not None and 29 < left["left"] <= 30
    status = conn.execute("select paused_until > now() as paused from provider_limit_status")
    assert status.fetchone() == {"paused": True}


def test_no_limit_still_holds_a_pause(conn: Conn) -> None:
    configure(conn, 0, 1)
    assert [take(conn, uuid.uuid4()) for _ in range(50)] == [0] * 50
    conn.execute("select pause_provider('replicate', 10)")
    assert 9 < take(conn, uuid.uuid4()) <= 10


def test_an_unknown_provider_is_unlimited(conn: Conn) -> None:
    assert take(conn, uuid.uuid4(), provider="elsewhere") == 0


def test_bad_settings_are_invalid_input(conn: Conn) -> None:
    for sql in (
        "select configure_provider_limit('replicate', -1)",
        "select configure_provider_limit('replicate', 10, 0.5)",
        "select pause_provider('replicate', -1)",
    ):
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(sql)
        assert refused.value.sqlstate == "22023"


def test_concurrent_callers_never_take_more_than_the_bucket(conn: Conn, database_url: str) -> None:
    """Eight sessions racing for a bucket of 20 (nothing refills meanwhile): exactly 20
    grants, and every other caller a turn of its own."""
    configure(conn, 1, 20)
    granted: list[int] = []
    turns: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as c:
            for _ in range(10):
                wait = take(c, uuid.uuid4())
                with lock:
                    (granted.append(1) if wait == 0 else turns.append(wait))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(granted) == 20
    assert len(turns) == 60
    rounded = sorted(round(wait / 60) for wait in turns)
    assert rounded == list(range(1, 61))  # one turn a minute, none shared


def test_the_limit_functions_and_view_are_for_the_service_only(conn: Conn) -> None:
    for signature in (
        "public.take_provider_token(text, uuid)",
        "public.pause_provider(text, double precision)",
        "public.configure_provider_limit(text, integer, numeric)",
    ):
        rows = conn.execute(
            "select has_function_privilege(r, %s, 'execute') as can"
            " from unnest(array['anon', 'authenticated', 'service_role']) r",
            (signature,),
        ).fetchall()
        assert [row["can"] for row in rows] == [False, False, True], signature
    rows = conn.execute(
        "select has_table_privilege(r, 'public.provider_limit_status', 'select') as can"
        " from unnest(array['anon', 'authenticated', 'service_role']) r"
    ).fetchall()
    assert [row["can"] for row in rows] == [False, False, True]
    with conn.transaction(force_rollback=True):
        conn.execute("set local role service_role")
        assert conn.execute("select count(*) as n from provider_limit_status").fetchone() == {
            "n": 1
        }


def test_a_429_withdraws_only_the_attempts_own_intent(conn: Conn) -> None:
    """sql/0112: the note made since the claim goes; an earlier attempt's is kept."""
    user = make_user(conn)
    conn.execute(
        "select * from start_generation(%s, 'a fox', 'black-forest-labs/flux-schnell')", (user,)
    )
    job = conn.execute("select * from claim_jobs('w1', 1, null, 60)").fetchone()
    assert job is not None
    noted = conn.execute("select request_prediction(%s, 'w1') as at", (job["id"],)).fetchone()
    assert noted is not None
    withdraw = "select withdraw_prediction_request(%s, %s, %s) as done"
    assert conn.execute(withdraw, (job["id"], "w2", noted["at"])).fetchone() == {"done": False}
    assert conn.execute(withdraw, (job["id"], "w1", noted["at"])).fetchone() == {"done": True}
    earlier = conn.execute(
        "update image_generations set prediction_requested_at = now() - interval '1 hour'"
        " returning prediction_requested_at as at"
    ).fetchone()
    assert earlier is not None
    assert conn.execute(withdraw, (job["id"], "w1", earlier["at"])).fetchone() == {"done": False}
    kept = conn.execute("select prediction_requested_at as at from image_generations").fetchone()
    assert kept == {"at": earlier["at"]}
