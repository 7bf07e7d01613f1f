"""The web app's async generate (docs/CLIENTS.md §2 flow 2, W/api/generate-async.ts through
S/queue.ts startImageGeneration): start-generation with `model_id` = models.id (a uuid),
then `select('*')` of the row by id every 2 s as the signed-in user, to a stored image."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import make_user, signed_in
from tests.support.served import Served

Conn = psycopg.Connection[Any]


def poll(conn: Conn, user: uuid.UUID, generation_id: str, timeout: float = 60) -> dict[str, Any]:
    """supabase.from('image_generations').select('*').eq('id', id).single(), until it ends."""
    deadline = time.monotonic() + timeout
    while True:
        with signed_in(conn, user):
            row = conn.execute(
                "select * from image_generations where id = %s", (generation_id,)
            ).fetchone()
        assert row is not None
        if row["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return dict(row)
        time.sleep(0.1)


@pytest.mark.parametrize("name", ["flux-schnell", "flux-dev", "sdxl"])
def test_web_generate_with_the_models_uuid_ends_with_a_stored_image(
    conn: Conn, served: Served, name: str
) -> None:
    model = conn.execute("select id from models where name = %s", (name,)).fetchone()
    assert model is not None
    user = make_user(conn)
    answer = served.invoke(
        user,
        "start-generation",
        {
            "prompt": "a lighthouse at dusk",
            "model_id": str(model["id"]),
            "width": 1216,
            "height": 832,
        },
    )
    assert answer["success"] is True and answer["status"] == "queued"
    row = poll(conn, user, answer["generation_id"])
    assert row["status"] == "completed", row["error_message"]
    assert (row["model_id"], row["model"]) == (model["id"], name)
    with signed_in(conn, user):
        image = conn.execute(
            "select * from images where generation_id = %s", (answer["generation_id"],)
        ).fetchone()
    assert image is not None
    download = httpx.get(image["public_url"], timeout=10)
    assert download.status_code == 200 and len(download.content) == image["file_size"]
