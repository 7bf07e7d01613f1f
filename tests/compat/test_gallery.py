"""docs/CLIENTS.md flow 6, the gallery and the archive, as the apps' statements run through
PostgREST: archive filters with an exact count and a range, favourites, publishing,
filling in a missing public_url, and deleting their own images (sql/0021_gallery_writes.sql)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import make_user, signed_in
from tests.support.generations import SCHNELL

Conn = psycopg.Connection[dict[str, Any]]
STORAGE_URL = "https://project.supabase.co/storage/v1/object/public/generated-images/"


def image(conn: Conn, user_id: uuid.UUID, public_url: str | None = None) -> uuid.UUID:
    """A finished generation's image, as the worker stores it."""
    started = conn.execute(
        "select * from start_generation(%s, 'a red fox', %s)", (user_id, SCHNELL)
    ).fetchone()
    assert started is not None
    path = f"{user_id}/{started['generation_id']}.webp"
    conn.execute("select * from claim_jobs('w', 1)")
    row = conn.execute(
        "select * from finish_generation(%s, %s, %s, 10, 1024, 1024, 'webp', %s, 'w')",
        (started["generation_id"], path, public_url or STORAGE_URL + path, started["job_id"]),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def gallery(conn: Conn, user_id: uuid.UUID, archived: bool) -> tuple[list[uuid.UUID], int]:
    """useImageFetching.ts / archiveService.ts: `.select('*', {count: 'exact'})
    .eq('user_id', id).is('archived_at', null)` (or `.not('archived_at', 'is', null)`)
    `.order('created_at', {ascending: false}).range(0, 19)`."""
    where = "archived_at is not null" if archived else "archived_at is null"
    with signed_in(conn, user_id):
        rows = conn.execute(
            f"select *, count(*) over () as total from images where user_id = %s and {where}"
            " order by created_at desc limit 20 offset 0",
            (user_id,),
        ).fetchall()
    return [row["id"] for row in rows], (rows[0]["total"] if rows else 0)


def test_the_gallery_archives_marks_and_deletes_its_own_images(
    conn: Conn, user_id: uuid.UUID
) -> None:
    """apps/mobile/services/archiveService.ts (archiveImage, restoreImage,
    deleteArchivedImage), apps/mobile/app/image/[id].tsx (favourite, publish, delete) and
    apps/web/src/lib/api/images.ts (the same calls from the web)."""
    first, second = image(conn, user_id), image(conn, user_id)
    other_user = make_user(conn)
    theirs = image(conn, other_user)
    assert gallery(conn, user_id, archived=False) == ([second, first], 2)

    with signed_in(conn, user_id):
        conn.execute("update images set archived_at = now() where id = %s", (first,))
    assert gallery(conn, user_id, archived=False) == ([second], 1)
    assert gallery(conn, user_id, archived=True) == ([first], 1)
    with signed_in(conn, user_id):
        conn.execute("update images set archived_at = null where id = %s", (first,))
        conn.execute("update images set is_favorite = not is_favorite where id = %s", (second,))
        conn.execute("update images set is_public = true where id = %s", (second,))
        marked = conn.execute(
            "select is_favorite, is_public from images where id = %s", (second,)
        ).fetchone()
    assert marked == {"is_favorite": True, "is_public": True}
    assert gallery(conn, user_id, archived=True) == ([], 0)

    with signed_in(conn, user_id):
        # deleteArchivedImage: the storage_path first (for Storage), then the row.
        path = conn.execute("select storage_path from images where id = %s", (first,)).fetchone()
        deleted = conn.execute("delete from images where id = %s", (first,)).rowcount
        # Someone else's image is not theirs to delete: PostgREST answers with 0 rows.
        not_mine = conn.execute("delete from images where id = %s", (theirs,)).rowcount
    assert path is not None and path["storage_path"].startswith(f"{user_id}/")
    assert (deleted, not_mine) == (1, 0)
    left = conn.execute("select id from images order by created_at").fetchall()
    assert [row["id"] for row in left] == [second, theirs]
    # The generation stays, as the apps leave it (its row is the history).
    assert conn.execute("select count(*) as n from image_generations").fetchone() == {"n": 3}


def test_a_missing_public_url_is_filled_in_and_a_set_one_stays(
    conn: Conn, user_id: uuid.UUID
) -> None:
    """apps/mobile/app/image/[id].tsx, fetchAllImages: where `!img.public_url &&
    img.storage_path`, `.update({public_url: getPublicUrl(storage_path)})`."""
    missing, present = image(conn, user_id, public_url=""), image(conn, user_id)
    path = conn.execute("select storage_path from images where id = %s", (missing,)).fetchone()
    assert path is not None
    derived = STORAGE_URL + path["storage_path"]
    with signed_in(conn, user_id):
        filled = conn.execute(
            "update images set public_url = %s where id = %s", (derived, missing)
        ).rowcount
    assert filled == 1
    for target, url in ((present, "https://evil.test/x.webp"), (missing, derived + "?x")):
        with (
            signed_in(conn, user_id),
            pytest.raises(psycopg.errors.InvalidParameterValue, match="public_url"),
        ):
            conn.execute("update images set public_url = %s where id = %s", (url, target))
    urls = {row["id"]: row["public_url"] for row in conn.execute("select * from images")}
    assert urls[missing] == derived
    assert urls[present].startswith(STORAGE_URL)
