"""Jobs enqueued and claimed in SQL (sql/0001_baseline.sql, section 5), as the worker calls
the functions."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]


def enqueue_job(conn: Conn, job_type: str = "generate-image", **kwargs: Any) -> uuid.UUID:
    """enqueue_job with named arguments (a dict goes as jsonb); the job's id."""
    arguments = {"job_type": job_type} | {
        name: Jsonb(value) if isinstance(value, dict) else value for name, value in kwargs.items()
    }
    names = ", ".join(f"p_{name} => %({name})s" for name in arguments)
    row = conn.execute(f"select enqueue_job({names}) as id", arguments).fetchone()
    assert row is not None
    job_id: uuid.UUID = row["id"]
    return job_id


def claim_jobs(conn: Conn, worker_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    """claim_jobs with named arguments (limit, job_types, lease_seconds); the jobs claimed."""
    arguments = {"worker_id": worker_id} | kwargs
    names = ", ".join(f"p_{name} => %({name})s" for name in arguments)
    return conn.execute(f"select * from claim_jobs({names})", arguments).fetchall()


def defer(
    conn: Conn,
    until: str,
    *,
    owner: uuid.UUID | None = None,
    generation_id: uuid.UUID | None = None,
) -> None:
    """The pending jobs of `owner` (or of one generation) handed back to wait until `until`
    (an SQL expression), as a snooze or a retry's backoff leaves them: deferred jobs
    (sql/0160), enqueued a minute ago."""
    conn.execute(
        "update job_queue set created_at = now() - interval '1 minute',"
        f" scheduled_at = {until} where status = 'pending'"
        " and (created_by = %(owner)s::uuid or payload ->> 'generation_id' = %(generation)s)",
        {"owner": owner, "generation": str(generation_id) if generation_id else None},
    )
