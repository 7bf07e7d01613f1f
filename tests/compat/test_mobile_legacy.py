"""The mobile app's main flow (docs/CLIENTS.md §2 flow 1, M/services/imageGeneration.ts and
M/components/remix/RemixBottomSheet.tsx): it inserts its own `pending` generation as the
signed-in user, then invokes the legacy `generate-image` with `generation_id` and waits.
The row goes processing (with the prediction id) and completed with its image, or failed
with its message and completed_at; one prediction per row, however often it is called;
the legacy call passes the same limits as start-generation and stores no file without a
row."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from supabase_functions.errors import FunctionsHttpError

from devstack.simulator import SimulatorConfig
from tests.conftest import make_user, signed_in
from tests.support.served import Served, serve, wait_until_ended

FLUX = "black-forest-labs/flux-schnell"
Conn = psycopg.Connection[Any]


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    config = SimulatorConfig(latency_seconds=0.05, fail_prompts=("unrenderable",))
    with serve(database_url, tmp_path / "storage", config) as running:
        yield running


def insert_pending(conn: Conn, user: uuid.UUID, prompt: str) -> uuid.UUID:
    """`supabase.from('image_generations').insert({...}).select().single()`, as the user."""
    with signed_in(conn, user):
        row = conn.execute(
            "insert into image_generations (user_id, prompt, model, style, width, height,"
            " steps, guidance_scale, status) values (%s, %s, 'flux-schnell', 'photographic',"
            " 1344, 768, 4, 0, 'pending') returning *",
            (user, prompt),
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def legacy_body(generation_id: uuid.UUID, prompt: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "model_id": FLUX,
        "width": 1344,
        "height": 768,
        "num_inference_steps": 4,
        "guidance_scale": 0,
        "generation_id": str(generation_id),
    }


def generation(conn: Conn, generation_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute("select * from image_generations where id = %s", (generation_id,)).fetchone()
    assert row is not None
    return dict(row)


def test_the_apps_pending_row_is_generated_by_the_legacy_call(conn: Conn, served: Served) -> None:
    user = make_user(conn)
    generation_id = insert_pending(conn, user, "a lighthouse at dusk")
    answer = served.invoke(user, "generate-image", legacy_body(generation_id, "a lighthouse"))

    assert set(answer) == {"success", "image", "generation_time"} and answer["success"] is True
    assert isinstance(answer["generation_time"], int)  # whole seconds, as the old function
    image = answer["image"]
    assert image["generation_id"] == str(generation_id)  # the app reads data.image.id
    assert httpx.get(image["public_url"], timeout=10).status_code == 200
    row = generation(conn, generation_id)
    assert row["status"] == "completed" and row["completed_at"] is not None
    assert row["replicate_prediction_id"]  # it went through processing with the prediction
    assert (row["width"], row["height"]) == (image["width"], image["height"])
    assert served.stack.predictions_created() == 1
    # Called again for the same row: answered from the row, nothing paid again.
    again = served.invoke(user, "generate-image", legacy_body(generation_id, "a lighthouse"))
    assert again["image"]["id"] == image["id"]
    assert served.stack.predictions_created() == 1


def test_a_failing_legacy_call_fails_the_row_with_its_message(conn: Conn, served: Served) -> None:
    user = make_user(conn)
    generation_id = insert_pending(conn, user, "an unrenderable thing")
    with pytest.raises(FunctionsHttpError) as refused:
        served.invoke(user, "generate-image", legacy_body(generation_id, "an unrenderable thing"))
    assert refused.value.status == 400
    row = generation(conn, generation_id)
    assert row["status"] == "failed" and row["error_message"] and row["completed_at"]
    assert str(refused.value.message) == row["error_message"]
    # The row no longer counts as active: the next request is admitted.
    next_id = insert_pending(conn, user, "a calm sea")
    assert served.invoke(user, "generate-image", legacy_body(next_id, "a calm sea"))["success"]


def test_two_calls_for_one_row_and_process_queue_make_one_prediction(
    conn: Conn, served: Served
) -> None:
    user = make_user(conn)
    generation_id = insert_pending(conn, user, "a red fox")
    body = legacy_body(generation_id, "a red fox")
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(served.invoke, user, "generate-image", body) for _ in range(3)]
        queue = pool.submit(served.invoke, user, "process-queue")
        answers = [call.result() for call in calls]
    assert {answer["image"]["id"] for answer in answers} == {answers[0]["image"]["id"]}
    assert queue.result()["success"] is True
    assert served.stack.predictions_created() == 1
    jobs = conn.execute(
        "select count(*) as n from job_queue where job_type = 'generate-image'"
        " and payload ->> 'generation_id' = %s",
        (str(generation_id),),
    ).fetchone()
    assert jobs == {"n": 1}


def test_a_legacy_call_without_a_row_gets_one_of_its_own(conn: Conn, served: Served) -> None:
    user = make_user(conn)
    answer = served.invoke(user, "generate-image", {"prompt": "a cat", "model_id": FLUX})
    assert set(answer) == {"success", "url", "format", "generation_time"}
    rows = conn.execute(
        "select g.status, i.public_url from image_generations g join images i"
        " on i.generation_id = g.id where g.user_id = %s",
        (user,),
    ).fetchall()
    assert rows == [{"status": "completed", "public_url": answer["url"]}]


async def _legacy_burst(served: Served, user: uuid.UUID, calls: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {served.token(user)}"}
    body = {"prompt": "a burst", "model_id": FLUX}
    limits = httpx.Limits(max_connections=calls)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        return await asyncio.gather(
            *(
                http.post(f"{served.url}/functions/v1/generate-image", json=body, headers=headers)
                for _ in range(calls)
            )
        )


def test_120_concurrent_legacy_calls_admit_the_limit_and_every_file_has_its_row(
    conn: Conn, served: Served
) -> None:
    user = make_user(conn)
    conn.execute(
        "insert into user_rate_limits (user_id, hourly_generations_limit) values (%s, 5)", (user,)
    )
    answers = asyncio.run(_legacy_burst(served, user, 120))

    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 5 and statuses.count(429) == 115, statuses
    for refused in (answer for answer in answers if answer.status_code == 429):
        assert set(refused.json()) == {"error"} and int(refused.headers["retry-after"]) > 0
    rows = conn.execute(
        "select id, status from image_generations where user_id = %s", (user,)
    ).fetchall()
    assert len(rows) == 5  # a refusal writes nothing
    assert {row["status"] for row in wait_until_ended(conn, [r["id"] for r in rows])} == {
        "completed"
    }
    assert served.stack.predictions_created() == 5
    images = conn.execute("select storage_path from images where user_id = %s", (user,)).fetchall()
    assert served.stored_files() == {row["storage_path"] for row in images}
    assert len(images) == 5


def test_a_legacy_generation_whose_worker_died_is_taken_over(conn: Conn) -> None:
    """The legacy call's work is a queue job with a lease: if the process running it dies
    mid-call, the row does not stay `processing`; the next worker takes the job over."""
    user = make_user(conn)
    row = conn.execute(
        "insert into image_generations (user_id, prompt, model, status)"
        " values (%s, 'a fox', 'flux-schnell', 'pending') returning id",
        (user,),
    ).fetchone()
    assert row is not None
    started = conn.execute(
        "select * from start_legacy_generation(p_user_id => %s, p_prompt => 'a fox',"
        " p_model_id => %s, p_generation_id => %s)",
        (user, FLUX, row["id"]),
    ).fetchone()
    assert started is not None and started["status"] == "queued"
    claimed = conn.execute("select id from claim_jobs('crashed', 1, null, 30)").fetchone()
    assert claimed == {"id": started["job_id"]}
    conn.execute("select * from begin_generation(%s, 'crashed')", (started["job_id"],))
    assert generation(conn, row["id"])["status"] == "processing"
    conn.execute(  # the crashed worker's lease runs out
        "update job_queue set locked_until = now() - interval '1 second' where id = %s",
        (started["job_id"],),
    )
    taken = conn.execute("select id, attempts from claim_jobs('next', 1, null, 30)").fetchone()
    assert taken == {"id": started["job_id"], "attempts": 2}
    resumed = conn.execute(
        "select status from begin_generation(%s, 'next')", (started["job_id"],)
    ).fetchone()
    assert resumed == {"status": "processing"}
