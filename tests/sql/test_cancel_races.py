"""A cancel at the same moment as the worker's own step (sql/0120_cancel_generation.sql):
the two transactions wait for each other on the generation row, so the generation ends
one way or the other, never both (an image on a failed row) and never neither (stuck in
downloading), and without a deadlock."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import signed_in
from tests.support.generations import SCHNELL

Conn = psycopg.Connection[dict[str, Any]]
FINISH = (
    "select * from finish_generation(%s, 'u/x.webp', 'https://cdn.test/x.webp', 10, 8, 8,"
    " 'webp', %s, 'w')"
)
DOWNLOADING = (
    "select generation_downloading(%s, 'w', 'https://r.test/o.webp', 'webp', 8, 8, 1) as id"
)
CLAIMS = "select set_config('request.jwt.claims', %s, true)"


def downloading_generation(conn: Conn, user_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """A generation whose output is being stored: (generation id, its download job, held by
    worker 'w')."""
    row = conn.execute(
        "select generation_id from start_generation(%s, 'a red fox', %s)", (user_id, SCHNELL)
    ).fetchone()
    assert row is not None
    (job,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    conn.execute("select begin_generation(%s, 'w')", (job["id"],))
    assert conn.execute(DOWNLOADING, (job["id"],)).fetchone()["id"] is not None
    (download,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    return row["generation_id"], download["id"]


class Session(threading.Thread):
    """One statement on a connection of its own, in a thread: it may wait on a lock."""

    def __init__(self, database_url: str, work: Callable[[Conn], Any]) -> None:
        super().__init__(daemon=True)
        self.conn: Conn = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work(self.conn)
        except BaseException as exc:  # reported by outcome()
            self.error = exc
        finally:
            self.conn.close()

    def outcome(self) -> Any:
        self.join(30)
        assert not self.is_alive(), "the statement never ended"
        if self.error is not None:
            raise self.error
        return self.result


def start_waiting(conn: Conn, session: Session) -> Session:
    """Start `session` and return once its statement waits for a lock."""
    pid = session.conn.info.backend_pid
    session.start()
    deadline = time.monotonic() + 30
    while not conn.execute(
        "select wait_event_type = 'Lock' as waiting from pg_stat_activity where pid = %s",
        (pid,),
    ).fetchone()["waiting"]:
        assert session.is_alive(), "it did not wait"
        assert time.monotonic() < deadline, "it never waited for the lock"
        time.sleep(0.01)
    return session


def owner_cancels(user_id: uuid.UUID, generation_id: uuid.UUID) -> Callable[[Conn], Any]:
    def cancel(conn: Conn) -> Any:
        with signed_in(conn, user_id):
            return conn.execute("select cancel_generation(%s) as ok", (generation_id,)).fetchone()

    return cancel


def end_state(conn: Conn, generation_id: uuid.UUID) -> tuple[str, str | None, int, list[str]]:
    row = conn.execute(
        "select status, error_message from image_generations where id = %s", (generation_id,)
    ).fetchone()
    images = conn.execute(
        "select count(*) as n from images where generation_id = %s", (generation_id,)
    ).fetchone()
    jobs = conn.execute(
        "select status from job_queue where payload ->> 'generation_id' = %s::text"
        " order by created_at",
        (generation_id,),
    ).fetchall()
    return row["status"], row["error_message"], images["n"], [job["status"] for job in jobs]


def test_a_cancel_during_the_finish_waits_and_finds_it_completed(
    conn: Conn, database_url: str, user_id: uuid.UUID
) -> None:
    generation_id, download_id = downloading_generation(conn, user_id)
    with psycopg.connect(database_url, row_factory=dict_row) as worker:
        assert len(worker.execute(FINISH, (generation_id, download_id)).fetchall()) == 1
        cancel = start_waiting(conn, Session(database_url, owner_cancels(user_id, generation_id)))
        worker.commit()
    assert cancel.outcome() == {"ok": False}
    assert end_state(conn, generation_id) == ("completed", None, 1, ["completed", "completed"])


def test_the_apps_cancel_during_the_finish_is_refused_and_changes_nothing(
    conn: Conn, database_url: str, user_id: uuid.UUID
) -> None:
    """apps/mobile/services/imageGenerationAsync.ts updates by id, with no status filter."""
    generation_id, download_id = downloading_generation(conn, user_id)

    def update(session: Conn) -> Any:
        with signed_in(session, user_id):
            return session.execute(
                "update image_generations set status = 'failed',"
                " error_message = 'Cancelled by user' where id = %s",
                (generation_id,),
            ).rowcount

    with psycopg.connect(database_url, row_factory=dict_row) as worker:
        worker.execute(FINISH, (generation_id, download_id))
        cancel = start_waiting(conn, Session(database_url, update))
        worker.commit()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="from completed to failed"):
        cancel.outcome()
    assert end_state(conn, generation_id) == ("completed", None, 1, ["completed", "completed"])


def test_a_finish_during_the_cancel_waits_and_stores_nothing(
    conn: Conn, database_url: str, user_id: uuid.UUID
) -> None:
    generation_id, download_id = downloading_generation(conn, user_id)
    claims = json.dumps({"sub": str(user_id), "role": "authenticated"})
    with psycopg.connect(database_url, row_factory=dict_row) as owner:
        owner.execute("set local role authenticated")
        owner.execute(CLAIMS, (claims,))
        assert owner.execute("select cancel_generation(%s) as ok", (generation_id,)).fetchone() == {
            "ok": True
        }
        finish = start_waiting(
            conn,
            Session(
                database_url, lambda c: c.execute(FINISH, (generation_id, download_id)).fetchall()
            ),
        )
        owner.commit()
    assert finish.outcome() == []
    assert end_state(conn, generation_id) == (
        "failed",
        "Cancelled by user",
        0,
        ["completed", "cancelled"],
    )


def test_a_cancel_and_the_hand_over_to_the_download_do_not_deadlock(
    conn: Conn, database_url: str, user_id: uuid.UUID
) -> None:
    """The cancel queues first for the generation row, then generation_downloading comes:
    it must not take the job's lock before the row's (the cancel takes the row, then the
    job), or each would wait for the other."""
    row = conn.execute(
        "select generation_id from start_generation(%s, 'a red fox', %s)", (user_id, SCHNELL)
    ).fetchone()
    generation_id = row["generation_id"]
    (job,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    conn.execute("select begin_generation(%s, 'w')", (job["id"],))
    with psycopg.connect(database_url, row_factory=dict_row) as holder:
        holder.execute("select from image_generations where id = %s for update", (generation_id,))
        cancel = start_waiting(conn, Session(database_url, owner_cancels(user_id, generation_id)))
        handover = start_waiting(
            conn, Session(database_url, lambda c: c.execute(DOWNLOADING, (job["id"],)).fetchone())
        )
        holder.commit()
    assert cancel.outcome() == {"ok": True}
    assert handover.outcome() == {"id": None}
    assert end_state(conn, generation_id) == ("failed", "Cancelled by user", 0, ["cancelled"])
