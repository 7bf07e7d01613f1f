"""The `Gateway` contract (worker/gateway.py), one suite run against both gateways, as
River runs its driver tests against every driver: the same calls give the same Python
types and values, the same errors, and the whole interface (open, ping, listen,
hold_session, close) behaves alike. The PostgREST gateway talks to the PostgREST stand-in
over real HTTP, on the same migrated database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.conftest import make_user
from tests.support.background_server import BackgroundServer
from tests.support.postgrest_standin import create_postgrest_app
from worker.database import Database
from worker.gateway import DatabaseError, Gateway
from worker.postgres_gateway import PostgresGateway
from worker.postgrest_gateway import PostgrestGateway

KEY = "contract-test-service-key"
GATEWAYS = ["postgres", "postgrest"]


@pytest.fixture
def postgrest_url(database_url: str) -> Iterator[str]:
    app = create_postgrest_app(database_url, service_role_key=KEY, anon_key="contract-anon")
    with BackgroundServer(Starlette(routes=[Mount("/rest/v1", app)])) as server:
        yield server.url


async def open_gateway(kind: str, database_url: str, postgrest_url: str) -> Gateway:
    gateway: Gateway = (
        PostgresGateway(database_url, max_size=2)
        if kind == "postgres"
        else PostgrestGateway(postgrest_url, KEY, timeout=5)
    )
    await gateway.open()
    return gateway


@pytest.fixture(params=GATEWAYS)
async def gateway(
    request: pytest.FixtureRequest, database_url: str, postgrest_url: str
) -> AsyncIterator[Gateway]:
    opened = await open_gateway(request.param, database_url, postgrest_url)
    yield opened
    await opened.close()


def types(row: dict[str, Any]) -> dict[str, type]:
    return {name: type(value) for name, value in row.items()}


async def test_scalars_come_back_typed(gateway: Gateway) -> None:
    rows = await gateway.call("enqueue_job", {"p_job_type": "contract", "p_payload": {"n": 1}})
    assert len(rows) == 1 and isinstance(rows[0]["enqueue_job"], uuid.UUID)
    assert await gateway.call("reclaim_dead_workers", {}) == [{"reclaim_dead_workers": 0}]


async def test_rows_of_a_table_come_back_typed(gateway: Gateway) -> None:
    job_id = (await gateway.call("enqueue_job", {"p_job_type": "contract", "p_priority": 2}))[0][
        "enqueue_job"
    ]
    rows = await gateway.call(
        "claim_jobs",
        {"p_worker_id": "w1", "p_limit": 5, "p_job_types": ["contract"], "p_lease_seconds": 60},
    )
    assert [row["id"] for row in rows] == [job_id]
    row = rows[0]
    assert (row["status"], row["attempts"], row["priority"], row["payload"]) == (
        "processing",
        1,
        2,
        {},
    )
    assert isinstance(row["locked_until"], datetime) and row["locked_until"].tzinfo is not None
    assert isinstance(row["created_at"], datetime)
    assert row["created_by"] is None and row["completed_at"] is None
    # A set of scalars: one row per value, named after the function.
    held = await gateway.call(
        "heartbeat_jobs",
        {"p_worker_id": "w1", "p_job_ids": [job_id, uuid.uuid4()], "p_lease_seconds": 60},
    )
    assert held == [{"heartbeat_jobs": job_id}]


async def test_returns_table_columns_come_back_typed(
    gateway: Gateway, conn: psycopg.Connection[Any]
) -> None:
    user = make_user(conn)
    rows = await gateway.call(
        "start_generation",
        {
            "p_user_id": user,
            "p_prompt": "a lighthouse",
            "p_model_id": "black-forest-labs/flux-schnell",
            "p_guidance_scale": 3.5,
        },
    )
    assert types(rows[0]) == {"generation_id": uuid.UUID, "job_id": uuid.UUID}
    depth = await gateway.call("queue_depth", {})
    assert {"job_type": "generate-image", "status": "pending", "count": 1} in depth


async def test_errors_are_the_same(gateway: Gateway) -> None:
    with pytest.raises(DatabaseError) as refused:
        await gateway.call("register_worker", {"p_worker_id": ""})
    assert refused.value.sqlstate == "22023"
    assert refused.value.is_invalid_input


async def test_the_session_methods(gateway: Gateway) -> None:
    assert await gateway.ping() is True
    woken = asyncio.Event()
    listening = asyncio.create_task(gateway.listen("job_queue", woken.set))
    registered = asyncio.Event()
    holding = asyncio.create_task(gateway.hold_session("w-contract", registered))
    await asyncio.wait_for(registered.wait(), timeout=10)  # the runner claims after this
    if isinstance(gateway, PostgrestGateway):
        # No session outlives a call: both return at once (the runner then polls and
        # leases alone tell a dead worker).
        await asyncio.wait_for(asyncio.gather(listening, holding), timeout=1)
        assert not woken.is_set()
    else:
        await asyncio.wait_for(woken.wait(), timeout=10)  # woken once on (re)connect
        for task in (listening, holding):
            task.cancel()
        await asyncio.gather(listening, holding, return_exceptions=True)


async def test_both_gateways_answer_alike(database_url: str, postgrest_url: str) -> None:
    """The same read through each gateway: equal rows, of equal types, column by column
    (models carry uuid, numeric, timestamptz, jsonb, arrays)."""
    answers = []
    for kind in GATEWAYS:
        gateway = await open_gateway(kind, database_url, postgrest_url)
        try:
            answers.append(await gateway.call("list_models", {}))
        finally:
            await gateway.close()
    direct, rest = answers
    assert direct and rest == direct
    assert [types(row) for row in rest] == [types(row) for row in direct]
    kinds = {kind for row in direct for kind in types(row).values()}
    assert {uuid.UUID, datetime, Decimal} <= kinds


async def test_the_database_reads_the_same_through_both(
    database_url: str, postgrest_url: str
) -> None:
    jobs = []
    for kind in GATEWAYS:
        gateway = await open_gateway(kind, database_url, postgrest_url)
        try:
            db = Database(gateway)
            await db.enqueue_job(f"contract-{kind}", {"k": kind})
            jobs.extend(await db.claim_jobs("w1", 1, [f"contract-{kind}"], 60))
        finally:
            await gateway.close()
    direct, rest = jobs
    assert (type(direct.id), type(rest.id)) == (uuid.UUID, uuid.UUID)
    assert (direct.payload, rest.payload) == ({"k": "postgres"}, {"k": "postgrest"})
