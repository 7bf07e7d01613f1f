-- Pending jobs come in two kinds, and each has its own index:
--
--   ready     due since they were enqueued (scheduled_at <= created_at): new jobs, the
--             apps' inserts. The claim takes them in the fair order of sql/0080.
--   deferred  handed back to wait (scheduled_at > created_at): snoozed until a webhook,
--             a provider token or a poll (sql/0060, 0111, 0130), retries after their
--             backoff, jobs enqueued for later.
--
-- Before, both kinds shared job_queue_fair_idx, and the claim stepped over every deferred
-- job that sorted ahead of the first due one. With webhooks on, every generation whose model
-- is running is a deferred job, so each claim read them all: 5 ms a claim with 5,000 in flight,
-- and more with more (bench/generation_throughput.py). Now the claim reads the head of the
-- ready index and the deferred jobs that are due (a range of their index by scheduled_at),
-- and takes the first of both in the same fair order. Which index a job is in follows from
-- its own columns, so every writer of job_queue (old functions, the apps, operators) keeps
-- working unchanged: together the two kinds are exactly the pending jobs.
--
-- A new owner's job joins the round being served among the ready jobs (sql/0080); a
-- deferred job that falls due keeps the turn it had.

drop index if exists public.job_queue_fair_idx;
create index if not exists job_queue_ready_idx
    on public.job_queue (priority desc, turn, created_at)
    where status = 'pending' and scheduled_at <= created_at;
create index if not exists job_queue_deferred_idx
    on public.job_queue (scheduled_at) include (priority, turn, created_at)
    where status = 'pending' and scheduled_at > created_at;

create or replace function imagegen.assign_turn() returns trigger
language plpgsql
set search_path = public, pg_temp
as $$
declare
    v_owner text := coalesce(new.created_by::text, new.payload ->> 'user_id');
    v_round bigint;
    v_last bigint;
begin
    select turn into v_round
    from job_queue
    where status = 'pending' and scheduled_at <= created_at and priority = new.priority
    order by turn
    limit 1;
    if v_owner is not null then
        select turn into v_last
        from job_queue
        where status = 'pending' and priority = new.priority
          and coalesce(created_by::text, payload ->> 'user_id') = v_owner
        order by turn desc
        limit 1;
    end if;
    new.turn := greatest(coalesce(v_round, 0), coalesce(v_last + 1, 0));
    return new;
end
$$;

-- The claim of sql/0100, its due jobs taken from both kinds.
create or replace function public.claim_jobs(
    p_worker_id text,
    p_limit integer default 1,
    p_job_types text[] default null,
    p_lease_seconds integer default 300
) returns setof public.job_queue
language sql
security definer
set search_path = public, pg_temp
as $$
    with exhausted as (
        -- A lease that ran out on the final attempt: the job fails (and its generation
        -- with it, worded for the user by fail_generation_of_ended_job) instead of running
        -- forever a job that keeps killing its workers. error_type marks the attempt lost.
        update job_queue
        set status = 'failed', completed_at = now(), updated_at = now(),
            error_message = 'The worker stopped responding during the final attempt',
            error_details = jsonb_build_object('error_type', 'lease_expired',
                                               'worker_id', locked_by, 'attempt', attempts),
            locked_by = null, locked_until = null
        where status = 'processing' and locked_until < now() and attempts >= max_attempts
          and (p_job_types is null or job_type = any (p_job_types))
    ),
    ready as (
        select id, priority, turn, created_at
        from job_queue
        where status = 'pending'
          and scheduled_at <= created_at
          and scheduled_at <= now()
          and (p_job_types is null or job_type = any (p_job_types))
        order by priority desc, turn, created_at
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    deferred as (
        select id, priority, turn, created_at
        from job_queue
        where status = 'pending'
          and scheduled_at > created_at
          and scheduled_at <= now()
          and (p_job_types is null or job_type = any (p_job_types))
        order by priority desc, turn, created_at
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    expired as (
        -- A lease that ran out means its worker vanished: the job is taken over.
        select id, priority, turn, created_at
        from job_queue
        where status = 'processing'
          and locked_until < now()
          and attempts < max_attempts
          and (p_job_types is null or job_type = any (p_job_types))
        order by locked_until
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    chosen as (
        select id from (select * from ready union all select * from deferred
                        union all select * from expired) candidates
        order by priority desc, turn, created_at
        limit coalesce(p_limit, 1)
    )
    update job_queue j
    set status = 'processing',
        attempts = j.attempts + 1,
        locked_by = p_worker_id,
        locked_until = now() + make_interval(secs => coalesce(p_lease_seconds, 300)),
        started_at = now(),
        updated_at = now()
    -- Not a join: planned without knowing p_limit, a join hashes the whole table (history
    -- included) on every claim; `= any (array)` is a primary-key lookup per chosen job.
    where j.id = any (array(select id from chosen))
    returning j.*
$$;

-- The queue position of sql/0151, counted the same way.
create or replace function imagegen.generation_status(p_generation_id uuid, p_user_id uuid)
returns jsonb
language plpgsql
stable
set search_path = public, pg_temp
as $$
declare
    g image_generations;
    j job_queue;
    v_ahead bigint;
    v_busy bigint;
    v_samples integer;
    v_median numeric;
    v_basis text;
    v_estimate numeric;
    v_limit integer := greatest(imagegen.integer_setting('queue_position_limit', 1000), 1);
begin
    select * into g from image_generations where id = p_generation_id and user_id = p_user_id;
    if not found then
        perform imagegen.invalid('generation_id', 'Unknown generation');
    end if;

    select count(*), percentile_cont(0.5) within group (order by seconds)
    into v_samples, v_median
    from (select generation_time_seconds as seconds
          from image_generations
          where model = g.model and status = 'completed'
            and completed_at > now() - interval '1 hour'
            and generation_time_seconds is not null
          order by completed_at desc
          limit 100) recent;
    if v_samples > 0 then
        v_basis := 'recent';
    else
        select estimated_time_seconds into v_median
        from models where id = g.model_id or (g.model_id is null and name = g.model)
        limit 1;
        v_basis := case when v_median is not null then 'model' end;
    end if;

    select * into j
    from job_queue
    where payload ? 'generation_id' and payload ->> 'generation_id' = g.id::text
      and status in ('pending', 'processing')
    order by created_at desc
    limit 1;
    select count(*) into v_busy from job_queue where status = 'processing';

    if j.status = 'pending' then
        -- The ready jobs ahead in the claim's order, then the deferred ones that are due.
        select count(*) into v_ahead
        from (select from job_queue
              where status = 'pending' and scheduled_at <= created_at
                and priority > j.priority
              union all
              select from job_queue
              where status = 'pending' and scheduled_at <= created_at
                and priority = j.priority and (turn, created_at) < (j.turn, j.created_at)
              union all
              select from job_queue
              where status = 'pending' and scheduled_at > created_at and scheduled_at <= now()
                and (priority > j.priority
                     or (priority = j.priority
                         and (turn, created_at) < (j.turn, j.created_at)))
              limit v_limit) ahead;
        v_estimate := (floor(v_ahead / greatest(v_busy, 1)) + 1) * v_median;
    elsif j.status = 'processing' then
        v_estimate := greatest(v_median - extract(epoch from now() - j.started_at), 0);
    end if;

    return jsonb_build_object(
        'generation_id', g.id,
        'status', g.status,
        'job_status', j.status,
        'position', v_ahead + 1,
        'position_exact', case when v_ahead is not null then v_ahead < v_limit end,
        'workers_busy', v_busy,
        'median_seconds', round(v_median, 1),
        'estimate_basis', v_basis,
        'samples', v_samples,
        'estimated_seconds', round(v_estimate)
    );
end
$$;

