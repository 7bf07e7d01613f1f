"""`imagegen migrate` and the migrations themselves, on fresh databases of the real cluster."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from worker.migrate import MIGRATIONS_DIR, MigrationError, migrate

Conn = psycopg.Connection[dict[str, Any]]

IMAGEGEN = Path(sys.executable).parent / "imagegen"
MIGRATION_NAMES = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
BASELINE = MIGRATIONS_DIR / "0001_baseline.sql"


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "sql"
    shutil.copytree(MIGRATIONS_DIR, directory)
    return directory


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | (env or {})
    return subprocess.run(
        [str(IMAGEGEN), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )


def recorded(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("select name, checksum from imagegen.migrations").fetchall())


def test_migrate_twice_applies_once(empty_database_url: str) -> None:
    first = run_cli("migrate", "--database-url", empty_database_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {name}" for name in MIGRATION_NAMES]

    second = run_cli("migrate", "--database-url", empty_database_url)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "database is up to date"

    assert recorded(empty_database_url) == {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in MIGRATIONS_DIR.glob("*.sql")
    }
    with psycopg.connect(empty_database_url) as conn:
        tables = conn.execute(
            "select count(*) from pg_tables where schemaname = 'public'"
            " and tablename in ('models', 'image_generations', 'images', 'job_queue')"
        ).fetchone()
        assert tables == (4,)
        models = conn.execute("select count(*) from models").fetchone()
        assert models is not None and models[0] >= 15


def test_migrate_reads_database_url_from_the_environment(empty_database_url: str) -> None:
    result = run_cli("migrate", env={"DATABASE_URL": empty_database_url})
    assert result.returncode == 0, result.stderr
    assert len(recorded(empty_database_url)) == len(MIGRATION_NAMES)


def test_migrate_without_a_database_url_says_so() -> None:
    result = run_cli("migrate")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_an_edited_applied_migration_is_refused(
    empty_database_url: str, migrations_copy: Path
) -> None:
    assert migrate(empty_database_url, migrations_copy) == MIGRATION_NAMES
    before = recorded(empty_database_url)
    edited = migrations_copy / "0001_baseline.sql"
    edited.write_text(edited.read_text() + "\n-- a quiet change\n")
    (migrations_copy / "9999_later.sql").write_text("create table public.later (id int);\n")

    with pytest.raises(MigrationError, match=r"0001_baseline\.sql was edited"):
        migrate(empty_database_url, migrations_copy)

    # Nothing after the refusal ran, and the record is untouched.
    assert recorded(empty_database_url) == before
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("select to_regclass('public.later')").fetchone() == (None,)


def test_the_cli_refuses_an_edited_migration_with_a_clear_error(empty_database_url: str) -> None:
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(
            "update imagegen.migrations set checksum = repeat('0', 64)"
            " where name = '0001_baseline.sql'"
        )
    result = run_cli("migrate", "--database-url", empty_database_url)
    assert result.returncode == 1
    assert "error: migration 0001_baseline.sql was edited after it was applied" in result.stderr
    assert "add a new migration" in result.stderr


def test_a_failing_migration_is_rolled_back_and_not_recorded(
    empty_database_url: str, migrations_copy: Path
) -> None:
    migrate(empty_database_url, migrations_copy)
    broken = migrations_copy / "9999_broken.sql"
    broken.write_text("create table public.half_done (id int);\nselect 1 / 0;\n")

    with pytest.raises(MigrationError, match=r"9999_broken\.sql failed: division by zero"):
        migrate(empty_database_url, migrations_copy)
    assert "9999_broken.sql" not in recorded(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("select to_regclass('public.half_done')").fetchone() == (None,)

    broken.write_text("create table public.half_done (id int);\n")
    assert migrate(empty_database_url, migrations_copy) == ["9999_broken.sql"]


def test_a_failure_in_a_later_file_rolls_back_the_whole_run(
    empty_database_url: str, migrations_copy: Path
) -> None:
    """All pending files are one transaction: the baseline applied before is undone too."""
    (migrations_copy / "9999_broken.sql").write_text("select 1 / 0;\n")
    with pytest.raises(MigrationError) as refused:
        migrate(empty_database_url, migrations_copy)
    assert "9999_broken.sql failed: division by zero" in str(refused.value)
    applied_before = ", ".join(MIGRATION_NAMES)
    assert f"nothing was applied ({applied_before} rolled back too)" in str(refused.value)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute(
            "select to_regnamespace('imagegen'), to_regclass('public.job_queue')"
        ).fetchone() == (None, None)


def test_an_empty_migrations_directory_is_an_error(tmp_path: Path, empty_database_url: str) -> None:
    with pytest.raises(MigrationError, match="no migrations found"):
        migrate(empty_database_url, tmp_path)


def snapshot(conn: Conn) -> dict[str, Any]:
    """What the shim could touch: roles, the auth and net schemas, extensions, grants."""
    return {
        "roles": conn.execute(
            "select rolname, rolcanlogin, rolinherit, rolbypassrls from pg_roles"
            " where rolname in ('anon', 'authenticated', 'service_role') order by rolname"
        ).fetchall(),
        "functions": conn.execute(
            "select p.oid, p.oid::regprocedure::text as signature, p.prosrc, p.proacl::text"
            " from pg_proc p where p.pronamespace in"
            " (select oid from pg_namespace where nspname in ('auth', 'net')) order by p.oid"
        ).fetchall(),
        "relations": conn.execute(
            "select c.oid, c.relname, c.relacl::text from pg_class c where c.relnamespace in"
            " (select oid from pg_namespace where nspname in ('auth', 'net')) order by c.oid"
        ).fetchall(),
        "schemas": conn.execute(
            "select oid, nspname, nspacl::text from pg_namespace order by oid"
        ).fetchall(),
        "extensions": conn.execute(
            "select extname, extversion from pg_extension order by extname"
        ).fetchall(),
    }


def test_the_shim_changes_nothing_where_its_objects_exist(conn: Conn) -> None:
    before = snapshot(conn)
    assert {row["signature"] for row in before["functions"]} >= {
        "auth.uid()",
        "auth.jwt()",
        "auth.role()",
        "net.http_post(text,jsonb,jsonb,jsonb,integer)",
    }
    conn.execute(BASELINE.read_bytes())
    assert snapshot(conn) == before


def test_on_a_supabase_like_database_the_shim_keeps_supabases_objects(
    empty_database_url: str,
) -> None:
    """Supabase's own auth.uid() and pg_net's net.http_post stay as they are."""
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            """
            create schema auth;
            create table auth.users (id uuid primary key, email text, aud text);
            create function auth.jwt() returns jsonb language sql stable
                as $$ select '{"supabase": true}'::jsonb $$;
            create function auth.uid() returns uuid language sql stable
                as $$ select '00000000-0000-0000-0000-00000000cafe'::uuid $$;
            create function auth.role() returns text language sql stable
                as $$ select 'supabase' $$;
            create schema net;
            create function net.http_post(
                url text, body jsonb default '{}', params jsonb default '{}',
                headers jsonb default '{}', timeout_milliseconds integer default 5000
            ) returns bigint language sql as $$ select 4242::bigint $$;
            """
        )
        before = snapshot(conn)
        migrate(empty_database_url)
        after = snapshot(conn)
        assert after["functions"] == before["functions"]
        assert conn.execute("select to_regclass('net._http_response') as r").fetchone() == {
            "r": None
        }
        assert conn.execute("select auth.uid()::text as u").fetchone() == {
            "u": "00000000-0000-0000-0000-00000000cafe"
        }
        # The rest of the system runs on Supabase's objects.
        conn.execute("select imagegen.put_setting('worker_url', 'http://127.0.0.1:9')")
        conn.execute("select imagegen.put_setting('worker_secret', 'a-secret-long-enough')")
        assert conn.execute("select invoke_worker() as id").fetchone() == {"id": 4242}


def test_every_migration_can_run_again_on_a_migrated_database(conn: Conn) -> None:
    """Re-applying (as on the old platform's database, which has the objects) is safe."""
    conn.execute("insert into auth.users (id) values (gen_random_uuid())")
    conn.execute("select enqueue_job('cleanup-storage')")
    models = conn.execute("select count(*) as n from models").fetchone()
    for name in MIGRATION_NAMES:
        conn.execute((MIGRATIONS_DIR / name).read_bytes())
    assert conn.execute("select count(*) as n from job_queue").fetchone() == {"n": 1}
    assert conn.execute("select count(*) as n from models").fetchone() == models


def test_the_tables_join_the_realtime_publication_when_it_exists(conn: Conn) -> None:
    # The later migrations make the publication where it is missing (0032): start anew.
    conn.execute("drop publication if exists supabase_realtime")
    conn.execute("create publication supabase_realtime")
    conn.execute(BASELINE.read_bytes())
    rows = conn.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'"
        " order by tablename"
    ).fetchall()
    assert [row["tablename"] for row in rows] == ["image_generations", "job_queue"]
    conn.execute(BASELINE.read_bytes())  # and only once


def test_the_old_platforms_queue_is_upgraded_in_place(empty_database_url: str) -> None:
    """The old job_queue (docs/CONTRACT.md §3 columns) and its functions, then our migrations."""
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            """
            create table public.job_queue (
                id uuid primary key default gen_random_uuid(),
                job_type text not null, payload jsonb not null default '{}',
                status text not null default 'pending', attempts int not null default 0,
                max_attempts int not null default 3, priority int not null default 0,
                scheduled_at timestamptz not null default now(), started_at timestamptz,
                completed_at timestamptz, error_message text, error_details jsonb,
                created_by uuid, created_at timestamptz not null default now(),
                updated_at timestamptz not null default now());
            insert into public.job_queue (job_type, status, attempts)
                values ('generate-image', 'completed', 1), ('download-image', 'pending', 0);
            create function public.enqueue_job(p_job_type text, p_payload jsonb,
                p_priority integer default 0, p_scheduled_at timestamptz default now(),
                p_max_attempts integer default 3) returns uuid language sql
                as $$ select gen_random_uuid() $$;
            create function public.claim_next_job(p_job_types text[] default null)
                returns setof public.job_queue language sql
                as $$ select * from public.job_queue limit 0 $$;
            create function public.complete_job(p_job_id uuid, p_error_message text default null,
                p_error_details jsonb default null) returns void language sql as $$ select $$;
            """
        )
        migrate(empty_database_url)
        statuses = conn.execute("select status from job_queue order by status").fetchall()
        assert [row["status"] for row in statuses] == ["completed", "pending"]
        # The original calls resolve to the new functions, unambiguously.
        new = conn.execute(
            "select enqueue_job('cleanup-storage', '{}'::jsonb, 0, now(), 3) as id"
        ).fetchone()
        assert new is not None
        claimed = conn.execute("select * from claim_next_job(array['download-image'])")
        (job,) = claimed.fetchall()
        assert job["locked_by"] is not None
        done = conn.execute("select complete_job(%s, null, null) as ok", (job["id"],)).fetchone()
        assert done == {"ok": True}
