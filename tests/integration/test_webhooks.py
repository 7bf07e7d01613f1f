"""Replicate webhooks (sql/0130_replicate_webhooks.sql, worker/webhooks.py): the served
app with its runner, PUBLIC_URL pointing at itself, the simulator delivering signed
webhooks to it, and each delivery fault the simulator can make. Whatever the fault,
every generation ends exactly once (one completion event, one image), with one
prediction, and no worker slot is held while the model runs."""

from __future__ import annotations

import io
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog

from devstack.postgres import free_port
from devstack.simulator import DEV_WEBHOOK_SECRET, SimulatorConfig
from tests.conftest import make_user, signed_in
from tests.support.served import serve_app
from tests.support.stack import Stack, run_stack
from worker.logs import configure_logging
from worker.webhooks import sign, signing_key

Conn = psycopg.Connection[dict[str, Any]]
FLUX = "black-forest-labs/flux-schnell"  # estimated_time_seconds 3 (sql/0001, section 4)
COUNT = 6
WEBHOOK_PATH = "/functions/v1/replicate-webhook"


@dataclass
class Hooked:
    url: str
    stack: Stack

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.stack.simulator("GET", "stats")
        return stats


@pytest.fixture
def captured_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The production log setup (JSON lines) writing into a buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("info", "json")
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


@pytest.fixture
def hooked(database_url: str, tmp_path: Path, captured_logs: io.StringIO) -> Iterator[Hooked]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    simulator = SimulatorConfig(latency_seconds=1.0, seed=7)
    with (
        run_stack(database_url, tmp_path / "storage", simulator) as stack,
        serve_app(
            stack,
            server_options={"port": port},
            public_url=url,
            replicate_webhook_secret=DEV_WEBHOOK_SECRET,
            replicate_wait_seconds=0,  # the create answers at once: the wait is the webhook's
            webhook_grace_seconds=1.0,  # no word 3 + 1 s after the create: poll
        ),
    ):
        yield Hooked(url, stack)


def start(conn: Conn, count: int = COUNT, prompt: str = "a webhook test") -> list[uuid.UUID]:
    user = make_user(conn)
    ids = []
    for index in range(count):
        row = conn.execute(
            "select generation_id from start_generation(p_user_id => %s, p_prompt => %s,"
            " p_model_id => %s)",
            (user, f"{prompt} {index}", FLUX),
        ).fetchone()
        assert row is not None
        ids.append(row["generation_id"])
    return ids


def wait_until_ended(conn: Conn, ids: list[uuid.UUID], timeout: float = 40) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = conn.execute(
            "select id, status from image_generations where id = any(%s)", (ids,)
        ).fetchall()
        statuses = {str(row["id"]): row["status"] for row in rows}
        ended = all(status in ("completed", "failed") for status in statuses.values())
        if ended or time.monotonic() > deadline:
            return statuses
        time.sleep(0.1)


def assert_each_ended_once(conn: Conn, ids: list[uuid.UUID], hooked: Hooked) -> None:
    """Completed, one image, one completion event and one prediction per generation."""
    statuses = wait_until_ended(conn, ids)
    assert set(statuses.values()) == {"completed"}, statuses
    images = conn.execute(
        "select generation_id, count(*) from images where generation_id = any(%s)"
        " group by generation_id",
        (ids,),
    ).fetchall()
    assert sorted(row["count"] for row in images) == [1] * len(ids)
    events = conn.execute(
        "select message ->> 'generation_id' as id, count(*) from pgmq.q_generation_events"
        " group by 1"
    ).fetchall()
    assert {row["id"]: row["count"] for row in events} == {str(i): 1 for i in ids}
    jobs = conn.execute(
        "select job_type, status, count(*) from job_queue where job_type <> 'process-webhook'"
        " group by 1, 2 order by 1, 2"
    ).fetchall()
    assert [(j["job_type"], j["status"], j["count"]) for j in jobs] == [
        ("download-image", "completed", len(ids)),
        ("generate-image", "completed", len(ids)),
    ]
    assert hooked.stats()["predictions_created"] == len(ids)


def test_the_model_runs_without_a_worker_slot(conn: Conn, hooked: Hooked) -> None:
    hooked.stack.configure_simulator(latency_seconds=2.5)
    ids = start(conn)
    deadline = time.monotonic() + 10
    while True:  # every prediction created and saved, every job handed back
        waiting = conn.execute(
            "select count(*) from job_queue j join image_generations g"
            " on j.payload ->> 'generation_id' = g.id::text"
            " where j.job_type = 'generate-image' and j.status = 'pending'"
            " and j.scheduled_at > now() and g.replicate_prediction_id is not null"
        ).fetchone()
        assert waiting is not None
        if waiting["count"] == COUNT or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert waiting["count"] == COUNT
    held = conn.execute("select count(*) from job_queue where status = 'processing'").fetchone()
    assert held == {"count": 0}

    assert_each_ended_once(conn, ids, hooked)
    stats = hooked.stats()
    assert stats["webhooks_sent"] == COUNT
    deliveries = conn.execute("select count(*) from imagegen.webhook_deliveries").fetchone()
    assert deliveries == {"count": COUNT}
    # Each job was woken by its delivery, not by its fallback (3 + 1 s after the create):
    # made due when the process-webhook job ran, which found it waiting.
    woken = conn.execute(
        "select g.scheduled_at <= w.completed_at as by_webhook, w.result ->> 'outcome' as outcome"
        " from job_queue w join image_generations i"
        "   on i.replicate_prediction_id = w.payload ->> 'prediction_id'"
        " join job_queue g on g.dedupe_key = 'generate-image:' || i.id"
        " where w.job_type = 'process-webhook'"
    ).fetchall()
    assert woken == [{"by_webhook": True, "outcome": "woken"}] * COUNT


@pytest.mark.parametrize(
    ("fault", "knobs", "counter"),
    [
        ("lost", {"webhook_drop_rate": 1.0}, "webhooks_dropped"),
        ("late", {"webhook_delay_seconds": 4.0}, "webhooks_sent"),
        ("duplicated", {"webhook_duplicate_rate": 1.0}, "webhooks_duplicated"),
        ("reordered", {"webhook_reorder_rate": 1.0}, "webhooks_reordered"),
        ("bad signature", {"webhook_bad_signature_rate": 1.0}, "webhooks_forged"),
        ("stale timestamp", {"webhook_stale_rate": 1.0}, "webhooks_stale"),
    ],
)
def test_each_delivery_fault_ends_every_generation_once(
    conn: Conn,
    hooked: Hooked,
    captured_logs: io.StringIO,
    fault: str,
    knobs: dict[str, Any],
    counter: str,
) -> None:
    hooked.stack.configure_simulator(**knobs)
    ids = start(conn)
    assert_each_ended_once(conn, ids, hooked)
    stats = hooked.stats()
    deadline = time.monotonic() + 10
    while stats[counter] < COUNT and time.monotonic() < deadline:  # a late one still coming
        time.sleep(0.2)
        stats = hooked.stats()
    assert stats[counter] == COUNT, (fault, stats)
    assert_each_ended_once(conn, ids, hooked)  # and what came after changed nothing
    if fault in ("bad signature", "stale timestamp"):
        assert stats["webhooks_refused"] == COUNT
        deliveries = conn.execute("select count(*) from imagegen.webhook_deliveries").fetchone()
        assert deliveries == {"count": 0}
        time.sleep(0.2)
        logs = captured_logs.getvalue()
        assert logs.count('"webhook refused"') >= COUNT
        key = DEV_WEBHOOK_SECRET.removeprefix("whsec_")
        assert key not in logs and key[:16] not in logs
        assert "v1," not in logs  # no signature either
    if fault == "duplicated":
        deliveries = conn.execute("select count(*) from imagegen.webhook_deliveries").fetchone()
        assert deliveries == {"count": COUNT}  # the second of each was a no-op


def test_a_failed_prediction_is_retried_with_a_new_one(conn: Conn, hooked: Hooked) -> None:
    hooked.stack.configure_simulator(fail_prompts=["doomed"])
    [doomed] = start(conn, 1, prompt="doomed")
    statuses = wait_until_ended(conn, [doomed], timeout=60)
    assert statuses == {str(doomed): "failed"}
    job = conn.execute(
        "select attempts, max_attempts from job_queue where job_type = 'generate-image'"
    ).fetchone()
    assert job is not None and job["attempts"] == job["max_attempts"]
    # One prediction per attempt, never two for one attempt, never one reused.
    assert hooked.stats()["predictions_created"] == job["max_attempts"]
    events = conn.execute("select count(*) from pgmq.q_generation_events").fetchone()
    assert events == {"count": 1}


def test_a_cancelled_generation_stays_cancelled(conn: Conn, hooked: Hooked) -> None:
    hooked.stack.configure_simulator(latency_seconds=3.0)
    [generation] = start(conn, 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute(
            "select replicate_prediction_id from image_generations where id = %s", (generation,)
        ).fetchone()
        if row and row["replicate_prediction_id"]:
            break
        time.sleep(0.05)
    owner = conn.execute(
        "select user_id from image_generations where id = %s", (generation,)
    ).fetchone()
    assert owner is not None
    with signed_in(conn, owner["user_id"]):  # the apps' cancel (docs/CLIENTS.md)
        conn.execute("select cancel_generation(%s)", (generation,))
    time.sleep(5)  # the cancel's delivery and the fallback poll both come and go
    row = conn.execute(
        "select status from image_generations where id = %s", (generation,)
    ).fetchone()
    assert row == {"status": "failed"}
    assert conn.execute("select count(*) from images").fetchone() == {"count": 0}
    assert hooked.stats()["predictions_created"] == 1


def _deliver(hooked: Hooked, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{hooked.url}{WEBHOOK_PATH}", content=body, headers=headers, timeout=10)


def test_forged_deliveries_are_refused_and_change_nothing(
    conn: Conn, hooked: Hooked, captured_logs: io.StringIO
) -> None:
    [generation] = start(conn, 1)
    body = b'{"id": "anything", "status": "succeeded"}'
    key = signing_key(DEV_WEBHOOK_SECRET)
    now = int(time.time())
    good = {"webhook-id": "msg_1", "webhook-timestamp": str(now)}
    cases = {
        "no headers": {},
        "wrong key": good | {"webhook-signature": sign(b"another key", "msg_1", now, body)},
        "other body": good | {"webhook-signature": sign(key, "msg_1", now, b"{}")},
        "future": {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(now + 400),
            "webhook-signature": sign(key, "msg_1", now + 400, body),
        },
        "not a number": good | {"webhook-timestamp": "soon", "webhook-signature": "v1,xx"},
    }
    for name, headers in cases.items():
        response = _deliver(hooked, body, **headers)
        assert response.status_code == 401, name
        assert set(response.json()) == {"error"}
    # A signature list with a good entry among others passes; the same id again is a no-op.
    signed = good | {"webhook-signature": f"v1,bm9wZQ== {sign(key, 'msg_1', now, body)}"}
    assert _deliver(hooked, body, **signed).json() == {"success": True, "accepted": True}
    assert _deliver(hooked, body, **signed).json() == {"success": True, "accepted": False}
    not_json = _deliver(
        hooked, b"[1]", **(good | {"webhook-signature": sign(key, "m2", now, b"[1]")})
    )
    assert not_json.status_code == 401  # signed for another id
    bad_body = {"webhook-id": "m2", "webhook-timestamp": str(now)}
    answer = _deliver(
        hooked, b"[1]", **(bad_body | {"webhook-signature": sign(key, "m2", now, b"[1]")})
    )
    assert answer.status_code == 400 and set(answer.json()) == {"error"}
    # Nothing but the one accepted delivery was written; the generation went its own way.
    assert conn.execute("select count(*) from imagegen.webhook_deliveries").fetchone() == {
        "count": 1
    }
    assert conn.execute(
        "select count(*) from job_queue where job_type = 'process-webhook'"
    ).fetchone() == {"count": 0}  # no generation holds "anything"
    wait_until_ended(conn, [generation])
    logs = captured_logs.getvalue()
    assert logs.count('"webhook refused"') == len(cases) + 1
    assert DEV_WEBHOOK_SECRET.removeprefix("whsec_")[:16] not in logs
    assert "v1," not in logs
