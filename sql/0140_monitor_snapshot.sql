-- The operators' monitor page (GET /dashboard, api/monitor.py) reads everything it shows
-- from this one function, in one snapshot: the page is a view of the database, and what it
-- plots is what an operator's SQL would find.
--
--   queue       active jobs now by type and status (queue_depth), and the last hour's
--               depth per minute, rebuilt from the rows: a job is alive from created_at
--               to its end, processing during each attempt (attempt_history and the one
--               running), pending the rest of the time (a snooze or backoff included)
--   throughput  jobs ended per minute over the last hour, completed and failed, and per
--               type with the failure rate (queue_throughput's window)
--   failures    the latest failed attempts (retries, lost leases, final failures) with
--               their messages, from attempt_history
--   durations   p50/p95 of generation_time_seconds per model over the last hour
--   workers     the registered workers (alive: their session holds its advisory lock,
--               sql/0040) and any worker holding a job, with what each holds
--   provider    generate-image attempts begun in the last minute (each creates or resumes
--               at most one prediction) and predictions running; `limit_per_minute` and the
--               pause come from imagegen.provider_limits where that table exists (read by
--               name at run time, so this works before and after it is added), else null
--
-- For the service role only: the page is behind the worker secret or a service-role JWT.

-- The jobs that can have been in the queue since `p_since`: the active ones and those that
-- ended since. Three scans of the partial indexes (job_queue_pending_idx, _lease_idx,
-- _finished_idx) instead of one of the whole table, which holds days of history. No SET
-- clause (names qualified instead), so that the planner inlines it and reads only the
-- columns the caller uses.
create or replace function imagegen.monitor_jobs(p_since timestamptz)
returns setof public.job_queue
language sql
stable
as $$
    select * from public.job_queue where status = 'pending'
    union all
    select * from public.job_queue where status = 'processing'
    union all
    select * from public.job_queue
    where status in ('completed', 'failed', 'cancelled') and completed_at > p_since
$$;

create or replace function imagegen.monitor_series(p_start timestamptz, p_buckets integer)
returns jsonb
language sql
stable
set search_path = public, pg_temp
as $$
    -- Sample i (0..p_buckets) is taken at p_start + i minutes. An interval [enter, leave)
    -- counts at the samples from ceil(enter) to before ceil(leave): +1 and -1 events,
    -- summed per sample, then a running sum (linear in the rows, whatever the queue's size).
    with jobs as (
        select id, job_type, status, created_at, started_at, completed_at, attempt_history
        from imagegen.monitor_jobs(p_start)
    ),
    alive as (
        select job_type, created_at as enter,
               case when status in ('pending', 'processing') then null else completed_at end
                   as leave
        from jobs
    ),
    attempts as (
        select j.job_type, (a ->> 'started_at')::timestamptz as enter,
               (a ->> 'finished_at')::timestamptz as leave
        from jobs j, jsonb_array_elements(j.attempt_history) a
        where a ? 'started_at'
        union all
        select job_type, started_at, null from jobs
        where status = 'processing' and started_at is not null
    ),
    events as (
        select job_type, 'alive' as kind, enter, leave from alive
        union all
        select job_type, 'processing', enter, leave from attempts
    ),
    indexed as (
        select job_type, kind,
               -- date_part: double precision; extract's numeric is several times slower here.
               greatest(0, ceil(date_part('epoch', enter - p_start) / 60))::integer as first,
               case when leave is null then p_buckets + 1
                    else greatest(0, ceil(date_part('epoch', leave - p_start) / 60))::integer
               end as stop
        from events
    ),
    deltas as (
        select job_type, kind, first as i, 1 as d from indexed
        where first < stop and first <= p_buckets
        union all
        select job_type, kind, stop, -1 from indexed
        where first < stop and stop <= p_buckets
    ),
    types as (select distinct job_type from deltas),
    grid as (
        select t.job_type, k.kind, i
        from types t, (values ('alive'), ('processing')) k (kind),
             generate_series(0, p_buckets) i
    ),
    counts as (
        select g.job_type, g.kind, g.i,
               sum(coalesce(d.total, 0)) over (
                   partition by g.job_type, g.kind order by g.i) as n
        from grid g
        left join (select job_type, kind, i, sum(d) as total from deltas
                   group by job_type, kind, i) d using (job_type, kind, i)
    ),
    per_type as (
        select a.job_type, a.i, a.n - p.n as pending, p.n as processing
        from counts a
        join counts p on p.job_type = a.job_type and p.i = a.i and p.kind = 'processing'
        where a.kind = 'alive'
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'job_type', job_type,
               'pending', pending_list,
               'processing', processing_list) order by job_type), '[]'::jsonb)
    from (
        select job_type,
               jsonb_agg(greatest(pending, 0) order by i) as pending_list,
               jsonb_agg(processing order by i) as processing_list
        from per_type
        group by job_type
    ) s
$$;

create or replace function public.monitor_snapshot() returns jsonb
language plpgsql
stable
security definer
set search_path = public, pg_temp
as $$
declare
    c_buckets constant integer := 60;  -- minutes shown
    c_failures constant integer := 10;  -- latest failure messages
    c_jobs_listed constant integer := 20;  -- held jobs listed per worker
    v_now timestamptz := now();
    -- Minute buckets [v_start + i, v_start + i + 1), i < c_buckets: the last ends now.
    v_start timestamptz := now() - make_interval(mins => c_buckets);
    v_provider jsonb;
    v_limit jsonb;
begin
    select jsonb_build_object(
        'provider', 'replicate',
        -- An attempt begun in the last minute has ended since (it is in attempt_history)
        -- or is running (started_at).
        'creates_last_minute', (
            select count(*) filter (where j.status = 'processing'
                                      and j.started_at > v_now - interval '1 minute')
                   + coalesce(sum((
                       select count(*) from jsonb_array_elements(j.attempt_history) a
                       where (a ->> 'started_at')::timestamptz > v_now - interval '1 minute')),
                       0)
            from imagegen.monitor_jobs(v_now - interval '1 minute') j
            where j.job_type = 'generate-image' and j.attempts > 0
        ),
        'predictions_running', (
            select count(*) from image_generations
            where status = 'processing' and replicate_prediction_id is not null
        ),
        'limit_per_minute', null,
        'paused_until', null
    ) into v_provider;

    if to_regclass('imagegen.provider_limits') is not null then
        execute $q$
            select jsonb_build_object(
                'limit_per_minute', nullif(creates_per_minute, 0),
                'paused_until', case when paused_until > now() then paused_until end)
            from imagegen.provider_limits where provider = 'replicate'
        $q$ into v_limit;
        v_provider := v_provider || coalesce(v_limit, '{}'::jsonb);
    end if;

    return jsonb_build_object(
        'generated_at', v_now,
        'window', jsonb_build_object(
            'start', v_start, 'minutes', c_buckets, 'bucket_seconds', 60),
        'queue', jsonb_build_object(
            'now', (select coalesce(jsonb_agg(to_jsonb(d) order by d.job_type, d.status),
                                    '[]'::jsonb)
                    from queue_depth() d),
            'pending', (select coalesce(sum(d.count), 0) from queue_depth() d
                        where d.status = 'pending'),
            'processing', (select coalesce(sum(d.count), 0) from queue_depth() d
                           where d.status = 'processing'),
            -- Depth sampled at the end of each bucket: the last sample is now.
            'series', imagegen.monitor_series(v_start + interval '1 minute', c_buckets - 1)),
        'throughput', (
            select jsonb_build_object(
                'completed', count(*) filter (where status = 'completed'),
                'failed', count(*) filter (where status = 'failed'),
                'failure_rate', round(count(*) filter (where status = 'failed')::numeric
                                      / nullif(count(*), 0), 4),
                'per_minute', (
                    select jsonb_agg(jsonb_build_object('completed', b.completed,
                                                        'failed', b.failed) order by b.i)
                    from (
                        select i,
                               count(j.id) filter (where j.status = 'completed') as completed,
                               count(j.id) filter (where j.status = 'failed') as failed
                        from generate_series(0, c_buckets - 1) i
                        left join job_queue j
                            on j.status in ('completed', 'failed')
                           and j.completed_at >= v_start + make_interval(mins => i)
                           and j.completed_at < v_start + make_interval(mins => i + 1)
                        group by i
                    ) b),
                'by_type', (
                    select coalesce(jsonb_agg(jsonb_build_object(
                               'job_type', t.job_type, 'completed', t.completed,
                               'failed', t.failed,
                               'failure_rate', round(t.failed::numeric
                                                     / nullif(t.completed + t.failed, 0), 4))
                           order by t.job_type), '[]'::jsonb)
                    from queue_throughput t))
            from job_queue
            where status in ('completed', 'failed') and completed_at >= v_start),
        'failures', (
            select coalesce(jsonb_agg(f order by f ->> 'finished_at' desc), '[]'::jsonb)
            from (
                select jsonb_build_object(
                           'job_id', j.id, 'job_type', j.job_type,
                           'attempt', a -> 'attempt', 'worker', a -> 'worker',
                           'outcome', a -> 'outcome', 'error', a -> 'error',
                           'error_kind', a -> 'error_kind', 'finished_at', a -> 'finished_at'
                       ) as f
                from imagegen.monitor_jobs(v_start) j, jsonb_array_elements(j.attempt_history) a
                where a ->> 'outcome' in ('retry', 'failed', 'lost')
                  and (a ->> 'finished_at')::timestamptz >= v_start
                order by (a ->> 'finished_at')::timestamptz desc
                limit c_failures
            ) latest),
        'durations', (
            select coalesce(jsonb_agg(jsonb_build_object(
                       'model', model, 'count', n,
                       'p50_seconds', round(p50::numeric, 2),
                       'p95_seconds', round(p95::numeric, 2)) order by model), '[]'::jsonb)
            from (
                select coalesce(model, '(unknown)') as model, count(*) as n,
                       percentile_cont(0.5) within group (order by generation_time_seconds)
                           as p50,
                       percentile_cont(0.95) within group (order by generation_time_seconds)
                           as p95
                from image_generations
                where status = 'completed' and completed_at >= v_start
                  and generation_time_seconds is not null
                group by coalesce(model, '(unknown)')
            ) m),
        'workers', (
            with held as (
                select locked_by as worker_id, count(*) as n, max(locked_until) as lease_until,
                       jsonb_agg(jsonb_build_object(
                                     'job_id', id, 'job_type', job_type, 'attempt', attempts,
                                     'started_at', started_at)
                                 order by started_at) filter (where rank <= c_jobs_listed)
                           as jobs
                from (select *, row_number() over (partition by locked_by order by started_at)
                                    as rank
                      from job_queue
                      where status = 'processing' and locked_by is not null) p
                group by locked_by
            ),
            registered as (
                select s.worker_id, s.registered_at,
                       exists (select from pg_locks l
                               where l.locktype = 'advisory' and l.granted
                                 and l.objsubid = 1
                                 and l.classid = ((s.lock_key >> 32) & 4294967295)::oid
                                 and l.objid = (s.lock_key & 4294967295)::oid) as alive
                from imagegen.worker_sessions s
            )
            -- A worker holding jobs without registering (the PostgREST gateway, the old
            -- worker): alive unknown (null).
            select coalesce(jsonb_agg(jsonb_build_object(
                       'worker_id', worker_id,
                       'registered_at', r.registered_at,
                       'alive', r.alive,
                       'holding', coalesce(h.n, 0),
                       'lease_until', h.lease_until,
                       'jobs', coalesce(h.jobs, '[]'::jsonb))
                   order by worker_id), '[]'::jsonb)
            from registered r full join held h using (worker_id)),
        'provider', v_provider
    );
end
$$;

revoke all on function imagegen.monitor_jobs(timestamptz) from public, anon, authenticated;
revoke all on function imagegen.monitor_series(timestamptz, integer)
    from public, anon, authenticated;
revoke all on function public.monitor_snapshot() from public, anon, authenticated;
grant execute on function public.monitor_snapshot() to service_role;
