"""Writes a signed-in user must not make (sql/0020_client_writes.sql,
sql/0021_gallery_writes.sql), each replayed as PostgREST would run it: refused (an error,
or no row matched) with every row of image_generations, images and job_queue unchanged.

The world is built once per module; each case runs in a transaction that is rolled back,
so no case sees another's writes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import make_user, signed_in
from tests.support.generations import SCHNELL
from tests.support.pg import Server, fresh_database

Conn = psycopg.Connection[dict[str, Any]]
INSERT = (
    "insert into image_generations (user_id, prompt, model, width, height, steps,"
    " guidance_scale, status{columns}) values (%(alice)s, 'a fox', 'flux-schnell', 1024, 1024,"
    " 4, 0, 'pending'{values}) returning *"
)
REMIX = (
    "insert into image_generations (user_id, prompt, model, source_image_url,"
    " generation_strength, status) values (%(alice)s, 'a fox', 'flux-dev', {url}, {strength},"
    " 'pending') returning *"
)


def insert(columns: str = "", values: str = "") -> str:
    return INSERT.format(columns=columns and ", " + columns, values=values and ", " + values)


def remix(url: str, strength: str = "0.75") -> str:
    return REMIX.format(url=f"'{url}'", strength=strength)


def move(key: str, status: str) -> str:
    return f"update image_generations set status = '{status}' where id = %({key})s returning *"


def set_column(key: str, assignment: str) -> str:
    return f"update image_generations set {assignment} where id = %({key})s returning *"


CASES = [
    # Other users' rows.
    pytest.param(insert().replace("%(alice)s", "%(bob)s", 1), id="insert-for-another-user"),
    pytest.param(move("bob_pending", "failed"), id="cancel-another-users-generation"),
    pytest.param(move("bob_failed", "pending"), id="retry-another-users-generation"),
    pytest.param(set_column("bob_pending", "user_id = %(alice)s"), id="take-another-users-row"),
    pytest.param(set_column("alice_pending", "user_id = %(bob)s"), id="give-away-a-row"),
    pytest.param("select cancel_generation(%(bob_queued)s) and false", id="rpc-cancel-theirs"),
    pytest.param(
        "update images set is_favorite = true where id = %(bob_image)s returning *",
        id="mark-another-users-image",
    ),
    pytest.param(
        "update images set archived_at = now() where user_id = %(bob)s returning *",
        id="archive-another-users-images",
    ),
    pytest.param("delete from images where id = %(bob_image)s returning *", id="delete-theirs"),
    pytest.param("delete from image_generations where id = %(alice_failed)s", id="delete-row"),
    # Server-owned columns, on insert.
    *[
        pytest.param(insert(column, value), id=f"insert-{column}")
        for column, value in [
            ("replicate_prediction_id", "'pred-x'"),
            ("generation_time_seconds", "1"),
            ("completed_at", "now()"),
            ("priority", "100"),
            ("retry_count", "3"),
            ("model_id", "(select id from models where name = 'sdxl')"),
            ("seed", "7"),
            ("batch_id", "gen_random_uuid()"),
            ("error_message", "'x'"),
            ("id", "gen_random_uuid()"),
            ("created_at", "now() - interval '1 day'"),
            ("prediction_requested_at", "now()"),
        ]
    ],
    # Server-owned columns, on update.
    *[
        pytest.param(set_column(key, assignment), id=f"update-{assignment.split(' ')[0]}-{key}")
        for key, assignment in [
            ("alice_queued", "replicate_prediction_id = 'pred-x'"),
            ("alice_queued", "priority = 100"),
            ("alice_queued", "prompt = 'something else'"),
            ("alice_queued", "width = 4096"),
            ("alice_queued", "model = 'flux-1.1-pro-ultra'"),
            ("alice_queued", "source_image_url = 'http://169.254.169.254/'"),
            ("alice_queued", "generation_time_seconds = 0"),
            ("alice_failed", "retry_count = 5"),
            ("alice_failed", "status = 'pending', retry_count = 5"),
            ("alice_queued", "status = 'failed', retry_count = 5"),
            ("alice_completed", "batch_id = gen_random_uuid()"),
        ]
    ],
    # Status moves that are not a cancel or a retry.
    *[
        pytest.param(move(key, status), id=f"{key.split('_')[1]}-to-{status}")
        for key, status in [
            ("alice_pending", "completed"),
            ("alice_pending", "processing"),
            ("alice_pending", "queued"),
            ("alice_queued", "completed"),
            ("alice_processing", "downloading"),
            ("alice_processing", "completed"),
            ("alice_failed", "processing"),
            ("alice_failed", "queued"),
            ("alice_failed", "completed"),
            ("alice_completed", "pending"),
            ("alice_completed", "failed"),
            ("alice_completed", "queued"),
        ]
    ],
    pytest.param(
        "update image_generations set error_message = 'x' where id = %(alice_queued)s",
        id="rewrite-an-active-rows-message",
    ),
    # Rows the worker would pay for although the API refuses them.
    *[
        pytest.param(insert().replace("'pending'", f"'{status}'"), id=f"insert-{status}")
        for status in ("queued", "processing", "downloading", "completed", "failed")
    ],
    pytest.param(insert().replace("'flux-schnell'", "'sdxl'"), id="inactive-model"),
    pytest.param(insert().replace("'flux-schnell'", "'no-such-model'"), id="unknown-model"),
    pytest.param(insert().replace("'flux-schnell'", "null"), id="no-model"),
    pytest.param(insert().replace("1024, 1024", "100000, 1024"), id="absurd-width"),
    pytest.param(insert().replace("1024, 1024", "1024, 64"), id="tiny-height"),
    pytest.param(insert().replace("1024, 1024", "1024, 0"), id="zero-height"),
    pytest.param(insert().replace(" 4, 0,", " 400, 0,"), id="too-many-steps"),
    pytest.param(insert().replace(" 4, 0,", " 4, 500,"), id="absurd-guidance"),
    pytest.param(insert().replace("'a fox'", "' \t '"), id="blank-prompt"),
    pytest.param(insert().replace("'a fox'", "repeat('x', 4001)"), id="huge-prompt"),
    pytest.param(insert("style", "repeat('x', 101)"), id="huge-style"),
    pytest.param(insert("negative_prompt", "repeat('x', 4001)"), id="huge-negative"),
    pytest.param(remix("http://169.254.169.254/latest/meta-data/"), id="source-metadata"),
    pytest.param(remix("http://127.0.0.1:5432/x.png"), id="source-loopback"),
    pytest.param(remix("http://10.1.2.3/x.png"), id="source-private"),
    pytest.param(remix("http://[::ffff:127.0.0.1]/x.png"), id="source-mapped-v6"),
    pytest.param(remix("http://[fd00::1]/x.png"), id="source-unique-local-v6"),
    pytest.param(remix("http://localhost/x.png"), id="source-localhost"),
    pytest.param(remix("http://db.internal/x.png"), id="source-internal-name"),
    pytest.param(remix("http://intranet/x.png"), id="source-single-label"),
    pytest.param(remix("http://2130706433/x.png"), id="source-decimal-ip"),
    pytest.param(remix("https://user:pw@example.com/x.png"), id="source-credentials"),
    pytest.param(remix("file:///etc/passwd"), id="source-file"),
    pytest.param(remix("https://example.com/x.png", "1.5"), id="absurd-strength"),
    # Images.
    pytest.param(
        "update images set public_url = 'https://evil.test/x.webp' where id = %(alice_image)s",
        id="replace-a-public-url",
    ),
    pytest.param(
        "update images set public_url = 'https://evil.test/x.webp' where id = %(alice_empty)s",
        id="fill-in-a-foreign-url",
    ),
    pytest.param(
        "update images set storage_path = 'elsewhere.webp' where id = %(alice_image)s",
        id="move-an-images-file",
    ),
    pytest.param(
        "update images set download_count = 1000 where id = %(alice_image)s", id="download-count"
    ),
    pytest.param(
        "update images set generation_id = %(alice_queued)s where id = %(alice_image)s",
        id="reattach-an-image",
    ),
    pytest.param(
        "insert into images (user_id, filename, storage_path, public_url)"
        " values (%(alice)s, 'f', 'p', 'u')",
        id="insert-an-image",
    ),
]


# Permission denied (grants, RLS), a refused value (the triggers' 22023, a check, a
# constraint's 23xxx), or PostgREST's own status codes.
REFUSALS = {"42501", "22023", "23514", "23502", "23503", "PT429"}


def world(conn: Conn) -> dict[str, uuid.UUID]:
    """Alice and Bob, each with a generation in every status and an image; Alice also
    with an image whose public_url is empty."""
    ids: dict[str, uuid.UUID] = {}
    conn.execute("update models set is_active = false where name = 'sdxl'")
    for name in ("alice", "bob"):
        user = ids[name] = make_user(conn)
        started = [
            conn.execute(
                "select * from start_generation(%s, 'a fox', %s)", (user, SCHNELL)
            ).fetchone()
            for _ in range(5)
        ]
        jobs = [row["job_id"] for row in started if row]
        gens = [row["generation_id"] for row in started if row]
        conn.execute("select * from claim_jobs('w', 10, p_job_types => null)")
        image = conn.execute(
            "select * from finish_generation(%s, %s, %s, 10, 1024, 1024, 'webp', %s, 'w')",
            (gens[0], f"{user}/{gens[0]}.webp", f"https://s.test/{user}.webp", jobs[0]),
        ).fetchone()
        conn.execute("select fail_generation(%s, 'w', 'boom', p_retryable => false)", (jobs[1],))
        conn.execute("select begin_generation(%s, 'w')", (jobs[2],))
        conn.execute("select release_jobs('w', array[%s]::uuid[])", (jobs[3],))
        empty = conn.execute(
            "select * from finish_generation(%s, %s, '', 10, 1024, 1024, 'webp', %s, 'w')",
            (gens[4], f"{user}/{gens[4]}.webp", jobs[4]),
        ).fetchone()
        with signed_in(conn, user):
            pending = conn.execute(
                "insert into image_generations (user_id, prompt, model, status)"
                " values (%s, 'a fox', 'flux-schnell', 'pending') returning id",
                (user,),
            ).fetchone()
        assert image and empty and pending
        ids |= {
            f"{name}_completed": gens[0],
            f"{name}_failed": gens[1],
            f"{name}_processing": gens[2],
            f"{name}_queued": gens[3],
            f"{name}_pending": pending["id"],
            f"{name}_image": image["id"],
            f"{name}_empty": empty["id"],
        }
    return ids


def snapshot(conn: Conn) -> dict[str, list[dict[str, Any]]]:
    return {
        table: conn.execute(f"select * from {table} order by id").fetchall()
        for table in ("image_generations", "images", "job_queue")
    }


@pytest.fixture(scope="module")
def matrix_database(pg_server: Server, template_database: str) -> Iterator[str]:
    yield from fresh_database(pg_server, template_database)


@pytest.fixture(scope="module")
def ids(matrix_database: str) -> dict[str, uuid.UUID]:
    with psycopg.connect(matrix_database, autocommit=True, row_factory=dict_row) as setup:
        return world(setup)


@pytest.fixture
def conn(matrix_database: str, ids: dict[str, uuid.UUID]) -> Iterator[Conn]:
    """The module's world, in a transaction this case's writes are rolled back with."""
    with (
        psycopg.connect(matrix_database, autocommit=True, row_factory=dict_row) as case,
        case.transaction(force_rollback=True),
    ):
        yield case


@contextmanager
def as_user(conn: Conn, user: uuid.UUID) -> Iterator[None]:
    """signed_in, nested in the case's transaction: a savepoint that keeps the role when it
    succeeds, so the role is reset for the checks that follow."""
    try:
        with signed_in(conn, user):
            yield
    finally:
        conn.execute("reset role")


@pytest.mark.parametrize("statement", CASES)
def test_a_user_cannot(conn: Conn, ids: dict[str, uuid.UUID], statement: str) -> None:
    before = snapshot(conn)
    refused = False
    try:
        with as_user(conn, ids["alice"]):
            cursor = conn.execute(statement, ids)
            refused = cursor.rowcount == 0 or (
                cursor.description is not None and cursor.fetchall() == [{"?column?": False}]
            )
    except psycopg.Error as error:
        # Refused by a rule, not by a mistake in the statement.
        assert error.sqlstate in REFUSALS, (error.sqlstate, str(error))
        refused = True
    assert refused, statement
    assert snapshot(conn) == before


def test_a_user_cannot_insert_beyond_their_limit(conn: Conn, ids: dict[str, uuid.UUID]) -> None:
    """An inserted row counts against the user's hourly limit, as a start through the API
    does (imagegen.admit_generation)."""
    with as_user(conn, ids["alice"]):
        conn.execute(insert(), ids)
        limits = conn.execute("select get_user_limits(%s) as l", (ids["alice"],)).fetchone()
    assert limits is not None and limits["l"]["hourly_used"] >= 1
    conn.execute("select configure_admission(p_hourly_limit => %s)", (limits["l"]["hourly_used"],))
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as refused, as_user(conn, ids["alice"]):
        conn.execute(insert(), ids)
    assert refused.value.sqlstate == "PT429"
    assert snapshot(conn) == before
