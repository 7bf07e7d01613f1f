"""docs/CLIENTS.md flow 9: the model lists of apps/mobile/services/models.ts and
apps/web/src/lib/api/models.ts, as PostgREST runs them for a signed-in user."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from tests.conftest import signed_in

Conn = psycopg.Connection[dict[str, Any]]


def test_the_apps_read_active_models_in_order_and_exactly_one_default(
    conn: Conn, user_id: uuid.UUID
) -> None:
    """getModels (`.eq('is_active', true).order('sort_order')`), getDefaultModel
    (`.eq('is_active', true).eq('is_default', true).single()`), getModelById
    (`.eq('id', id).eq('is_active', true).single()`), and the web's list
    (`.order('is_default', {ascending: false})`)."""
    conn.execute("update models set is_active = false where name = 'sdxl'")
    with signed_in(conn, user_id):
        active = conn.execute(
            "select * from models where is_active = true order by sort_order asc"
        ).fetchall()
        default = conn.execute(
            "select * from models where is_active = true and is_default = true"
        ).fetchall()
        by_id = conn.execute(
            "select * from models where id = %s and is_active = true", (active[1]["id"],)
        ).fetchall()
        web = conn.execute(
            "select * from models where is_active = true order by is_default desc"
        ).fetchall()
        hidden = conn.execute("select * from models where name = 'sdxl'").fetchall()
    every = conn.execute("select id, is_active from models").fetchall()
    orders = [row["sort_order"] for row in active]
    assert orders == sorted(orders)
    assert {row["id"] for row in active} == {row["id"] for row in every if row["is_active"]}
    assert [row["name"] for row in default] == ["flux-schnell"]  # `.single()`: exactly one
    assert [row["id"] for row in by_id] == [active[1]["id"]]
    assert web[0]["is_default"] and not any(row["is_default"] for row in web[1:])
    assert hidden == []  # an inactive model is not offered
    # The columns the apps read from a model row.
    assert {
        "name",
        "display_name",
        "replicate_id",
        "version",
        "default_width",
        "default_height",
        "default_steps",
        "default_guidance_scale",
        "supports_img2img",
        "estimated_time_seconds",
    } <= set(active[0])
    assert isinstance(active[0]["id"], uuid.UUID)
