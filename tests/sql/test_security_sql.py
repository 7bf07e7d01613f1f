"""Row level security and grants (sql/0001_baseline.sql, sections 10 and 13) with the real Supabase roles."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import as_role, make_user
from tests.support.generations import SCHNELL, start

Conn = psycopg.Connection[dict[str, Any]]

# What a signed-in user may call; everything else in public is service_role's.
# The apps call these themselves (docs/CLIENTS.md §2 flows 2-4); generation_status is new (sql/0082).
USER_CALLABLE = {"cancel_generation", "get_user_limits", "check_rate_limit", "generation_status"}


def denied(conn: Conn, sql: str, params: Any = None) -> None:
    """`sql` fails with permission denied, inside a savepoint so the test goes on."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute(sql, params)


class World:
    """Two users, each with a completed generation (image), a failed one and a queued one."""

    def __init__(self, conn: Conn) -> None:
        self.alice = make_user(conn)
        self.bob = make_user(conn)
        self.generations: dict[uuid.UUID, list[uuid.UUID]] = {}
        self.jobs: dict[uuid.UUID, list[uuid.UUID]] = {}
        self.images: dict[uuid.UUID, uuid.UUID] = {}
        for user in (self.alice, self.bob):
            started = [start(conn, user) for _ in range(3)]
            self.generations[user] = [row["generation_id"] for row in started]
            self.jobs[user] = [row["job_id"] for row in started]
        # Per user: the first completed with an image, the second failed, the third queued.
        conn.execute("select * from claim_jobs('w', 100)")
        for user in (self.alice, self.bob):
            gens, jobs = self.generations[user], self.jobs[user]
            # The legacy finish (no job): the job is done, the generation completes.
            conn.execute("select complete_job(%s)", (jobs[0],))
            image = conn.execute(
                "select * from finish_generation(%s, %s, 'https://cdn.test/x', 10, 1024, 1024,"
                " 'webp')",
                (gens[0], f"{user}/{gens[0]}.webp"),
            ).fetchone()
            assert image is not None
            self.images[user] = image["id"]
            conn.execute(
                "select fail_generation(%s, 'w', 'boom', p_retryable => false)", (jobs[1],)
            )
            conn.execute("select release_jobs('w', array[%s]::uuid[])", (jobs[2],))


@pytest.fixture
def world(conn: Conn) -> World:
    return World(conn)


def test_a_user_sees_only_their_own_generations_images_and_jobs(conn: Conn, world: World) -> None:
    for user, other in [(world.alice, world.bob), (world.bob, world.alice)]:
        with as_role(conn, "authenticated", user):
            generations = conn.execute("select id, user_id from image_generations").fetchall()
            assert {row["id"] for row in generations} == set(world.generations[user])
            # The apps' poll: the generation with its images.
            polled = conn.execute(
                "select g.id, (select count(*) from images i where i.generation_id = g.id) as n"
                " from image_generations g where g.id = any(%s)",
                (world.generations[user] + world.generations[other],),
            ).fetchall()
            assert {row["id"] for row in polled} == set(world.generations[user])
            images = conn.execute("select id from images").fetchall()
            assert [row["id"] for row in images] == [world.images[user]]
            jobs = conn.execute("select id, created_by from job_queue").fetchall()
            assert {row["id"] for row in jobs} == set(world.jobs[user])
            by_id = conn.execute(
                "select * from job_queue where id = %s", (world.jobs[other][2],)
            ).fetchall()
            assert by_id == []
            newest = conn.execute(
                "select id from job_queue where status = 'pending' order by created_at desc"
            ).fetchall()
            assert [row["id"] for row in newest] == [world.jobs[user][2]]


def test_views_show_a_user_only_their_own_rows(conn: Conn, world: World) -> None:
    with as_role(conn, "authenticated", world.alice):
        health = conn.execute("select status, count from queue_health order by status").fetchall()
        assert health == [
            {"status": "completed", "count": 1},
            {"status": "failed", "count": 1},
            {"status": "pending", "count": 1},
        ]
        failed = conn.execute("select id, payload from failed_jobs_recent").fetchall()
        assert [row["id"] for row in failed] == [world.jobs[world.alice][1]]
        assert str(world.bob) not in json.dumps([row["payload"] for row in failed])
        assert conn.execute("select * from stuck_jobs").fetchall() == []
    with as_role(conn, "authenticated", uuid.uuid4()):
        assert conn.execute("select * from queue_health").fetchall() == []
        assert conn.execute("select * from failed_jobs_recent").fetchall() == []
    # The operator (superuser / service_role) sees everyone's.
    total = conn.execute("select sum(count)::int as n from queue_health").fetchone()
    assert total == {"n": 6}
    with as_role(conn, "service_role"):
        failed_all = conn.execute("select count(*) as n from failed_jobs_recent").fetchone()
        assert failed_all == {"n": 2}


def test_views_are_security_invoker(conn: Conn) -> None:
    rows = conn.execute(
        "select relname, reloptions from pg_class where relkind = 'v'"
        " and relnamespace = 'public'::regnamespace"
    ).fetchall()
    assert {row["relname"] for row in rows} >= {
        "queue_health",
        "failed_jobs_recent",
        "stuck_jobs",
        "queue_throughput",
    }
    for row in rows:
        assert "security_invoker=true" in (row["reloptions"] or []), row["relname"]


def test_without_a_user_an_authenticated_request_sees_nothing(conn: Conn, world: World) -> None:
    with as_role(conn, "authenticated"):
        for table in ("image_generations", "images", "job_queue"):
            assert conn.execute(f"select * from {table}").fetchall() == []


def test_anon_sees_no_generations_images_or_jobs(conn: Conn, world: World) -> None:
    with as_role(conn, "anon"):
        for table in ("image_generations", "images", "job_queue", "queue_health"):
            denied(conn, f"select * from {table}")
    # The model catalogue is public, active models only.
    conn.execute("update models set is_active = false where name = 'sdxl'")
    with as_role(conn, "anon"):
        names = {row["name"] for row in conn.execute("select name from models")}
        assert "flux-schnell" in names and "sdxl" not in names
        denied(conn, "update models set is_default = true")


QUEUE_CALLS = [
    "select enqueue_job('download-image', '{\"url\": \"http://169.254.169.254/\"}')",
    "select enqueue_job('generate-image', '{}', 0, now(), 3)",
    "select * from claim_jobs('me', 10)",
    "select * from claim_next_job()",
    "select complete_job(gen_random_uuid())",
    "select complete_job(gen_random_uuid(), 'x', null)",
    "select heartbeat_jobs('me', array[gen_random_uuid()])",
    "select release_jobs('me', array[gen_random_uuid()])",
    "select cancel_job(gen_random_uuid())",
    "select * from start_generation(auth.uid(), 'a cat', 'black-forest-labs/flux-schnell')",
    "select * from begin_generation(gen_random_uuid(), 'me')",
    "select record_prediction(gen_random_uuid(), 'me', 'p')",
    "select generation_downloading(gen_random_uuid(), 'me', 'u', 'webp', 1, 1, 1)",
    "select * from finish_generation(gen_random_uuid(), 'p', 'u', 1, 1, 1, 'webp')",
    "select fail_generation(gen_random_uuid(), 'me', 'x')",
    "select invoke_worker()",
    "select prune_finished_jobs()",
    "select configure_worker_cron('http://127.0.0.1:1', 'a-secret-of-enough-length')",
]


@pytest.mark.parametrize("role", ["authenticated", "anon"])
@pytest.mark.parametrize("call", QUEUE_CALLS)
def test_users_cannot_call_the_service_functions(
    conn: Conn, user_id: uuid.UUID, role: str, call: str
) -> None:
    with as_role(conn, role, user_id if role == "authenticated" else None):
        denied(conn, call)
    assert conn.execute("select count(*) as n from job_queue").fetchone() == {"n": 0}


def test_anon_cannot_cancel(conn: Conn, world: World) -> None:
    with as_role(conn, "anon"):
        denied(conn, "select cancel_generation(%s)", (world.generations[world.alice][2],))


def test_users_cannot_write_rows_directly(conn: Conn, world: World) -> None:
    mine_g, theirs_g = world.generations[world.alice][2], world.generations[world.bob][2]
    mine_j = world.jobs[world.alice][2]
    with as_role(conn, "authenticated", world.alice):
        # What the apps write themselves is allowed column by column, and checked row by
        # row: tests/compat/test_write_matrix.py. Every other column is the server's.
        denied(conn, "update image_generations set prompt = 'x' where id = %s", (theirs_g,))
        denied(conn, "update image_generations set priority = 9 where id = %s", (mine_g,))
        denied(
            conn,
            "insert into image_generations (user_id, prompt, seed) values (%s, 'x', 1)",
            (world.alice,),
        )
        denied(conn, "delete from image_generations where id = %s", (mine_g,))
        denied(
            conn,
            "insert into job_queue (job_type, created_by) values ('generate-image', %s)",
            (world.alice,),
        )
        denied(conn, "update job_queue set priority = 100 where id = %s", (mine_j,))
        denied(conn, "delete from job_queue where id = %s", (mine_j,))
        denied(
            conn,
            "insert into images (user_id, filename, storage_path, public_url)"
            " values (%s, 'f', 'p', 'u')",
            (world.alice,),
        )
        denied(conn, "update images set storage_path = 'elsewhere/x.webp'")
        denied(conn, "update images set user_id = %s", (world.bob,))
        denied(conn, "update images set download_count = 1000")
        denied(conn, "select * from imagegen.settings")
        denied(conn, "insert into auth.users (id) values (gen_random_uuid())")
    unchanged = conn.execute(
        "select count(*) filter (where status = 'queued') as queued, count(*) as n"
        " from image_generations"
    ).fetchone()
    assert unchanged == {"queued": 2, "n": 6}


def test_users_mark_only_their_own_images(conn: Conn, world: World) -> None:
    mine, theirs = world.images[world.alice], world.images[world.bob]
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": str(world.alice), "role": "authenticated"}),),
        )
        updated = conn.execute(
            "update images set is_favorite = true, is_public = true, rating = 5 returning id"
        ).fetchall()
        assert [row["id"] for row in updated] == [mine]
        other = conn.execute(
            "update images set is_favorite = true where id = %s", (theirs,)
        ).rowcount
        assert other == 0
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute("update images set rating = 9 where id = %s", (mine,))
    rows = {
        row["id"]: row
        for row in conn.execute("select id, is_favorite, is_public, rating from images")
    }
    assert (rows[mine]["is_favorite"], rows[mine]["is_public"], rows[mine]["rating"]) == (
        True,
        True,
        5,
    )
    assert (rows[theirs]["is_favorite"], rows[theirs]["is_public"], rows[theirs]["rating"]) == (
        False,
        False,
        None,
    )


def test_service_role_can_call_the_functions(conn: Conn, user_id: uuid.UUID) -> None:
    with conn.transaction():
        conn.execute("set local role service_role")
        started = conn.execute(
            "select * from start_generation(%s, 'a cat', %s)", (user_id, SCHNELL)
        ).fetchone()
        assert started is not None
        other = conn.execute("select enqueue_job('cleanup-storage', '{}', 0, now(), 3) as id")
        assert other.fetchone() is not None
        (claimed,) = conn.execute(
            "select * from claim_jobs('svc', 1, array['generate-image'])"
        ).fetchall()
        begun = conn.execute("select * from begin_generation(%s, 'svc')", (claimed["id"],))
        assert [row["id"] for row in begun.fetchall()] == [started["generation_id"]]
        assert conn.execute(
            "select heartbeat_jobs('svc', array[%s]::uuid[]) as id", (claimed["id"],)
        ).fetchall() == [{"id": claimed["id"]}]
        downloading = conn.execute(
            "select generation_downloading(%s, 'svc', 'https://r.test/o.webp', 'webp', 8, 8, 1)"
            " as id",
            (claimed["id"],),
        ).fetchone()
        assert downloading is not None and downloading["id"] is not None
        conn.execute("select * from claim_next_job(array['download-image'])")
        conn.execute("select complete_job(%s, 'x', null)", (downloading["id"],))
        assert conn.execute("select cancel_job(%s) as ok", (downloading["id"],)).fetchone() == {
            "ok": True
        }
        conn.execute("select prune_finished_jobs('1 day')")
        # service_role reads every row (bypassrls), as operators do.
        assert conn.execute("select count(*) as n from job_queue").fetchone() == {"n": 3}
        conn.execute("select * from imagegen.settings")


def test_only_the_user_callable_functions_are_granted_to_users(conn: Conn) -> None:
    rows = conn.execute(
        "select p.proname, p.oid::regprocedure::text as signature,"
        " has_function_privilege('authenticated', p.oid, 'execute') as authenticated,"
        " has_function_privilege('anon', p.oid, 'execute') as anon,"
        " has_function_privilege('service_role', p.oid, 'execute') as service_role"
        " , p.pronamespace::regnamespace::text as schema"
        " from pg_proc p where p.pronamespace in ('public'::regnamespace, 'imagegen'::regnamespace)"
    ).fetchall()
    assert rows
    for row in rows:
        assert not row["anon"], row["signature"]
        callable = row["schema"] == "public" and row["proname"] in USER_CALLABLE
        assert row["authenticated"] == callable, row["signature"]
    public = [row for row in rows if not row["proname"].startswith("_")]
    assert all(row["service_role"] for row in public if "imagegen" not in row["signature"])


def test_writing_functions_are_security_definer_with_a_fixed_search_path(conn: Conn) -> None:
    rows = conn.execute(
        "select p.oid::regprocedure::text as signature, p.prosecdef, p.proconfig"
        " from pg_proc p where p.pronamespace = 'public'::regnamespace"
        " and p.provolatile = 'v' and not p.proname like '\\_%%'"
    ).fetchall()
    assert len(rows) >= 15
    for row in rows:
        assert row["prosecdef"], row["signature"]
        assert any(setting.startswith("search_path=") for setting in row["proconfig"] or []), row[
            "signature"
        ]


def test_rls_is_enabled_on_the_user_tables(conn: Conn) -> None:
    rows = conn.execute(
        "select relname, relrowsecurity from pg_class where relnamespace = 'public'::regnamespace"
        " and relname in ('image_generations', 'images', 'job_queue', 'models')"
    ).fetchall()
    assert {row["relname"]: row["relrowsecurity"] for row in rows} == {
        "image_generations": True,
        "images": True,
        "job_queue": True,
        "models": True,
    }
