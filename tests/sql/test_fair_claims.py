"""Fair turns across users (sql/0080_fair_turns.sql): among due jobs of equal priority the
claim interleaves owners, priorities still win, jobs without an owner still run."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.conftest import make_user
from tests.support.old_picture import build_old_picture
from tests.support.queue import defer
from worker.migrate import migrate

Conn = psycopg.Connection[dict[str, Any]]


def enqueue_many(
    conn: Conn, owner: uuid.UUID | None, count: int, *, priority: int = 0, tag: str = ""
) -> None:
    """`count` jobs of one owner, each its own enqueue_job call, as start_batch makes them."""
    conn.execute(
        "select enqueue_job('generate-image', jsonb_build_object('tag', %s::text, 'n', g),"
        " p_priority => %s, p_created_by => %s::uuid) from generate_series(1, %s) g",
        (tag, priority, owner, count),
    )


def claim_owners(conn: Conn, count: int) -> list[Any]:
    """Claims one job at a time, `count` times: whose job each claim took."""
    owners = []
    for _ in range(count):
        row = conn.execute("select created_by, payload from claim_jobs('w', 1)").fetchone()
        assert row is not None, "nothing left to claim"
        owners.append(row["created_by"] or row["payload"].get("tag"))
    return owners


def test_a_single_job_is_claimed_within_the_first_round_after_a_large_batch(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    enqueue_many(conn, alice, 1000)
    enqueue_many(conn, bob, 1)

    # Two owners waiting: a round is two claims.
    assert claim_owners(conn, 2) == [alice, bob]
    assert claim_owners(conn, 3) == [alice] * 3


def test_owners_take_turns_in_the_order_they_came(conn: Conn) -> None:
    alice, bob, carol = make_user(conn), make_user(conn), make_user(conn)
    enqueue_many(conn, alice, 3)
    enqueue_many(conn, bob, 3)
    enqueue_many(conn, carol, 1)

    assert claim_owners(conn, 7) == [alice, bob, carol, alice, bob, alice, bob]


def test_a_newcomer_joins_the_round_being_served_not_the_first(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    enqueue_many(conn, alice, 10)
    assert claim_owners(conn, 5) == [alice] * 5

    # Bob's batch interleaves with the rest of Alice's; it does not jump the five turns
    # Alice already had.
    enqueue_many(conn, bob, 10)
    assert claim_owners(conn, 10) == [alice, bob] * 5
    assert claim_owners(conn, 5) == [bob] * 5


def test_priorities_still_win_over_turns(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    enqueue_many(conn, alice, 3, priority=5)
    enqueue_many(conn, bob, 1)
    enqueue_many(conn, alice, 1, priority=5)

    assert claim_owners(conn, 5) == [alice, alice, alice, alice, bob]


def test_jobs_without_an_owner_still_run_and_join_the_current_round(conn: Conn) -> None:
    alice = make_user(conn)
    enqueue_many(conn, alice, 3)
    enqueue_many(conn, None, 2, tag="system")

    # Each ownerless job is a round of its own: it takes the round being served.
    assert claim_owners(conn, 5) == [alice, "system", "system", alice, alice]


def test_a_payload_user_id_counts_as_the_owner_when_created_by_is_missing(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    for _ in range(3):
        conn.execute(
            "select enqueue_job('generate-image', jsonb_build_object('user_id', %s::text))",
            (alice,),
        )
    enqueue_many(conn, bob, 1)

    rows = [
        conn.execute("select created_by, payload from claim_jobs('w', 1)").fetchone()
        for _ in range(3)
    ]
    owners = [row["created_by"] or uuid.UUID(row["payload"]["user_id"]) for row in rows if row]
    assert owners == [alice, bob, alice]


def test_a_retried_job_keeps_its_turn(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    enqueue_many(conn, alice, 3)
    enqueue_many(conn, bob, 3)
    first = conn.execute("select id from claim_jobs('w', 1)").fetchone()
    assert first is not None
    conn.execute("select fail_job(%s, 'w', 'boom')", (first["id"],))
    conn.execute("update job_queue set scheduled_at = now() where id = %s", (first["id"],))

    # Alice's retry is turn 0 again: it runs before Bob's turn 0 (it came first).
    retried = conn.execute("select id, turn from claim_jobs('w', 1)").fetchone()
    assert retried == {"id": first["id"], "turn": 0}


def rows_read(conn: Conn) -> int:
    """Rows of job_queue this backend has read by index or scan, not yet reported."""
    row = conn.execute(
        "select coalesce(idx_tup_fetch, 0) + seq_tup_read as n"
        " from pg_stat_xact_user_tables where relname = 'job_queue'"
    ).fetchone()
    return int(row["n"]) if row else 0


def test_due_jobs_are_claimed_in_one_order_whether_ready_or_deferred(conn: Conn) -> None:
    alice, bob, carol = make_user(conn), make_user(conn), make_user(conn)
    enqueue_many(conn, alice, 1)
    enqueue_many(conn, bob, 2)
    defer(conn, "now() - interval '1 second'", owner=alice)  # woken: due again, turn 0
    enqueue_many(conn, carol, 1, priority=1)
    defer(conn, "now() - interval '1 second'", owner=carol)  # a download job, due

    assert claim_owners(conn, 4) == [carol, alice, bob, bob]


def test_a_claim_does_not_read_the_jobs_that_wait(conn: Conn) -> None:
    """Thousands of generations waiting on their webhooks sort ahead of a new job; the
    claim reaches it without reading them (it read every one before sql/0160)."""
    alice, bob = make_user(conn), make_user(conn)
    enqueue_many(conn, alice, 2000)
    defer(conn, "now() + interval '10 minutes'", owner=alice)
    enqueue_many(conn, bob, 1)
    conn.execute("analyze job_queue")  # as autovacuum would have by now

    with conn.transaction():
        before = rows_read(conn)
        claimed = conn.execute("select created_by from claim_jobs('w', 5)").fetchall()
        read = rows_read(conn) - before

    assert claimed == [{"created_by": bob}]
    assert read < 10


def test_the_old_platforms_waiting_jobs_get_turns_when_upgraded(empty_database_url: str) -> None:
    build_old_picture(empty_database_url)
    # Owners with no other waiting job there: their turns start at 0.
    carol, dave = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        # The old enqueue_job set created_by from the caller; a server-side call left it
        # null with the user in the payload.
        for user, count in ((carol, 3), (dave, 1)):
            conn.execute(
                "insert into job_queue (job_type, payload, status)"
                " select 'generate-image',"
                "        jsonb_build_object('user_id', %s::text, 'mark', 'old'), 'pending'"
                " from generate_series(1, %s)",
                (user, count),
            )
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        rows = conn.execute(
            "select payload ->> 'user_id', turn from job_queue"
            " where payload ->> 'mark' = 'old' order by turn, created_at"
        ).fetchall()
        assert [(uuid.UUID(owner), turn) for owner, turn in rows] == [
            (carol, 0),
            (dave, 0),
            (carol, 1),
            (carol, 2),
        ]
        claimed = []
        while row := conn.execute("select payload from claim_jobs('w', 1)").fetchone():
            if row[0].get("mark") == "old":
                claimed.append(uuid.UUID(row[0]["user_id"]))
        assert claimed == [carol, dave, carol, carol]
