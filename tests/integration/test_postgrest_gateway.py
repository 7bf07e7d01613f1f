"""PostgrestGateway (supabase-py underneath) against the PostgREST stand-in, over real
HTTP, on a real migrated database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from starlette.applications import Starlette
from starlette.routing import Mount

from devstack.postgres import free_port
from tests.conftest import make_user
from tests.support.background_server import BackgroundServer
from tests.support.postgrest_standin import create_postgrest_app
from worker.database import Database
from worker.gateway import DatabaseError, GatewayUnavailable
from worker.postgrest_gateway import PostgrestGateway

KEY = "postgrest-test-service-key"
ANON = "postgrest-test-anon-key"


@pytest.fixture
def postgrest_url(database_url: str) -> Iterator[str]:
    app = create_postgrest_app(database_url, service_role_key=KEY, anon_key=ANON)
    with BackgroundServer(supabase(app)) as server:
        yield server.url


def supabase(postgrest: Starlette) -> Starlette:
    """Mounted where Supabase serves PostgREST."""
    return Starlette(routes=[Mount("/rest/v1", postgrest)])


@pytest.fixture
async def gateway(postgrest_url: str) -> AsyncIterator[PostgrestGateway]:
    client = PostgrestGateway(postgrest_url, KEY, timeout=5)
    yield client
    await client.close()


async def test_enqueue_job_returns_the_uuid(
    gateway: PostgrestGateway, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    generation_id = uuid.uuid4()
    rows = await gateway.call(
        "enqueue_job",
        {"p_job_type": "generate-image", "p_payload": {"generation_id": generation_id},
         "p_priority": 2},
    )  # fmt: skip
    assert len(rows) == 1
    job_id = rows[0]["enqueue_job"]
    assert isinstance(job_id, uuid.UUID)  # the Gateway contract's types, not JSON text
    job = conn.execute("select * from job_queue where id = %s", (job_id,)).fetchone()
    assert job is not None
    assert (job["payload"], job["priority"]) == ({"generation_id": str(generation_id)}, 2)


async def test_claim_heartbeat_complete(gateway: PostgrestGateway) -> None:
    db = Database(gateway)
    first = await db.enqueue_job("generate-image", {"n": 1})
    second = await db.enqueue_job("download-image", {"n": 2}, priority=1)
    later = datetime.now(UTC) + timedelta(hours=1)
    await gateway.call("enqueue_job", {"p_job_type": "generate-image", "p_scheduled_at": later})

    rows = await gateway.call(
        "claim_jobs", {"p_worker_id": "w1", "p_limit": 5, "p_lease_seconds": 60}
    )
    assert {row["id"] for row in rows} == {second, first}  # due ones only
    assert {row["status"] for row in rows} == {"processing"}
    assert {row["locked_by"] for row in rows} == {"w1"}
    assert await db.claim_jobs("w1", 5, None, 60) == []  # the scheduled one is not due

    assert await db.heartbeat_jobs("w1", [first, second], 60) == {first, second}
    assert await db.heartbeat_jobs("w2", [first], 60) == set()

    assert await gateway.call("complete_job", {"p_job_id": first, "p_worker_id": "w1"}) == [
        {"complete_job": True}
    ]
    assert await db.complete_job(first, "w1") is False  # already completed
    assert await db.complete_job(second, "w1", error="boom", retryable=False) is True


async def test_start_generation_rows_and_refusal(
    gateway: PostgrestGateway, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    user = make_user(conn)
    rows = await gateway.call(
        "start_generation",
        {"p_user_id": user, "p_prompt": "a lighthouse", "p_guidance_scale": Decimal("3.5"),
         "p_model_id": "black-forest-labs/flux-schnell"},
    )  # fmt: skip
    assert len(rows) == 1 and set(rows[0]) == {"generation_id", "job_id"}
    generation = await gateway.call(
        "get_generation", {"p_generation_id": rows[0]["generation_id"], "p_user_id": user}
    )
    assert generation[0]["get_generation"]["status"] == "queued"
    assert float(generation[0]["get_generation"]["guidance_scale"]) == 3.5

    with pytest.raises(DatabaseError) as refused:
        await gateway.call(
            "start_generation",
            {
                "p_user_id": uuid.uuid4(),
                "p_prompt": "x",
                "p_model_id": "black-forest-labs/flux-dev",
            },
        )
    assert refused.value.sqlstate == "22023"
    assert refused.value.message == "user_id: Unknown user"
    assert refused.value.is_invalid_input


async def test_void_and_null_results(gateway: PostgrestGateway) -> None:
    assert await gateway.call("nudge_workers", {}) == [{"nudge_workers": None}]
    missing = {"p_generation_id": uuid.uuid4(), "p_user_id": uuid.uuid4()}
    assert await gateway.call("get_generation", missing) == [{"get_generation": None}]
    assert (
        await gateway.call("begin_generation", {"p_job_id": uuid.uuid4(), "p_worker_id": "w"}) == []
    )


async def test_unknown_function_and_arguments(gateway: PostgrestGateway) -> None:
    with pytest.raises(DatabaseError) as unknown:
        await gateway.call("no_such_function", {"p_x": 1})
    assert unknown.value.sqlstate == "PGRST202"
    with pytest.raises(DatabaseError) as wrong_args:
        await gateway.call("complete_job", {"p_nonsense": 1})
    assert wrong_args.value.sqlstate == "PGRST202"


async def test_error_raised_inside_a_function_is_a_database_error(
    gateway: PostgrestGateway, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    # PostgREST answers XX000 with 500; still the function's error, not an outage.
    conn.execute(
        "create function public.boom() returns integer language plpgsql as "
        "$$ begin raise exception using errcode = 'XX000', message = 'boom'; end $$"
    )
    conn.execute("grant execute on function public.boom() to service_role")
    with pytest.raises(DatabaseError) as failed:
        await gateway.call("boom", {})
    assert (failed.value.sqlstate, failed.value.message) == ("XX000", "boom")


async def test_roles_and_keys(postgrest_url: str) -> None:
    anon = PostgrestGateway(postgrest_url, ANON, timeout=5)
    wrong = PostgrestGateway(postgrest_url, "not-a-key", timeout=5)
    try:
        with pytest.raises(DatabaseError) as denied:
            await anon.call("enqueue_job", {"p_job_type": "generate-image"})
        assert denied.value.sqlstate == "42501"  # EXECUTE is granted to service_role only
        with pytest.raises(DatabaseError):
            await wrong.call("nudge_workers", {})
    finally:
        await anon.close()
        await wrong.close()


async def test_ping_and_listen(gateway: PostgrestGateway) -> None:
    assert await gateway.ping() is True
    await asyncio.wait_for(gateway.listen("job_queue", lambda: None), timeout=1)


async def test_unreachable_server_is_unavailable() -> None:
    gateway = PostgrestGateway(f"http://127.0.0.1:{free_port()}", KEY, timeout=2)
    try:
        with pytest.raises(GatewayUnavailable):
            await gateway.call("nudge_workers", {})
        assert await gateway.ping() is False
    finally:
        await gateway.close()


async def test_database_down_behind_postgrest_is_unavailable(database_url: str) -> None:
    down = make_conninfo(database_url, dbname="no_such_database")
    with BackgroundServer(supabase(create_postgrest_app(down, service_role_key=KEY))) as server:
        gateway = PostgrestGateway(server.url, KEY, timeout=5)
        try:
            with pytest.raises(GatewayUnavailable, match="503"):
                await gateway.call("nudge_workers", {})
            assert await gateway.ping() is False
        finally:
            await gateway.close()


async def test_a_generation_lifecycle_through_database(
    gateway: PostgrestGateway, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """Every generation function the worker calls, with its argument types, over PostgREST."""
    db = Database(gateway)
    user = make_user(conn)
    generation_id, job_id = await db.start_generation(
        user, prompt="a fox", model_id="black-forest-labs/flux-dev", guidance_scale=3.5
    )
    [job] = await db.claim_jobs("w1", 1, ["generate-image"], 60)
    assert job.id == job_id and job.payload["generation_id"] == str(generation_id)
    generation = await db.begin_generation(job_id, "w1")
    assert generation is not None and generation["status"] == "processing"
    assert await db.record_prediction(job_id, "w1", "pred-1") is True
    download_id = await db.generation_downloading(
        job_id, "w1", output_url="https://x.test/o.webp", format="webp", width=1024,
        height=1024, generation_time_seconds=1.25,
    )  # fmt: skip
    assert download_id is not None
    [download] = await db.claim_jobs("w1", 1, ["download-image"], 60)
    image = await db.finish_generation(
        generation_id, storage_path=f"{user}/{generation_id}.webp", public_url="https://x.test/p",
        file_size=10, width=1024, height=1024, format="webp", job_id=download.id,
        worker_id="w1",
    )  # fmt: skip
    assert image is not None and image["filename"] == f"{generation_id}.webp"
    row = conn.execute(
        "select status, replicate_prediction_id from image_generations where id = %s",
        (generation_id,),
    ).fetchone()
    assert row == {"status": "completed", "replicate_prediction_id": "pred-1"}
    assert await db.release_jobs("w1", [download.id]) == 0


async def test_auto_chooses_postgrest_without_a_database_url(
    postgrest_url: str, conn: psycopg.Connection[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment with only the Supabase URL and key (the old functions' setup): the
    default DATABASE_GATEWAY=auto must take PostgREST, and the worker work through it."""
    from worker.service import open_worker
    from worker.settings import Settings

    for name in ("DATABASE_URL", "DATABASE_GATEWAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUPABASE_URL", postgrest_url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", KEY)
    settings = Settings()
    assert (settings.database_gateway, settings.gateway) == ("auto", "postgrest")
    async with open_worker(settings) as worker:
        assert isinstance(worker.db.gateway, PostgrestGateway)
        job_id = await worker.db.enqueue_job("generate-image", {"via": "postgrest"})
        (claimed,) = await worker.db.claim_jobs(settings.worker_id, 1, None, 60)
    assert claimed.id == job_id
    row = conn.execute("select status, locked_by from job_queue where id = %s", (job_id,))
    assert row.fetchone() == {"status": "processing", "locked_by": settings.worker_id}
