"""The worker trigger and retention (sql/0001_baseline.sql, section 11): pg_cron, net.http_post, a real
HTTP receiver on 127.0.0.1, and one real pg_cron tick."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from pydantic import ValidationError

from devstack.postgres import free_port
from tests.conftest import http_response
from tests.support.cli import run_cli
from worker.settings import WORKER_SECRET_MIN_LENGTH, Settings

Conn = psycopg.Connection[dict[str, Any]]

SECRET = "test-worker-secret-0123456789"
JOB_NAMES = ("process-jobs-worker", "imagegen-retention", "imagegen-storage-cleanup")


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server in a thread that records every request it gets."""

    status: int = 200
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def wait(self, timeout: float) -> Received:
        assert self.arrived.wait(timeout), f"no request within {timeout} s"
        return self.requests[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append(
                Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            state.arrived.set()
            time.sleep(state.delay)
            answer = json.dumps({"success": True, "processed": 0}).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cron_conn(cron_database_url: str) -> Iterator[Conn]:
    """The shared pg_cron database; whatever a test adds there is removed afterwards."""
    with psycopg.connect(cron_database_url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("select coalesce(max(id), 0) as id from net._http_response").fetchone()
        assert row is not None
        first_response = row["id"]
        try:
            yield conn
        finally:
            jobs = conn.execute(
                "select jobid, jobname from cron.job where jobname = any(%s)", (list(JOB_NAMES),)
            ).fetchall()
            for job in jobs:
                conn.execute("select cron.unschedule(%s)", (job["jobname"],))
            conn.execute(
                "delete from cron.job_run_details where jobid = any(%s)",
                ([job["jobid"] for job in jobs],),
            )
            conn.execute("delete from net._http_response where id > %s", (first_response,))
            conn.execute(
                "delete from imagegen.settings"
                " where key in ('worker_url', 'worker_secret', 'job_retention')"
            )


def cron_jobs(conn: Conn) -> dict[str, dict[str, Any]]:
    rows = conn.execute("SELECT * FROM cron.job").fetchall()
    return {row["jobname"]: row for row in rows if row["jobname"] in JOB_NAMES}


def configure(conn: Conn, url: str, secret: str = SECRET, schedule: str | None = None) -> int:
    row = conn.execute(
        "select configure_worker_cron(%s, %s, %s) as jobid", (url, secret, schedule)
    ).fetchone()
    assert row is not None
    jobid: int = row["jobid"]
    return jobid


def test_configure_schedules_the_worker_and_the_retention_job(
    cron_conn: Conn, receiver: Receiver
) -> None:
    jobid = configure(cron_conn, receiver.url)
    jobs = cron_jobs(cron_conn)
    assert set(jobs) == set(JOB_NAMES)
    worker = jobs["process-jobs-worker"]
    assert worker["jobid"] == jobid
    version = cron_conn.execute(
        "select extversion from pg_extension where extname = 'pg_cron'"
    ).fetchone()
    assert version is not None
    if version["extversion"].startswith("1.4"):
        assert worker["schedule"] == "* * * * *"
    assert worker["command"] == "select public.invoke_worker()"
    assert worker["active"] is True
    assert worker["database"] == cron_conn.info.dbname
    retention = jobs["imagegen-retention"]
    assert retention["command"] == "select public.prune_finished_jobs()"
    assert retention["schedule"] == "17 3 * * *"
    # Storage retention: one cleanup-storage job a night (sql/0150_storage_cleanup.sql).
    cleanup = jobs["imagegen-storage-cleanup"]
    assert cleanup["command"] == "select public.enqueue_storage_cleanup()"
    assert cleanup["schedule"] == "43 3 * * *"
    # The secret and the URL stay out of cron.job, in service_role-only settings.
    every_command = json.dumps([row["command"] for row in jobs.values()])
    assert SECRET not in every_command and receiver.url not in every_command
    settings = cron_conn.execute("select key, value from imagegen.settings").fetchall()
    assert {row["key"]: row["value"] for row in settings}.items() >= {
        ("worker_url", receiver.url),
        ("worker_secret", SECRET),
        ("job_retention", "7 days"),
    }


# What picture/setup-cron-job.sql scheduled on the old project (its shape; the key is fake).
OLD_CRON_COMMAND = """
    SELECT net.http_post(
      url := 'https://picture.supabase.co/functions/v1/process-jobs',
      headers := jsonb_build_object('Content-Type', 'application/json',
                                    'Authorization', 'Bearer eyJ.service-role.key'),
      body := '{}'::jsonb
    );
"""


def posting_to_process_jobs(conn: Conn) -> list[str]:
    rows = conn.execute(
        "select jobname from cron.job where command like '%/functions/v1/process-jobs%'"
        " or command = 'select public.invoke_worker()' order by jobname"
    ).fetchall()
    return [row["jobname"] for row in rows]


def test_configure_replaces_the_old_platforms_cron_job(
    cron_conn: Conn, cron_database_url: str, receiver: Receiver
) -> None:
    """Two schedules never race: the old `process-job-queue` job, and any other job posting
    to process-jobs, go; other jobs stay."""
    others = ("process-job-queue", "picture-worker-copy", "nightly-report")
    try:
        cron_conn.execute(
            "select cron.schedule('process-job-queue', '* * * * *', %s)", (OLD_CRON_COMMAND,)
        )
        cron_conn.execute(
            "select cron.schedule('picture-worker-copy', '*/2 * * * *', %s)",
            (OLD_CRON_COMMAND.replace("picture.supabase.co", "mirror.example.test"),),
        )
        cron_conn.execute("select cron.schedule('nightly-report', '0 4 * * *', 'select 1')")
        assert posting_to_process_jobs(cron_conn) == ["picture-worker-copy", "process-job-queue"]

        done = run_cli(
            "configure-cron",
            "--url",
            receiver.url,
            "--secret",
            SECRET,
            "--database-url",
            cron_database_url,
        )
        assert done.returncode == 0, done.stderr
        said = done.stdout.splitlines()
        assert len(said) == 3 and said[-1].startswith("scheduled process-jobs-worker")
        assert sorted(line.split("(")[1].split(")")[0] for line in said[:2]) == [
            "picture-worker-copy",
            "process-job-queue",
        ]
        assert posting_to_process_jobs(cron_conn) == ["process-jobs-worker"]
        names = {row["jobname"] for row in cron_conn.execute("select jobname from cron.job")}
        assert "nightly-report" in names
    finally:
        for name in others:
            if cron_conn.execute("select 1 from cron.job where jobname = %s", (name,)).fetchone():
                cron_conn.execute("select cron.unschedule(%s)", (name,))


def test_reconfiguring_replaces_the_schedule_instead_of_adding_one(
    cron_conn: Conn, receiver: Receiver
) -> None:
    first = configure(cron_conn, "http://127.0.0.1:9")
    second = configure(cron_conn, receiver.url, "another-secret-of-length", "*/5 * * * *")
    assert second == first
    names = cron_conn.execute(
        "select jobname from cron.job where jobname = any(%s)", (list(JOB_NAMES),)
    ).fetchall()
    assert sorted(row["jobname"] for row in names) == sorted(JOB_NAMES)
    assert cron_jobs(cron_conn)["process-jobs-worker"]["schedule"] == "*/5 * * * *"
    secret = cron_conn.execute("select imagegen.get_setting('worker_secret') as v").fetchone()
    assert secret == {"v": "another-secret-of-length"}


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("ftp://127.0.0.1/x", SECRET),
        ("127.0.0.1:8000", SECRET),
        ("", SECRET),
        (None, SECRET),
        ("http://127.0.0.1:8000", "too-short"),
        ("http://127.0.0.1:8000", ""),
        ("http://127.0.0.1:8000", None),
    ],
)
def test_configure_refuses_a_bad_url_or_a_short_secret(
    cron_conn: Conn, url: str | None, secret: str | None
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        cron_conn.execute("select configure_worker_cron(%s, %s)", (url, secret))
    assert cron_jobs(cron_conn) == {}
    settings = cron_conn.execute(
        "select count(*) as n from imagegen.settings where key like 'worker%%'"
    ).fetchone()
    assert settings == {"n": 0}


def test_the_settings_and_the_database_agree_on_the_worker_secrets_length(conn: Conn) -> None:
    """One minimum, checked where the secret is configured (Settings at the service's
    start, configure_worker_cron in SQL): the same lengths pass and fail in both."""
    short, enough = "s" * (WORKER_SECRET_MIN_LENGTH - 1), "s" * WORKER_SECRET_MIN_LENGTH
    with pytest.raises(ValidationError):
        Settings.model_validate({"worker_secret": short})
    assert Settings.model_validate({"worker_secret": enough}).worker_secret is not None
    call = "select configure_worker_cron('http://127.0.0.1:1', %s)"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="at least"):
        conn.execute(call, (short,))
    # Past the length check: this database has no pg_cron, the next thing it says.
    with pytest.raises(psycopg.errors.RaiseException, match="pg_cron"):
        conn.execute(call, (enough,))


def test_the_scheduled_command_reaches_the_worker(cron_conn: Conn, receiver: Receiver) -> None:
    configure(cron_conn, receiver.url + "/")
    command = cron_jobs(cron_conn)["process-jobs-worker"]["command"]

    row = cron_conn.execute(command).fetchone()

    assert row is not None
    request_id = row["invoke_worker"]
    request = receiver.wait(5)
    assert request.method == "POST"
    assert request.path == "/functions/v1/process-jobs"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {}
    assert len(receiver.requests) == 1
    response = http_response(cron_conn, request_id)
    assert response["status_code"] == 200
    assert response["timed_out"] is False
    assert json.loads(response["content"]) == {"success": True, "processed": 0}


def test_a_refused_call_is_recorded(cron_conn: Conn, receiver: Receiver) -> None:
    receiver.status = 401
    configure(cron_conn, receiver.url)
    row = cron_conn.execute("select public.invoke_worker() as id").fetchone()
    assert row is not None
    response = http_response(cron_conn, row["id"])
    assert (response["status_code"], response["timed_out"]) == (401, False)


def test_a_timeout_and_an_unreachable_worker_are_recorded(
    cron_conn: Conn, receiver: Receiver
) -> None:
    receiver.delay = 1.0
    slow = cron_conn.execute(
        "select net.http_post(%s, '{}'::jsonb, timeout_milliseconds => 200) as id",
        (receiver.url + "/functions/v1/process-jobs",),
    ).fetchone()
    assert slow is not None
    timed_out = http_response(cron_conn, slow["id"])
    assert timed_out["timed_out"] is True and timed_out["status_code"] is None
    assert timed_out["error_msg"]

    configure(cron_conn, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    down = cron_conn.execute("select public.invoke_worker() as id").fetchone()
    assert down is not None
    refused = http_response(cron_conn, down["id"])
    assert refused["status_code"] is None and refused["timed_out"] is False
    assert "refused" in refused["error_msg"].lower()


def test_invoke_worker_without_configuration_refuses(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="configure_worker_cron"):
        conn.execute("select public.invoke_worker()")


def test_configure_outside_the_cron_database_refuses(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="pg_cron is not installed"):
        conn.execute("select configure_worker_cron('http://127.0.0.1:1', %s)", (SECRET,))
    assert conn.execute(
        "select count(*) as n from imagegen.settings where key like 'worker%%'"
    ).fetchone() == {"n": 0}


def test_settings_go_to_supabase_vault_where_it_exists(conn: Conn, receiver: Receiver) -> None:
    # A stand-in with Vault's real signatures (supabase_vault 0.3: a key-id argument).
    conn.execute(
        """
        create schema vault;
        create table vault.secrets (
            id uuid primary key default gen_random_uuid(), name text unique,
            description text not null default '', secret text not null);
        create view vault.decrypted_secrets as
            select id, name, description, secret, secret as decrypted_secret from vault.secrets;
        create function vault.create_secret(
            new_secret text, new_name text = null, new_description text = '',
            new_key_id uuid = null) returns uuid language sql as $$
            insert into vault.secrets (secret, name, description)
            values (new_secret, new_name, new_description) returning id $$;
        create function vault.update_secret(
            secret_id uuid, new_secret text = null, new_name text = null,
            new_description text = null, new_key_id uuid = null) returns void language sql as $$
            update vault.secrets set secret = coalesce(new_secret, secret) where id = secret_id $$;
        """
    )
    conn.execute("select imagegen.put_setting('worker_url', %s)", (receiver.url,))
    conn.execute("select imagegen.put_setting('worker_secret', 'first-secret-value')")
    conn.execute("select imagegen.put_setting('worker_secret', %s)", (SECRET,))

    stored = conn.execute("select name, secret from vault.secrets order by name").fetchall()
    assert stored == [
        {"name": "imagegen_worker_secret", "secret": SECRET},
        {"name": "imagegen_worker_url", "secret": receiver.url},
    ]
    assert conn.execute(
        "select count(*) as n from imagegen.settings where key like 'worker%%'"
    ).fetchone() == {"n": 0}

    conn.execute("select public.invoke_worker()")
    assert receiver.wait(5).headers["authorization"] == f"Bearer {SECRET}"


def test_prune_finished_jobs_deletes_only_old_finished_jobs(conn: Conn) -> None:
    def job(status: str, age: str) -> Any:
        row = conn.execute("select enqueue_job('cleanup-storage') as id").fetchone()
        assert row is not None
        conn.execute(
            "update job_queue set status = %s, completed_at = now() - %s::interval where id = %s",
            (status, age, row["id"]),
        )
        return row["id"]

    old = [job("completed", "8 days"), job("failed", "30 days"), job("cancelled", "8 days")]
    kept = [
        job("completed", "6 days"),
        job("failed", "1 hour"),
        job("pending", "40 days"),
        job("processing", "40 days"),
    ]
    assert conn.execute("select prune_finished_jobs() as n").fetchone() == {"n": 3}
    left = {row["id"] for row in conn.execute("select id from job_queue")}
    assert left == set(kept)
    assert not left & set(old)

    # An explicit age, then the configured retention.
    assert conn.execute("select prune_finished_jobs('5 days') as n").fetchone() == {"n": 1}
    conn.execute("select imagegen.put_setting('job_retention', '30 minutes')")
    assert conn.execute("select prune_finished_jobs() as n").fetchone() == {"n": 1}
    statuses = conn.execute("select status from job_queue order by status").fetchall()
    assert [row["status"] for row in statuses] == ["pending", "processing"]


def test_prune_finished_jobs_also_prunes_old_cron_runs(cron_conn: Conn) -> None:
    jobid = configure(cron_conn, "http://127.0.0.1:9")
    cron_conn.execute(
        "insert into cron.job_run_details (jobid, runid, job_pid, database, username, command,"
        " status, return_message, start_time, end_time) values"
        " (%(j)s, -1001, 0, current_database(), current_user, 'old', 'succeeded', '',"
        "  now() - interval '30 days', now() - interval '30 days'),"
        " (%(j)s, -1002, 0, current_database(), current_user, 'new', 'succeeded', '',"
        "  now() - interval '1 hour', now() - interval '1 hour')",
        {"j": jobid},
    )
    cron_conn.execute("select prune_finished_jobs()")
    runs = cron_conn.execute(
        "select runid from cron.job_run_details where runid in (-1001, -1002)"
    ).fetchall()
    assert runs == [{"runid": -1002}]


@pytest.mark.slow
def test_a_real_pg_cron_tick_calls_the_worker(cron_conn: Conn, receiver: Receiver) -> None:
    jobid = configure(cron_conn, receiver.url)

    request = receiver.wait(75)  # pg_cron 1.4 runs every minute, on the minute

    assert request.path == "/functions/v1/process-jobs"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert json.loads(request.body) == {}
    deadline = time.monotonic() + 15
    run: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        run = cron_conn.execute(
            "select * from cron.job_run_details where jobid = %s and status <> 'running'"
            " order by start_time desc limit 1",
            (jobid,),
        ).fetchone()
        if run:
            break
        time.sleep(0.2)
    assert run is not None, "pg_cron recorded no finished run"
    # The operators' query, unchanged, shows it too.
    every_run = cron_conn.execute("SELECT * FROM cron.job_run_details").fetchall()
    assert run["runid"] in {row["runid"] for row in every_run}
    assert run["status"] == "succeeded", run["return_message"]
    assert run["command"] == "select public.invoke_worker()"
    recorded = cron_conn.execute(
        "select status_code from net._http_response order by id desc limit 1"
    ).fetchone()
    assert recorded == {"status_code": 200}


def test_pg_cron_1_5_and_later_get_a_ten_second_schedule(cron_conn: Conn) -> None:
    """What Supabase runs (pg_cron 1.6): the worker every 10 seconds. This machine has
    pg_cron 1.4, which refuses second schedules; so the version is changed inside a
    transaction that is rolled back, and pg_cron's refusal of '10 seconds' shows that
    configure_worker_cron asked for it."""
    with cron_conn.transaction():
        cron_conn.execute("update pg_extension set extversion = '1.6.4' where extname = 'pg_cron'")
        assert cron_conn.execute(
            "select imagegen.cron_version_at_least(1, 5) as ok"
        ).fetchone() == {"ok": True}
        with (
            pytest.raises(psycopg.Error, match="10 seconds") as refused,
            cron_conn.transaction(),
        ):
            configure(cron_conn, "http://127.0.0.1:9")
        assert "invalid schedule" in str(refused.value)
        raise psycopg.Rollback()  # the version change is undone
    version = cron_conn.execute(
        "select extversion from pg_extension where extname = 'pg_cron'"
    ).fetchone()
    assert version is not None and version["extversion"].startswith("1.4")
    assert cron_conn.execute("select imagegen.cron_version_at_least(1, 5) as ok").fetchone() == {
        "ok": False
    }
