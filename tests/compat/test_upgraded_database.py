"""The apps' writes on the old Picture database after `imagegen migrate` (tests/
old_picture.py): the grants, policies and triggers of sql/0020 and 0021 hold there too,
next to the old database's own policies."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.conftest import signed_in
from tests.support.old_picture import OldPicture

Conn = psycopg.Connection[dict[str, Any]]


def test_the_mobile_flow_and_the_gallery_work_on_the_upgraded_database(
    upgraded_picture: tuple[OldPicture, Conn],
) -> None:
    """apps/mobile/services/imageGeneration.ts (insert, error report),
    apps/mobile/app/image/[id].tsx (public_url filled in, delete) and
    apps/mobile/services/archiveService.ts (archive)."""
    old, conn = upgraded_picture
    with signed_in(conn, old.alice):
        row = conn.execute(
            "insert into image_generations (user_id, prompt, negative_prompt, model, style,"
            " width, height, steps, guidance_scale, status) values (%s, 'a fox', null,"
            " 'flux-schnell', null, 1024, 1024, 4, 0, 'pending') returning *",
            (old.alice,),
        ).fetchone()
        assert row is not None and row["model_id"] == old.default_model
        conn.execute(
            "update image_generations set status = 'failed', error_message = 'timeout'"
            " where id = %s",
            (row["id"],),
        )
        # The old database leaves public_url empty where its worker did not set it.
        (mine, *_) = conn.execute(
            "select id, storage_path from images order by created_at"
        ).fetchall()
    conn.execute("update images set public_url = null where id = %s", (mine["id"],))
    derived = (
        "https://old.supabase.co/storage/v1/object/public/generated-images/" + mine["storage_path"]
    )
    with signed_in(conn, old.alice):
        assert (
            conn.execute(
                "update images set public_url = %s, archived_at = now() where id = %s",
                (derived, mine["id"]),
            ).rowcount
            == 1
        )
        assert conn.execute("delete from images where id = %s", (mine["id"],)).rowcount == 1
        # Bob's rows are out of reach.
        assert conn.execute("delete from images where user_id = %s", (old.bob,)).rowcount == 0
        assert (
            conn.execute(
                "update image_generations set status = 'failed' where user_id = %s", (old.bob,)
            ).rowcount
            == 0
        )
    status = conn.execute(
        "select status, error_message from image_generations where id = %s", (row["id"],)
    ).fetchone()
    assert status == {"status": "failed", "error_message": "timeout"}
    assert conn.execute("select count(*) as n from images").fetchone() == {"n": 2}


def test_the_old_databases_own_policies_do_not_widen_the_writes(
    upgraded_picture: tuple[OldPicture, Conn],
) -> None:
    """An old project may carry permissive policies of its own: ours are restrictive on
    ownership, so another user's rows stay out of reach, and the triggers still check."""
    old, conn = upgraded_picture
    conn.execute(
        'create policy "Anyone updates (old)" on image_generations for update using (true)'
    )
    conn.execute('create policy "Anyone deletes (old)" on images for delete using (true)')
    with signed_in(conn, old.alice):
        assert (
            conn.execute(
                "update image_generations set status = 'failed' where user_id = %s", (old.bob,)
            ).rowcount
            == 0
        )
        assert conn.execute("delete from images where user_id = %s", (old.bob,)).rowcount == 0
    with (
        signed_in(conn, old.alice),
        pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot be moved"),
    ):
        conn.execute(
            "update image_generations set status = 'completed' where id = %s",
            (old.queued_generation,),
        )
