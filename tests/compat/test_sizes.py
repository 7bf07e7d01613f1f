"""Sizes (docs/CLIENTS.md §2 item 8): the mobile app's aspect-ratio presets
(M/hooks/useImageGeneration.ts) are offered for every model the apps list
(M/services/models.ts: active models), and the old functions refused none. Every preset
on every model starts (200) and ends with a stored image whose row reports the size the
file really has, the size the model renders for the fitted request."""

from __future__ import annotations

import io
import uuid
from typing import Any

import psycopg

from tests.conftest import make_user
from tests.support.served import Served, wait_until_ended
from worker.images import inspect_image
from worker.models import GenerationParams, expected_size

PRESETS = [
    (1024, 1024),
    (1344, 768),
    (768, 1344),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1536, 640),
    (640, 1536),
]
Conn = psycopg.Connection[Any]


def test_every_preset_works_on_every_model(conn: Conn, served: Served) -> None:
    models = conn.execute(
        "select id, name, default_steps from models where is_active order by sort_order"
    ).fetchall()
    assert len(models) >= 17
    user = make_user(conn)
    conn.execute(  # 153 generations at once: beyond the default hourly and concurrent limits
        "insert into user_rate_limits (user_id, hourly_generations_limit,"
        " max_concurrent_generations) values (%s, 0, 0)",
        (user,),
    )
    started: dict[uuid.UUID, tuple[str, int, int]] = {}
    for model in models:
        for width, height in PRESETS:
            # The web app names the model by its row id (W/api/generate-async.ts).
            answer = served.invoke(
                user,
                "start-generation",
                {
                    "prompt": "a preset",
                    "model_id": str(model["id"]),
                    "width": width,
                    "height": height,
                },
            )
            assert answer["success"] is True, (model["name"], width, height)
            started[uuid.UUID(answer["generation_id"])] = (model["name"], width, height)

    rows = wait_until_ended(conn, list(started), timeout=240)
    assert [row for row in rows if row["status"] != "completed"] == []
    for row in rows:
        job = conn.execute(
            "select payload from job_queue where job_type = 'generate-image'"
            " and payload ->> 'generation_id' = %s",
            (str(row["id"]),),
        ).fetchone()
        image = conn.execute(
            "select * from images where generation_id = %s", (row["id"],)
        ).fetchone()
        assert job is not None and image is not None
        stored = served.stack.storage_root / "objects" / "generated-images" / image["storage_path"]
        real = inspect_image(io.BytesIO(stored.read_bytes()))
        rendered = expected_size(GenerationParams.from_payload(job["payload"]))
        case = started[row["id"]]
        assert (image["width"], image["height"]) == (real.width, real.height) == rendered, case
        assert (row["width"], row["height"]) == rendered, case
