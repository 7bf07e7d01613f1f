"""What the cleanup-storage job asks of SQL (sql/0150_storage_cleanup.sql): verdicts on
listed objects, the rows whose object is gone, the nightly enqueue."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.conftest import make_user

Conn = psycopg.Connection[dict[str, Any]]
OLD = (datetime.now(UTC) - timedelta(days=3)).isoformat()
URL = "https://ref.supabase.co/storage/v1/object/public/generated-images/"


def verdicts(
    conn: Conn, names: list[str], stamps: Sequence[str | None] | None = None
) -> dict[str, str]:
    rows = conn.execute(
        "select * from storage_object_verdicts(%s, %s, 86400)",
        (names, list(stamps) if stamps is not None else [OLD] * len(names)),
    ).fetchall()
    return {row["name"]: row["verdict"] for row in rows}


def generation(
    conn: Conn, user_id: uuid.UUID, status: str = "completed", **extra: Any
) -> uuid.UUID:
    columns = ", ".join(["user_id", "prompt", "status", *extra])
    values = ", ".join(["%s"] * (3 + len(extra)))
    row = conn.execute(
        f"insert into image_generations ({columns}) values ({values}) returning id",
        (user_id, "p", status, *extra.values()),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def image(conn: Conn, user_id: uuid.UUID, storage_path: str, public_url: str) -> None:
    conn.execute(
        "insert into images (generation_id, user_id, filename, storage_path, public_url)"
        " values (%s, %s, 'f', %s, %s)",
        (generation(conn, user_id), user_id, storage_path, public_url),
    )


def test_each_listed_object_gets_its_verdict(conn: Conn, user_id: uuid.UUID) -> None:
    u = str(user_id)
    image(conn, user_id, f"{u}/a.webp", URL + f"{u}/a.webp")
    image(conn, user_id, f"{u}/b.webp", URL + f"{u}/%C3%A9t%C3%A9.webp?download")
    active = generation(conn, user_id, "queued")
    source = generation(conn, user_id, "processing", source_image_url=URL + f"{u}/source.png")
    assert source
    answer = verdicts(
        conn,
        [
            f"{u}/a.webp",
            f"{u}/été.webp",
            f"{u}/{active}.webp",
            f"{u}/{str(active).upper()}.PNG",
            f"{u}/source.png",
            f"{u}/stray.webp",
            f"{u}/fresh.webp",
            f"{u}/unknown-age.webp",
        ],
        [*[OLD] * 6, datetime.now(UTC).isoformat(), None],
    )
    assert answer == {
        f"{u}/a.webp": "referenced",
        f"{u}/été.webp": "referenced",  # the public URL's path, decoded
        f"{u}/{active}.webp": "in_use",
        f"{u}/{str(active).upper()}.PNG": "in_use",
        f"{u}/source.png": "in_use",  # an active generation still reads it
        f"{u}/stray.webp": "orphan",
        f"{u}/fresh.webp": "recent",
        f"{u}/unknown-age.webp": "recent",  # an age it cannot tell is never old enough
    }


def test_a_retried_generation_keeps_its_old_file(conn: Conn, user_id: uuid.UUID) -> None:
    done = generation(conn, user_id, "failed")
    path = f"{user_id}/{done}.webp"
    assert verdicts(conn, [path]) == {path: "in_use"}  # it changed within the grace period
    conn.execute(
        "update image_generations set updated_at = now() - interval '2 days' where id = %s",
        (done,),
    )
    assert verdicts(conn, [path]) == {path: "orphan"}


def test_rows_whose_object_is_gone(conn: Conn) -> None:
    alice, bob = make_user(conn), make_user(conn)
    image(conn, alice, f"{alice}/here.webp", URL)
    image(conn, alice, f"{alice}/gone.webp", URL)
    image(conn, alice, f"{alice}/sub/deeper.webp", URL)
    image(conn, bob, f"{bob}/gone.webp", URL)
    later = datetime.now(UTC) + timedelta(minutes=5)
    found = conn.execute(
        "select storage_missing_objects(%s, %s, %s, 20) as m",
        (str(alice), [f"{alice}/here.webp"], later),
    ).fetchone()
    assert found == {"m": {"count": 1, "sample": [f"{alice}/gone.webp"]}}
    empty = conn.execute(
        "select storage_missing_objects(%s, %s, %s, 20) as m", (str(alice), [], later)
    ).fetchone()
    assert empty is not None and empty["m"]["count"] == 2
    # Written after the listing began: not reported (its object may not be listed yet).
    early = datetime.now(UTC) - timedelta(minutes=5)
    none = conn.execute(
        "select storage_missing_objects(%s, %s, %s, 20) as m", (str(alice), [], early)
    ).fetchone()
    assert none == {"m": {"count": 0, "sample": []}}
    folders = conn.execute(
        "select storage_missing_folders(%s, %s, 1) as m", (["", str(alice)], later)
    ).fetchone()
    assert folders is not None and folders["m"]["count"] == 2  # bob's and alice/sub's
    assert len(folders["m"]["sample"]) == 1


def test_the_nightly_job_is_enqueued_once(conn: Conn) -> None:
    first = conn.execute("select enqueue_storage_cleanup() as id").fetchone()
    second = conn.execute("select enqueue_storage_cleanup() as id").fetchone()
    assert first == second
    row = conn.execute("select job_type, status, dedupe_key from job_queue").fetchall()
    assert row == [
        {"job_type": "cleanup-storage", "status": "pending", "dedupe_key": "cleanup-storage"}
    ]


@pytest.mark.parametrize(
    "function",
    [
        "storage_object_verdicts(text[], text[], integer)",
        "storage_missing_objects(text, text[], timestamptz, integer)",
        "storage_missing_folders(text[], timestamptz, integer)",
        "enqueue_storage_cleanup()",
    ],
)
def test_only_the_service_role_may_call_them(conn: Conn, function: str) -> None:
    row = conn.execute(
        "select has_function_privilege('authenticated', %(f)s, 'execute') as authenticated,"
        " has_function_privilege('anon', %(f)s, 'execute') as anon,"
        " has_function_privilege('service_role', %(f)s, 'execute') as service",
        {"f": f"public.{function}"},
    ).fetchone()
    assert row == {"authenticated": False, "anon": False, "service": True}
