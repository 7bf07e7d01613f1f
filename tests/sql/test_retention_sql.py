"""Retention of the tables issue 16 added (sql/0170_prune_issue16_tables.sql): the nightly
prune_finished_jobs also forgets old webhook delivery ids (never one younger than the
floor) and expired idempotency keys (never one inside its window), and still answers the
number of jobs it deleted. Rows are backdated with plain UPDATEs."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import make_user
from worker.webhooks import TOLERANCE_SECONDS, WebhookRefused, sign, verify_delivery

Conn = psycopg.Connection[dict[str, Any]]

WEBHOOK_KEY = b"a test signing key"


def deliver(conn: Conn, webhook_id: str, age: str = "0 seconds") -> None:
    """A delivery recorded by accept_webhook, then backdated by `age`."""
    payload = Jsonb({"id": f"prediction-{webhook_id}", "status": "succeeded"})
    accepted = conn.execute("select accept_webhook(%s, %s) as ok", (webhook_id, payload))
    assert accepted.fetchone() == {"ok": True}
    conn.execute(
        "update imagegen.webhook_deliveries set received_at = now() - %s::interval"
        " where webhook_id = %s",
        (age, webhook_id),
    )


def delivery_ids(conn: Conn) -> set[str]:
    rows = conn.execute("select webhook_id from imagegen.webhook_deliveries").fetchall()
    return {row["webhook_id"] for row in rows}


def remember_key(conn: Conn, key: str, age: str) -> None:
    """An answered idempotency key (as start_once leaves one), created `age` ago."""
    conn.execute(
        "insert into imagegen.idempotent_requests (user_id, key, request_hash, response,"
        " created_at) values (%s, %s, sha256('request'::bytea), '{}', now() - %s::interval)",
        (make_user(conn), key, age),
    )


def remembered_keys(conn: Conn) -> set[str]:
    rows = conn.execute("select key from imagegen.idempotent_requests").fetchall()
    return {row["key"] for row in rows}


def prune(conn: Conn, older_than: str | None = None) -> int:
    row = conn.execute("select prune_finished_jobs(%s::interval) as n", (older_than,)).fetchone()
    deleted: int = row["n"]
    return deleted


def dedupe_floor(conn: Conn) -> timedelta:
    floor: timedelta = conn.execute("select imagegen.webhook_dedupe_floor() as f").fetchone()["f"]
    return floor


def test_deliveries_older_than_the_retention_age_are_forgotten(conn: Conn) -> None:
    deliver(conn, "eight-days", "8 days")
    deliver(conn, "thirty-days", "30 days")
    deliver(conn, "six-days", "6 days")
    deliver(conn, "just-now")

    prune(conn)
    assert delivery_ids(conn) == {"six-days", "just-now"}

    # An explicit age, then the configured retention, as for jobs.
    prune(conn, "5 days")
    assert delivery_ids(conn) == {"just-now"}
    deliver(conn, "two-hours", "2 hours")
    conn.execute("select imagegen.put_setting('job_retention', '90 minutes')")
    prune(conn)
    assert delivery_ids(conn) == {"just-now"}


def test_a_tiny_age_never_forgets_a_delivery_younger_than_the_floor(conn: Conn) -> None:
    floor = dedupe_floor(conn)
    assert floor > timedelta(seconds=TOLERANCE_SECONDS)  # a late delivery is still known
    deliver(conn, "just-now")
    deliver(conn, "inside-the-floor", f"{floor.total_seconds() - 60} seconds")
    deliver(conn, "past-the-floor", f"{floor.total_seconds() + 60} seconds")

    prune(conn, "1 second")
    assert delivery_ids(conn) == {"just-now", "inside-the-floor"}
    prune(conn, "-1 day")  # nonsense from an operator changes nothing either
    assert delivery_ids(conn) == {"just-now", "inside-the-floor"}


def test_expired_idempotency_keys_go_and_keys_inside_their_window_stay(conn: Conn) -> None:
    window = conn.execute("select imagegen.idempotency_window() as w").fetchone()["w"]
    assert window == timedelta(hours=24)
    remember_key(conn, "expired", "24 hours 1 minute")
    remember_key(conn, "long-expired", "10 days")
    remember_key(conn, "almost-expired", "23 hours 59 minutes")
    remember_key(conn, "fresh", "0 seconds")

    # The window decides, not the retention age: a long age keeps no expired key...
    prune(conn, "30 days")
    assert remembered_keys(conn) == {"almost-expired", "fresh"}
    # ...and a tiny one forgets no key that still answers.
    prune(conn, "1 second")
    assert remembered_keys(conn) == {"almost-expired", "fresh"}


def test_a_pruned_delivery_replayed_is_refused_by_its_timestamp(conn: Conn) -> None:
    sent_at = int(time.time()) - 8 * 24 * 3600
    body = json.dumps({"id": "prediction-replayed", "status": "succeeded"}).encode()
    headers = {
        "webhook-id": "msg_replayed",
        "webhook-timestamp": str(sent_at),
        "webhook-signature": sign(WEBHOOK_KEY, "msg_replayed", sent_at, body),
    }
    # Accepted when it was sent, and recorded then.
    assert verify_delivery(headers, body, WEBHOOK_KEY, now=sent_at) == "msg_replayed"
    deliver(conn, "msg_replayed", "8 days")

    prune(conn)
    assert delivery_ids(conn) == set()

    # The id is new to SQL again; what refuses the replay is the timestamp check the
    # webhook endpoint runs before accept_webhook (api/app.py).
    with pytest.raises(WebhookRefused, match="from now"):
        verify_delivery(headers, body, WEBHOOK_KEY, now=time.time())
    fresh = conn.execute(
        "select accept_webhook('msg_replayed', %s) as ok", (Jsonb(json.loads(body)),)
    ).fetchone()
    assert fresh == {"ok": True}


def test_the_answer_still_counts_deleted_jobs_only(conn: Conn) -> None:
    deliver(conn, "old-1", "8 days")
    deliver(conn, "old-2", "8 days")
    remember_key(conn, "expired-1", "2 days")
    remember_key(conn, "expired-2", "2 days")
    remember_key(conn, "expired-3", "2 days")
    assert prune(conn) == 0
    assert (delivery_ids(conn), remembered_keys(conn)) == (set(), set())

    job = conn.execute("select enqueue_job('cleanup-storage') as id").fetchone()["id"]
    conn.execute(
        "update job_queue set status = 'completed', completed_at = now() - interval '8 days'"
        " where id = %s",
        (job,),
    )
    deliver(conn, "old-3", "8 days")
    remember_key(conn, "expired-4", "2 days")
    assert prune(conn) == 1
    assert (delivery_ids(conn), remembered_keys(conn)) == (set(), set())
