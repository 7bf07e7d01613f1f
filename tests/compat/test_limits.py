"""Per-user limits as the apps read them and as admission enforces them (docs/CLIENTS.md §2
flows 3-4): `rpc('get_user_limits', {p_user_id})` replayed the way PostgREST runs it, and
refusals that write nothing and say when to come back."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import make_user, signed_in
from tests.support.served import Served

FLUX = "black-forest-labs/flux-schnell"
# M/components/RateLimitIndicator.tsx and checkCanGenerate in M/services/imageGenerationAsync.ts
FIELDS = {
    "can_generate",
    "limit_reason",
    "daily_used",
    "daily_limit",
    "daily_reset_at",
    "hourly_used",
    "hourly_limit",
    "hourly_reset_at",
    "active_generations",
    "max_concurrent",
    "total_all_time",
}
Conn = psycopg.Connection[Any]


def start(conn: Conn, user: uuid.UUID) -> uuid.UUID:
    row = conn.execute(
        "select * from start_generation(p_user_id => %s, p_prompt => 'x', p_model_id => %s)",
        (user, FLUX),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["generation_id"]))


def set_limits(conn: Conn, user: uuid.UUID, **limits: int) -> None:
    columns = ", ".join(["user_id", *limits])
    values = ", ".join(["%s"] * (len(limits) + 1))
    conn.execute(
        f"insert into user_rate_limits ({columns}) values ({values})", (user, *limits.values())
    )


def user_limits(conn: Conn, caller: uuid.UUID, asked: uuid.UUID) -> Any:
    """supabase.rpc('get_user_limits', {p_user_id}) as the signed-in caller."""
    with signed_in(conn, caller):
        row = conn.execute(
            "select public.get_user_limits(p_user_id => %s) as data", (asked,)
        ).fetchone()
    assert row is not None
    return row["data"]


def counts(conn: Conn) -> tuple[int, int]:
    row = conn.execute(
        "select (select count(*) from image_generations) as g,"
        " (select count(*) from job_queue where job_type = 'generate-image') as j"
    ).fetchone()
    assert row is not None
    return row["g"], row["j"]


def test_the_usage_meter_reads_its_fields_for_the_caller_only(conn: Conn) -> None:
    """M/components/RateLimitIndicator.tsx: one object with the meter's fields."""
    alice, bob = make_user(conn), make_user(conn)
    for _ in range(3):
        start(conn, alice)
    data = user_limits(conn, alice, alice)
    assert set(data) == FIELDS
    assert (data["daily_used"], data["hourly_used"], data["active_generations"]) == (3, 3, 3)
    assert (data["daily_limit"], data["hourly_limit"], data["max_concurrent"]) == (1000, 200, 50)
    assert data["total_all_time"] == 3
    assert data["can_generate"] is True and data["limit_reason"] is None
    now = datetime.now(UTC)
    daily_reset = datetime.fromisoformat(data["daily_reset_at"])
    hourly_reset = datetime.fromisoformat(data["hourly_reset_at"])
    assert now < hourly_reset <= now + timedelta(hours=1)
    assert now < daily_reset <= now + timedelta(days=1) and daily_reset.hour == 0
    # Another user's id: nothing (the app fails open; nobody reads another's usage).
    assert user_limits(conn, bob, alice) is None
    assert user_limits(conn, bob, bob)["daily_used"] == 0


def test_a_users_own_row_sets_their_limits_and_refusals_write_nothing(conn: Conn) -> None:
    """checkCanGenerate (M/services/imageGenerationAsync.ts) reads can_generate and
    limit_reason; start_generation refuses the same request with PT429."""
    alice = make_user(conn)
    set_limits(conn, alice, hourly_generations_limit=2)
    start(conn, alice)
    start(conn, alice)
    data = user_limits(conn, alice, alice)
    assert data["can_generate"] is False and "Hourly limit" in data["limit_reason"]
    before = counts(conn)
    with pytest.raises(psycopg.Error) as refused:
        start(conn, alice)
    assert refused.value.sqlstate == "PT429"
    # DETAIL: when the refusing limit resets (the API's Retry-After).
    assert datetime.fromisoformat(str(refused.value.diag.message_detail)) == (
        datetime.fromisoformat(data["hourly_reset_at"])
    )
    assert counts(conn) == before
    with signed_in(conn, alice):
        check = conn.execute(
            "select public.check_rate_limit(p_user_id => %s, p_count => 1) as data", (alice,)
        ).fetchone()
    assert check is not None
    assert check["data"]["allowed"] is False and check["data"]["hourly_remaining"] == 0


def test_only_started_work_counts_against_the_concurrent_limit(conn: Conn) -> None:
    """A pending row the app inserted costs nothing until it is started."""
    alice = make_user(conn)
    set_limits(conn, alice, max_concurrent_generations=2)
    conn.execute(
        "insert into image_generations (user_id, prompt, model, status)"
        " select %s, 'waiting', 'flux-schnell', 'pending' from generate_series(1, 5)",
        (alice,),
    )
    start(conn, alice)
    start(conn, alice)
    with pytest.raises(psycopg.Error) as refused:
        start(conn, alice)
    assert refused.value.sqlstate == "PT429"
    assert "at once" in str(refused.value.diag.message_primary)
    assert user_limits(conn, alice, alice)["active_generations"] == 2
    # One finishes (here: its job is cancelled): a slot is free again.
    conn.execute(
        "update job_queue set status = 'cancelled' where id = (select id from job_queue"
        " where created_by = %s order by created_at limit 1)",
        (alice,),
    )
    start(conn, alice)


def test_a_refused_start_generation_is_429_with_retry_after_at_the_reset(
    conn: Conn, served: Served
) -> None:
    """M/services/imageGenerationAsync.ts: start-generation over HTTP, beyond the daily limit."""
    alice = make_user(conn)
    set_limits(conn, alice, daily_generations_limit=1)
    body = {"prompt": "a fox", "model_id": FLUX}
    assert served.invoke(alice, "start-generation", body)["success"] is True
    before = counts(conn)
    refused = httpx.post(
        f"{served.url}/functions/v1/start-generation",
        json=body,
        headers={"Authorization": f"Bearer {served.token(alice)}"},
        timeout=30,
    )
    assert refused.status_code == 429 and set(refused.json()) == {"error"}
    assert "Daily limit" in refused.json()["error"]
    reset = datetime.fromisoformat(user_limits(conn, alice, alice)["daily_reset_at"])
    expected = math.ceil((reset - datetime.now(UTC)).total_seconds())
    assert abs(int(refused.headers["retry-after"]) - expected) <= 60
    assert counts(conn) == before


def test_process_queue_starts_pending_rows_within_the_limits(conn: Conn) -> None:
    """M/store/batchStore.ts retryFailed: process-queue starts what a retry left pending;
    beyond the user's concurrent limit the rest stay pending, never with a second job."""
    alice = make_user(conn)
    set_limits(conn, alice, max_concurrent_generations=2)
    conn.execute(
        "insert into image_generations (user_id, prompt, model, status)"
        " select %s, 'waiting ' || n, 'flux-schnell', 'pending' from generate_series(1, 5) n",
        (alice,),
    )
    started = conn.execute("select process_queue(%s) as n", (alice,)).fetchone()
    assert started == {"n": 2}
    assert conn.execute("select process_queue(%s) as n", (alice,)).fetchone() == {"n": 0}
    statuses = conn.execute(
        "select status, count(*) as n from image_generations group by status order by status"
    ).fetchall()
    assert statuses == [{"status": "pending", "n": 3}, {"status": "queued", "n": 2}]
    jobs = conn.execute(
        "select count(*) as n, count(distinct payload ->> 'generation_id') as g from job_queue"
    ).fetchone()
    assert jobs == {"n": 2, "g": 2}


def test_operators_set_the_defaults_with_configure_admission(conn: Conn) -> None:
    alice = make_user(conn)
    row = conn.execute(
        "select configure_admission(p_hourly_limit => 1, p_max_batch_size => 3) as s"
    ).fetchone()
    assert row is not None
    assert row["s"]["hourly_generation_limit"] == 1 and row["s"]["max_batch_size"] == 3
    assert row["s"]["daily_generation_limit"] == 1000  # left as it was
    start(conn, alice)
    with pytest.raises(psycopg.Error) as refused:
        start(conn, alice)
    assert refused.value.sqlstate == "PT429"
    with pytest.raises(psycopg.Error) as negative:
        conn.execute("select configure_admission(p_daily_limit => -1)")
    assert negative.value.sqlstate == "22023"
