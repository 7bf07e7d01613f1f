"""What the monitor page costs the database: `monitor_snapshot()` (sql/0140), which the
page calls every 5 seconds per open tab, at growing queue sizes.

For each size a fresh database gets `active` jobs (90 % pending, 10 % processing, held by
20 workers), `hour` jobs finished in the last hour (5 % failed, one attempt each in
attempt_history, a generation each) and `history` jobs finished over the last 14 days,
then is vacuumed and analysed. Then `monitor_snapshot()` runs `samples` times on one
connection (client round trip included) and the table gives its p50 and p95.

    .venv/bin/python -m bench.monitor_snapshot [--quick]
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.common import cluster, parse_args, percentile, print_table, write_results

FILL = (
    """
insert into auth.users (id, email) values ('00000000-0000-0000-0000-00000000b0b0', 'b@bench')
on conflict do nothing
    """,
    """
-- Waiting and running now.
insert into job_queue (job_type, payload, status, attempts, created_at, scheduled_at,
                       started_at, locked_by, locked_until)
select 'generate-image', jsonb_build_object('generation_id', gen_random_uuid()),
       case when g %% 10 = 0 then 'processing' else 'pending' end,
       case when g %% 10 = 0 then 1 else 0 end,
       now() - (g::float8 / %(active)s) * interval '50 minutes',
       now() - (g::float8 / %(active)s) * interval '50 minutes',
       case when g %% 10 = 0 then now() - interval '20 seconds' end,
       case when g %% 10 = 0 then 'bench-worker-' || (g %% 20) end,
       case when g %% 10 = 0 then now() + interval '2 minutes' end
from generate_series(1, %(active)s) g
    """,
    """
-- Finished in the last hour, each with its attempt and its generation.
with done as (
    insert into job_queue (job_type, payload, status, attempts, created_at, scheduled_at,
                           started_at, completed_at, updated_at, error_message,
                           attempt_history)
    select 'generate-image', jsonb_build_object('generation_id', gen_random_uuid()),
           case when g %% 20 = 0 then 'failed' else 'completed' end, 1,
           t - interval '40 seconds', t - interval '40 seconds', t - interval '30 seconds', t, t,
           case when g %% 20 = 0 then 'Image generation failed' end,
           jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
               'attempt', 1, 'worker', 'bench-worker-' || (g %% 20),
               'started_at', t - interval '30 seconds', 'finished_at', t,
               'outcome', case when g %% 20 = 0 then 'failed' else 'completed' end,
               'error', case when g %% 20 = 0 then 'Image generation failed' end)))
    from generate_series(1, %(hour)s) g,
         lateral (select now() - (g::float8 / %(hour)s) * interval '59 minutes' as t) at
    returning payload, status, completed_at
)
insert into image_generations (id, user_id, prompt, model, status, completed_at,
                               generation_time_seconds)
select (payload ->> 'generation_id')::uuid, '00000000-0000-0000-0000-00000000b0b0', 'p',
       case when random() < 0.5 then 'flux-schnell' else 'flux-dev' end,
       status, completed_at, 2 + random() * 10
from done
    """,
    """
-- Older history (what the nightly prune has not removed yet).
insert into job_queue (job_type, payload, status, attempts, created_at, scheduled_at,
                       started_at, completed_at, updated_at)
select 'generate-image', '{}'::jsonb, 'completed', 1, t, t, t, t, t
from generate_series(1, %(history)s) g,
     lateral (select now() - interval '1 hour' - (g::float8 / %(history)s)
                     * interval '14 days' as t) at
    """,
)


def measure(url: str, samples: int) -> dict[str, float]:
    times: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select monitor_snapshot()")  # warm the cache and the plan
        for _ in range(samples):
            started = time.perf_counter()
            conn.execute("select monitor_snapshot()").fetchone()
            times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": percentile(times, 0.5), "p95_ms": percentile(times, 0.95)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "monitor snapshot")
    sizes = (
        [(1_000, 1_000, 10_000)]
        if args.quick
        else [(100, 1_000, 0), (10_000, 10_000, 100_000), (100_000, 50_000, 1_000_000)]
    )
    samples = 5 if args.quick else 30
    rows: list[dict[str, Any]] = []
    with cluster(args.database_url) as server:
        for active, hour, history in sizes:
            url = server.migrated_database("bench_monitor")
            started = time.perf_counter()
            with psycopg.connect(url, autocommit=True) as conn:
                for statement in FILL:
                    conn.execute(statement, {"active": active, "hour": hour, "history": history})
                conn.execute("vacuum (analyze) job_queue, image_generations")
            setup = time.perf_counter() - started
            rows.append(
                {
                    "active_jobs": active,
                    "finished_last_hour": hour,
                    "older_history": history,
                    **measure(url, samples),
                    "setup_s": setup,
                }
            )
            print(f"{active:,} active: done", flush=True)
            server.drop_database("bench_monitor")
    print_table("monitor_snapshot(): what one refresh of the monitor page costs", rows)
    write_results("monitor_snapshot", rows, {"quick": args.quick, "samples": samples})


if __name__ == "__main__":
    main()
