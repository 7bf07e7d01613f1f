"""`imagegen migrate` on the old Picture database (tests/support/old_picture.py): upgraded in place,
every old row kept, the old holes closed, the old jobs run, a failure leaves it untouched;
and on an empty Supabase-shaped database, the bucket and its policies."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from devstack.postgres import BIN_DIR
from tests.conftest import signed_in
from tests.integration.test_worker import run_worker_until
from tests.sql.test_migrations import MIGRATION_NAMES, run_cli
from tests.support.old_picture import STORAGE, SUPABASE, OldPicture, build_old_picture, old_rows
from tests.support.schema_snapshot import dump_schema
from tests.support.stack import run_stack
from worker.migrate import MIGRATIONS_DIR, MigrationError, migrate

Conn = psycopg.Connection[dict[str, Any]]

# What a signed-in user (or anyone) may call: README, "API". Everything else is private.
USER_FUNCTIONS = {
    "public.cancel_generation(uuid)",
    "public.get_user_limits(uuid)",
    "public.generation_status(uuid)",
    "public.check_rate_limit(uuid,integer)",
}


@pytest.fixture
def old(empty_database_url: str) -> OldPicture:
    return build_old_picture(empty_database_url)


@pytest.fixture
def old_conn(empty_database_url: str, old: OldPicture) -> Iterator[Conn]:
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def callable_by_users(conn: Conn) -> set[str]:
    """Functions in public or imagegen that anon or authenticated may execute (trigger
    functions aside: nobody can call those)."""
    rows = conn.execute(
        "select p.oid::regprocedure::text as signature, n.nspname from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname in ('public', 'imagegen')"
        " and p.prorettype <> 'trigger'::regtype"
        " and (has_function_privilege('anon', p.oid, 'execute')"
        "      or has_function_privilege('authenticated', p.oid, 'execute'))"
    ).fetchall()
    return {
        row["signature"] if "." in row["signature"] else f"{row['nspname']}.{row['signature']}"
        for row in rows
    }


# The upgrade itself


def test_the_old_database_is_upgraded_in_place_and_keeps_every_row(
    empty_database_url: str, old_conn: Conn
) -> None:
    before = old_rows(old_conn)
    assert migrate(empty_database_url) == MIGRATION_NAMES
    assert old_rows(old_conn, like=before) == before
    # Only the seed adds rows (the model families the operators lacked).
    added = {t: len(rows) - len(before[t]) for t, rows in old_rows(old_conn).items()}
    assert {t: n for t, n in added.items() if n} == {"models": 14}

    # The columns the old tables lacked exist now, filled for the old rows.
    missing = old_conn.execute(
        "select count(*) as n from image_generations where updated_at is null"
    ).fetchone()
    assert missing == {"n": 0}
    stuck = old_conn.execute(
        "select column_name from information_schema.columns"
        " where table_schema = 'public' and table_name = 'stuck_jobs' order by ordinal_position"
    ).fetchall()
    assert {"minutes_processing", "minutes_stuck", "locked_until"} <= {
        row["column_name"] for row in stuck
    }
    # Every constraint holds for every old row (none was added `not valid`).
    unchecked = old_conn.execute("select conname from pg_constraint where not convalidated")
    assert unchecked.fetchall() == []
    # A second run changes nothing.
    schema, rows = dump_schema(empty_database_url), old_rows(old_conn)
    assert migrate(empty_database_url) == []
    assert dump_schema(empty_database_url) == schema
    assert old_rows(old_conn) == rows


def test_the_cli_upgrades_the_old_database(empty_database_url: str, old: OldPicture) -> None:
    first = run_cli("migrate", "--database-url", empty_database_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {name}" for name in MIGRATION_NAMES]
    second = run_cli("migrate", "--database-url", empty_database_url)
    assert (second.returncode, second.stdout.strip()) == (0, "database is up to date")


def test_a_broken_migration_leaves_the_old_database_as_it_was(
    empty_database_url: str, old_conn: Conn, tmp_path: Path
) -> None:
    migrations = tmp_path / "sql"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    (migrations / "9999_broken.sql").write_text(
        "alter table public.images add column half_done int;\nselect no_such_function();\n"
    )
    schema, rows = dump_schema(empty_database_url), old_rows(old_conn)

    with pytest.raises(MigrationError) as refused:
        migrate(empty_database_url, migrations)
    message = str(refused.value)
    assert "migration 9999_broken.sql failed: function no_such_function() does not exist" in (
        message
    )
    assert f"nothing was applied ({', '.join(MIGRATION_NAMES)} rolled back too)" in message

    assert dump_schema(empty_database_url) == schema
    assert old_rows(old_conn) == rows
    assert old_conn.execute("select to_regnamespace('imagegen') as s").fetchone() == {"s": None}


def test_the_old_grants_that_opened_holes_are_closed(
    old: OldPicture, old_conn: Conn, empty_database_url: str
) -> None:
    # The holes, as the old database has them: any user enqueues any job and reads every
    # user's failed and stuck payloads.
    with signed_in(old_conn, old.alice):
        old_conn.execute("select enqueue_job('download-image', '{\"output_url\": \"x\"}')")
        seen = old_conn.execute("select payload from failed_jobs_recent").fetchall()
        stuck = old_conn.execute("select payload from stuck_jobs").fetchall()
    assert len(seen) == 2 and len(stuck) == 1

    migrate(empty_database_url)
    with signed_in(old_conn, old.alice), pytest.raises(psycopg.errors.InsufficientPrivilege):
        old_conn.execute("select enqueue_job('download-image', '{\"output_url\": \"x\"}')")
    with signed_in(old_conn, old.alice):
        assert old_conn.execute("select * from failed_jobs_recent").fetchall() == []
        assert old_conn.execute("select * from stuck_jobs").fetchall() == []
        # Their own jobs stay readable (the shared client library reads job_queue).
        own = old_conn.execute("select count(*) as n from job_queue").fetchone()
    assert own == {"n": 1}  # the job alice enqueued herself before the upgrade
    assert callable_by_users(old_conn) == USER_FUNCTIONS
    policies = old_conn.execute(
        "select policyname from pg_policies where tablename = 'job_queue'"
    ).fetchall()
    assert [row["policyname"] for row in policies] == ["Users read their own jobs"]


def test_the_operators_verify_script_finds_nothing_missing(
    empty_database_url: str, old: OldPicture
) -> None:
    """picture/verify-db-setup.sql's checks, restated: tables, functions, views, indexes,
    a test job enqueued with the old three arguments and deleted, and the final counts."""
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        for kind, catalog, name in [
            ("table", "pg_tables where schemaname = 'public' and tablename", "job_queue"),
            ("view", "pg_views where schemaname = 'public' and viewname", "queue_health"),
            ("view", "pg_views where schemaname = 'public' and viewname", "failed_jobs_recent"),
            ("view", "pg_views where schemaname = 'public' and viewname", "stuck_jobs"),
        ]:
            found = conn.execute(f"select exists (select from {catalog} = %s)", (name,))
            assert found.fetchone() == (True,), f"{kind} {name} missing"
        functions = conn.execute(
            "select count(*) from pg_proc p join pg_namespace n on p.pronamespace = n.oid"
            " where n.nspname = 'public'"
            " and p.proname in ('enqueue_job', 'claim_next_job', 'complete_job')"
        ).fetchone()
        assert functions == (3,)
        conn.execute(
            "do $$ declare v_job_id uuid; begin"
            " select enqueue_job('generate-image',"
            ' \'{"test": true, "prompt": "Database verification test"}\'::jsonb, 0)'
            " into v_job_id; delete from job_queue where id = v_job_id; end $$"
        )
        indexes = conn.execute(
            "select count(*) from pg_indexes where schemaname = 'public' and tablename = 'job_queue'"
        ).fetchone()
        assert indexes is not None and indexes[0] >= 5


def test_the_real_verify_script_runs_unchanged(empty_database_url: str, old: OldPicture) -> None:
    """The operators' own script, where PICTURE_VERIFY_SQL points at it (read from the old
    repository; not committed here): psql runs it unchanged and nothing is MISSING."""
    script = os.environ.get("PICTURE_VERIFY_SQL")
    if not script:
        pytest.skip("PICTURE_VERIFY_SQL (path to the old repo's verify-db-setup.sql) not set")
    migrate(empty_database_url)
    result = subprocess.run(
        [
            str(BIN_DIR / "psql"),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            empty_database_url,
            "-f",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "MISSING" not in result.stdout and "EXISTS" in result.stdout
    assert "Test job cleaned up" in result.stderr


def test_the_operator_queries_of_contract_3_run(empty_database_url: str, old_conn: Conn) -> None:
    migrate(empty_database_url)
    counts = old_conn.execute("SELECT status, COUNT(*) FROM job_queue GROUP BY status").fetchall()
    assert {row["status"]: row["count"] for row in counts} == {
        "pending": 1,
        "processing": 1,
        "failed": 2,
        "completed": 3,
    }
    health = old_conn.execute("select * from queue_health").fetchall()
    assert sum(row["count"] for row in health) == 7
    failed = old_conn.execute("select job_type, error_message from failed_jobs_recent").fetchall()
    assert sorted(row["job_type"] for row in failed) == ["download-image", "generate-image"]
    stuck = old_conn.execute("select * from stuck_jobs").fetchall()
    assert len(stuck) == 1 and float(stuck[0]["minutes_stuck"]) > 29


async def test_the_old_jobs_left_pending_or_processing_are_run_to_a_stored_image(
    empty_database_url: str, old: OldPicture, old_conn: Conn, tmp_path: Path
) -> None:
    migrate(empty_database_url)
    queued = old_conn.execute("select * from job_queue where id = %s", (old.queued_job,))
    payload = queued.fetchone()["payload"]
    assert payload["model_id"] == "black-forest-labs/flux-schnell"  # was the models.id uuid

    with run_stack(empty_database_url, tmp_path / "storage") as stack:
        assert old.queued_generation is not None and old.stuck_generation is not None
        ids = [old.queued_generation, old.stuck_generation]
        rows = await run_worker_until(stack.settings(), empty_database_url, ids, timeout=60)

    assert {row["status"] for row in rows.values()} == {"completed"}, rows
    images = old_conn.execute(
        "select generation_id, storage_path, width, height from images"
        " where generation_id = any(%s)",
        (ids,),
    ).fetchall()
    assert {row["generation_id"] for row in images} == set(ids)
    for image in images:
        stored = tmp_path / "storage" / "objects" / "generated-images" / image["storage_path"]
        assert stored.is_file() and stored.stat().st_size > 0
    jobs = old_conn.execute(
        "select id, status, attempts from job_queue where id = any(%s)",
        ([old.queued_job, old.stuck_job],),
    ).fetchall()
    assert {row["status"] for row in jobs} == {"completed"}


# Models


def test_the_seed_adds_only_missing_families_and_never_a_second_default(
    empty_database_url: str, old: OldPicture, old_conn: Conn
) -> None:
    operators = old_conn.execute("select * from models order by id").fetchall()
    migrate(empty_database_url)
    after = {row["id"]: row for row in old_conn.execute("select * from models").fetchall()}
    # The operators' rows are untouched, column by column.
    assert [after[row["id"]] for row in operators] == operators
    defaults = [row["id"] for row in after.values() if row["is_default"]]
    assert defaults == [old.default_model]
    per_replicate_id: dict[str, int] = {}
    for row in after.values():
        per_replicate_id[row["replicate_id"]] = per_replicate_id.get(row["replicate_id"], 0) + 1
    assert per_replicate_id["black-forest-labs/flux-schnell"] == 1
    assert per_replicate_id["black-forest-labs/flux-dev"] == 2  # the operators' own two
    assert per_replicate_id["stability-ai/sdxl"] == 1
    assert per_replicate_id["google/imagen-4"] == 1  # a family they lacked is added
    # The apps' .single() lookup of the default finds exactly one row; a second default
    # is refused by the database.
    with pytest.raises(psycopg.errors.UniqueViolation):
        old_conn.execute("update models set is_default = true where name = 'sdxl-custom'")


def test_two_default_models_stop_the_upgrade_with_a_clear_message(
    empty_database_url: str, old_conn: Conn
) -> None:
    old_conn.execute("update models set is_default = true where name = 'sdxl-custom'")
    schema = dump_schema(empty_database_url)
    with pytest.raises(
        MigrationError, match=r"more than one is_default row \(flux-schnell, sdxl-custom\)"
    ):
        migrate(empty_database_url)
    assert dump_schema(empty_database_url) == schema


def test_a_generation_starts_by_models_id_or_replicate_id_on_the_old_models(
    empty_database_url: str, old: OldPicture, old_conn: Conn
) -> None:
    migrate(empty_database_url)
    for model_id in (str(old.flux_dev), "black-forest-labs/flux-dev"):
        started = old_conn.execute(
            "select * from start_generation(%s, 'a fox', %s)", (old.alice, model_id)
        ).fetchone()
        row = old_conn.execute(
            "select g.model, g.model_id, j.payload from image_generations g"
            " join job_queue j on j.id = %s where g.id = %s",
            (started["job_id"], started["generation_id"]),
        ).fetchone()
        # The active flux-dev row of the two, whichever way it was named.
        assert (row["model"], row["model_id"]) == ("flux-dev", old.flux_dev)
        assert row["payload"]["model_id"] == "black-forest-labs/flux-dev"
        # The operators left its limits empty: the contract's defaults apply.
        assert (row["payload"]["width"], row["payload"]["num_inference_steps"]) == (1024, 28)


# Supabase-shaped databases: storage, and the default privileges Supabase gives


@pytest.fixture
def supabase_url(empty_database_url: str) -> str:
    """An empty Supabase-shaped database: its roles and default privileges, `auth`, the
    realtime publication and a minimal `storage` schema."""
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(SUPABASE.encode())
        conn.execute(STORAGE.encode())
    return empty_database_url


def test_on_supabase_the_bucket_and_its_policies_are_created(supabase_url: str) -> None:
    migrate(supabase_url)
    with psycopg.connect(supabase_url, autocommit=True, row_factory=dict_row) as conn:
        bucket = conn.execute("select * from storage.buckets").fetchone()
        assert bucket is not None
        assert (bucket["id"], bucket["public"], bucket["file_size_limit"]) == (
            "generated-images",
            True,
            52428800,
        )
        assert sorted(bucket["allowed_mime_types"]) == [
            "image/jpeg",
            "image/png",
            "image/svg+xml",
            "image/webp",
        ]
        alice, bob = uuid.uuid4(), uuid.uuid4()
        for user in (alice, bob):
            conn.execute("insert into auth.users (id) values (%s)", (user,))
            conn.execute(
                "insert into storage.objects (bucket_id, name) values ('generated-images', %s)",
                (f"{user}/a.webp",),
            )
        with conn.transaction():
            conn.execute("set local role anon")
            visible = conn.execute("select name from storage.objects").fetchall()
        assert len(visible) == 2  # public read
        with signed_in(conn, alice):
            conn.execute("delete from storage.objects")  # tries everything; RLS keeps bob's
        left = conn.execute("select name from storage.objects").fetchall()
        assert [row["name"] for row in left] == [f"{bob}/a.webp"]
        assert callable_by_users(conn) == USER_FUNCTIONS


def test_on_the_old_project_its_own_bucket_is_left_as_it_is(empty_database_url: str) -> None:
    build_old_picture(empty_database_url, storage=True)
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "insert into storage.buckets (id, name, public, file_size_limit)"
            " values ('generated-images', 'generated-images', true, 10485760)"
        )
        migrate(empty_database_url)
        bucket = conn.execute("select public, file_size_limit from storage.buckets").fetchone()
        assert bucket == {"public": True, "file_size_limit": 10485760}
        policies = conn.execute(
            "select policyname, cmd from pg_policies where schemaname = 'storage' order by 1"
        ).fetchall()
        assert [(row["policyname"], row["cmd"]) for row in policies] == [
            ("Anyone reads generated images", "SELECT"),
            ("Owners delete their generated images", "DELETE"),
        ]
        assert callable_by_users(conn) == USER_FUNCTIONS


def test_on_plain_postgresql_storage_is_left_alone(conn: Conn) -> None:
    assert conn.execute("select to_regnamespace('storage') as s").fetchone() == {"s": None}


def test_no_function_outside_the_documented_api_is_executable_by_users(conn: Conn) -> None:
    assert callable_by_users(conn) == USER_FUNCTIONS
