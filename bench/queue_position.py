"""Queue position at depth: what `generation_status` costs with 100,000 queued jobs.

A fresh database gets 100,000 queued generations of 1,000 users, each with its pending
`generate-image` job, enqueued round-robin so every user has a job in every round (the
fair turns of sql/0080 are assigned by the enqueue trigger, as in production); 32 more are
being run and 1,000 completed within the hour (the median the estimate uses). Then
vacuum and analyse, as autovacuum would after such an insert. For a generation at the
head, the middle and the tail of the queue: the client round trip of
`generation_queue_status` (the API's call, service role) and of `generation_status` (the
apps' call, signed in as the owner, in one transaction as PostgREST runs it), p50 and
p95, and `EXPLAIN (ANALYZE, BUFFERS)` of the statement that counts the jobs ahead (the
plan's scan nodes, rows read and buffers touched), bounded as sql/0151 counts (at most
`queue_position_limit` jobs ahead, 1,000 by default) and unbounded as sql/0082 did.

    .venv/bin/python -m bench.queue_position [--quick]
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from bench.common import cluster, parse_args, percentile, print_table, write_results

USERS = 1_000
RUNNING = 32
COMPLETED = 1_000
MODEL = "flux-schnell"

# The count of the jobs ahead in imagegen.generation_status, for EXPLAIN: bounded as
# sql/0151 counts them ({limit}), and unbounded as sql/0082 did (for comparison).
# As sql/0160 counts: the ready jobs ahead, then the deferred ones that are due.
AHEAD = """
select count(*) from (
    select from job_queue
    where status = 'pending' and scheduled_at <= created_at and priority > %(priority)s
    union all
    select from job_queue
    where status = 'pending' and scheduled_at <= created_at and priority = %(priority)s
      and (turn, created_at) < (%(turn)s, %(created_at)s)
    union all
    select from job_queue
    where status = 'pending' and scheduled_at > created_at and scheduled_at <= now()
      and (priority > %(priority)s
           or (priority = %(priority)s and (turn, created_at) < (%(turn)s, %(created_at)s)))
    {limit}
) ahead
"""
POSITION_LIMIT = "select imagegen.integer_setting('queue_position_limit', 1000)"


def fill(url: str, queued: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into auth.users (id, email)"
            " select gen_random_uuid(), 'bench' || g || '@example.test'"
            " from generate_series(1, %s) g",
            (USERS,),
        )
        users = [row[0] for row in conn.execute("select id from auth.users order by email")]
        conn.execute("create temporary table bench_users (n integer, id uuid)")
        with conn.cursor().copy("copy bench_users (n, id) from stdin") as copy:
            for n, user in enumerate(users):
                copy.write_row((n, user))
        # Generations first: queued ones, running ones, recently completed ones.
        conn.execute(
            """
            insert into image_generations (user_id, prompt, model, status, created_at,
                                           updated_at, completed_at, generation_time_seconds)
            select u.id, 'bench ' || g, %(model)s,
                   case when g <= %(completed)s then 'completed'
                        when g <= %(completed)s + %(running)s then 'processing'
                        else 'queued' end,
                   now() - interval '50 minutes' + g * interval '1 millisecond',
                   now(),
                   case when g <= %(completed)s then now() - interval '30 minutes' end,
                   case when g <= %(completed)s then 2 + (g %% 7) end
            from generate_series(1, %(total)s) g
            join bench_users u on u.n = g %% %(users)s
            """,
            {
                "model": MODEL,
                "completed": COMPLETED,
                "running": RUNNING,
                "total": COMPLETED + RUNNING + queued,
                "users": USERS,
            },
        )
        # Their jobs, one statement in creation order, so the enqueue trigger gives the
        # turns production would (each user one job per round).
        conn.execute(
            """
            insert into job_queue (job_type, payload, status, attempts, created_by,
                                   created_at, scheduled_at, started_at, locked_by,
                                   locked_until, dedupe_key)
            select 'generate-image',
                   jsonb_build_object('generation_id', g.id, 'user_id', g.user_id),
                   case g.status when 'processing' then 'processing' else 'pending' end,
                   case g.status when 'processing' then 1 else 0 end,
                   g.user_id, g.created_at, g.created_at,
                   case g.status when 'processing' then now() end,
                   case g.status when 'processing' then 'bench-worker' end,
                   case g.status when 'processing' then now() + interval '1 hour' end,
                   'generate-image:' || g.id
            from image_generations g
            where g.status in ('queued', 'processing')
            order by g.created_at
            """
        )
        conn.execute("vacuum (analyze) job_queue")
        conn.execute("vacuum (analyze) image_generations")
    return time.perf_counter() - started


def place(conn: psycopg.Connection[Any], share: float, queued: int) -> dict[str, Any]:
    """The queued generation whose job is at `share` (0 head .. 1 tail) of the claim order."""
    offset = min(queued - 1, int(share * queued))
    row = conn.execute(
        """
        select (payload ->> 'generation_id')::uuid, created_by, priority, turn, created_at
        from job_queue where status = 'pending'
        order by priority desc, turn, created_at offset %s limit 1
        """,
        (offset,),
    ).fetchone()
    assert row is not None
    return {
        "generation_id": row[0],
        "user_id": row[1],
        "priority": row[2],
        "turn": row[3],
        "created_at": row[4],
        "expected_position": offset + 1,
    }


def time_calls(conn: psycopg.Connection[Any], spot: dict[str, Any], samples: int) -> dict[str, Any]:
    service: list[float] = []
    signed_in: list[float] = []
    answer: dict[str, Any] = {}
    claims = json.dumps({"sub": str(spot["user_id"]), "role": "authenticated"})
    for _ in range(samples):
        started = time.perf_counter()
        row = conn.execute(
            "select generation_queue_status(%s, %s)", (spot["generation_id"], spot["user_id"])
        ).fetchone()
        service.append((time.perf_counter() - started) * 1000)
        assert row is not None
        answer = row[0]
        started = time.perf_counter()
        with conn.transaction():
            conn.execute("set local role authenticated")
            conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
            conn.execute("select generation_status(%s)", (spot["generation_id"],)).fetchone()
        signed_in.append((time.perf_counter() - started) * 1000)
    return {
        "position": answer.get("position"),
        "exact": answer.get("position_exact"),
        "estimated_s": answer.get("estimated_seconds"),
        "queue_status_p50_ms": percentile(service, 0.5),
        "queue_status_p95_ms": percentile(service, 0.95),
        "signed_in_p50_ms": percentile(signed_in, 0.5),
        "signed_in_p95_ms": percentile(signed_in, 0.95),
    }


def explain_ahead(
    conn: psycopg.Connection[Any], spot: dict[str, Any], limit: int | None
) -> dict[str, Any]:
    """The count's plan: scan nodes (a Seq Scan would be a scan of the whole table), rows
    read, buffers touched, server time."""
    statement = AHEAD.format(limit=f"limit {limit}" if limit else "")
    row = conn.execute(
        ("explain (analyze, buffers, format json) " + statement).encode(),
        {key: spot[key] for key in ("priority", "turn", "created_at")},
    ).fetchone()
    assert row is not None
    plan = row[0][0]
    scans: list[str] = []
    rows_read = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal rows_read
        if "Scan" in node["Node Type"]:
            scans.append(f"{node['Node Type']} {node.get('Index Name') or node['Relation Name']}")
            rows_read += int(node.get("Actual Rows", 0)) * int(node.get("Actual Loops", 1))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    top = plan["Plan"]
    return {
        "plan": "; ".join(sorted(set(scans))),
        "seq_scan": any(scan.startswith("Seq Scan") for scan in scans),
        "index_rows_read": rows_read,
        "buffers": int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0)),
        "server_ms": float(plan["Execution Time"]),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "queue position")
    queued = 5_000 if args.quick else 100_000
    samples = 20 if args.quick else 200
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as server:
        settings = server.settings()
        url = server.migrated_database("bench_queue_position")
        fill_seconds = fill(url, queued)
        print(f"{queued:,} queued jobs of {USERS:,} users: filled in {fill_seconds:.1f} s")
        with psycopg.connect(url, autocommit=True) as conn:
            depth = conn.execute("select count(*) from job_queue where status = 'pending'")
            row = depth.fetchone()
            assert row is not None and row[0] == queued, row
            limit_row = conn.execute(POSITION_LIMIT).fetchone()
            assert limit_row is not None
            limit = int(limit_row[0])
            for name, share in (("head", 0.0), ("middle", 0.5), ("tail", 1.0)):
                spot = place(conn, share, queued)
                measured = time_calls(conn, spot, samples)
                expected = min(spot["expected_position"], limit + 1)
                assert measured["position"] == expected, (measured, spot)
                unbounded = explain_ahead(conn, spot, None)
                rows.append(
                    {
                        "queued": queued,
                        "place": name,
                        **measured,
                        **explain_ahead(conn, spot, limit),
                        "unbounded_rows_read": unbounded["index_rows_read"],
                        "unbounded_server_ms": unbounded["server_ms"],
                    }
                )
        server.drop_database("bench_queue_position")
    print_table(f"generation_status with {queued:,} queued jobs ({samples} calls each)", rows)
    write_results(
        "queue_position",
        rows,
        {"quick": args.quick, "server_settings": settings, "users": USERS, "fill_s": fill_seconds},
    )


if __name__ == "__main__":
    main()
