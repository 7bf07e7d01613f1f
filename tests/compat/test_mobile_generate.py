"""docs/CLIENTS.md flow 1, the mobile app's main flow: it inserts its own pending
image_generations row, then calls the legacy generate-image (the other half, in the
legacy endpoint's tests) and, on an error, reports it on the row."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import signed_in

Conn = psycopg.Connection[dict[str, Any]]

# supabase-js `.insert({...}).select().single()`: PostgREST inserts the keys sent and
# returns the row.
INSERT = (
    "insert into image_generations (user_id, prompt, negative_prompt, model, style, width,"
    " height, steps, guidance_scale, status) values (%(user_id)s, %(prompt)s, null, %(model)s,"
    " %(style)s, %(width)s, %(height)s, %(steps)s, %(guidance_scale)s, 'pending') returning *"
)
REMIX = (
    "insert into image_generations (user_id, prompt, model, width, height, steps,"
    " guidance_scale, source_image_url, generation_strength, status) values (%(user_id)s,"
    " %(prompt)s, %(model)s, 1024, 1024, %(steps)s, %(guidance_scale)s, %(source_image_url)s,"
    " %(generation_strength)s, 'pending') returning *"
)


def default_model(conn: Conn, user_id: uuid.UUID) -> dict[str, Any]:
    """M/services/models.ts: the default model, `.eq('is_default', true).single()`."""
    with signed_in(conn, user_id):
        rows = conn.execute("select * from models where is_default = true").fetchall()
    assert len(rows) == 1
    return rows[0]


def test_the_mobile_app_inserts_its_pending_row_and_reports_an_error(
    conn: Conn, user_id: uuid.UUID
) -> None:
    """apps/mobile/services/imageGeneration.ts: generateImage's insert, then (the edge
    function failed) `.update({status: 'failed', error_message}).eq('id', ...)`."""
    model = default_model(conn, user_id)
    with signed_in(conn, user_id):
        row = conn.execute(
            INSERT,
            {
                "user_id": user_id,
                "prompt": "a lighthouse at dusk",
                "model": model["name"],
                "style": None,
                "width": model["default_width"],
                "height": model["default_height"],
                "steps": model["default_steps"],
                "guidance_scale": model["default_guidance_scale"],
            },
        ).fetchone()
    assert row is not None
    assert (row["status"], row["user_id"], row["model"]) == ("pending", user_id, model["name"])
    # The server fills in what the app does not send: the model's row.
    assert row["model_id"] == model["id"]
    assert (row["retry_count"], row["replicate_prediction_id"], row["completed_at"]) == (
        0,
        None,
        None,
    )

    with signed_in(conn, user_id):
        reported = conn.execute(
            "update image_generations set status = 'failed', error_message = %s"
            " where id = %s returning *",
            ("Edge Function returned a non-2xx status code", row["id"]),
        ).fetchall()
    assert len(reported) == 1
    assert reported[0]["status"] == "failed"
    assert reported[0]["error_message"] == "Edge Function returned a non-2xx status code"
    assert reported[0]["completed_at"] is not None


def test_the_remix_sheet_inserts_a_row_with_its_source_image(
    conn: Conn, user_id: uuid.UUID
) -> None:
    """apps/mobile/components/remix/RemixBottomSheet.tsx: handleRemix's insert, with the
    source image and strength, for an image-to-image model and for a text-only one."""
    with signed_in(conn, user_id):
        models = {
            row["name"]: row
            for row in conn.execute("select * from models where is_active order by sort_order")
        }
    source = "https://example.com/storage/v1/object/public/generated-images/u/1.webp"
    rows = {}
    for name in ("flux-dev", "flux-schnell"):
        with signed_in(conn, user_id):
            rows[name] = conn.execute(
                REMIX,
                {
                    "user_id": user_id,
                    "prompt": "the same, at night",
                    "model": name,
                    "steps": models[name]["default_steps"],
                    "guidance_scale": models[name]["default_guidance_scale"],
                    "source_image_url": source,
                    "generation_strength": 0.75,
                },
            ).fetchone()
    assert rows["flux-dev"] is not None and rows["flux-schnell"] is not None
    assert (rows["flux-dev"]["source_image_url"], rows["flux-dev"]["generation_strength"]) == (
        source,
        pytest.approx(0.75),
    )
    # flux-schnell takes no source image: the legacy call drops it, and so does the row.
    assert (
        rows["flux-schnell"]["source_image_url"],
        rows["flux-schnell"]["generation_strength"],
    ) == (
        None,
        None,
    )
