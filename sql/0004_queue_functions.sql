-- The queue: enqueue, claim (with leases), heartbeat, complete (with fencing and
-- backoff), release and cancel. Each state change is one function, one transaction.

-- The old platform's signatures, replaced by ones with extra defaulted arguments; both
-- existing would make calls with the original arguments ambiguous.
drop function if exists public.enqueue_job(text, jsonb, integer, timestamptz, integer);
drop function if exists public.claim_next_job(text[]);
drop function if exists public.complete_job(uuid, text, jsonb);

create or replace function public.enqueue_job(
    p_job_type text,
    p_payload jsonb default '{}'::jsonb,
    p_priority integer default 0,
    p_scheduled_at timestamptz default now(),
    p_max_attempts integer default 3,
    p_created_by uuid default null,
    p_dedupe_key text default null
) returns uuid
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_id uuid;
begin
    loop
        insert into job_queue (job_type, payload, priority, scheduled_at, max_attempts,
                               created_by, dedupe_key)
        values (p_job_type, coalesce(p_payload, '{}'::jsonb), coalesce(p_priority, 0),
                coalesce(p_scheduled_at, now()), coalesce(p_max_attempts, 3), p_created_by,
                p_dedupe_key)
        on conflict (dedupe_key) where dedupe_key is not null
                                   and status in ('pending', 'processing')
        do nothing
        returning id into v_id;

        if v_id is not null then
            -- Wakes listening workers at once; delivered when this transaction commits.
            perform pg_notify('job_queue', p_job_type);
            return v_id;
        end if;

        -- An active job holds this key: hand back that one instead of a duplicate.
        select id into v_id
        from job_queue
        where dedupe_key = p_dedupe_key and status in ('pending', 'processing');
        if v_id is not null then
            return v_id;
        end if;
        -- It finished between the two statements: try the insert again.
    end loop;
end
$$;

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
        -- A lease that ran out on the final attempt: the job (and its generation) fail
        -- instead of running forever a job that keeps killing its workers.
        update job_queue
        set status = 'failed', completed_at = now(), updated_at = now(),
            error_message = 'The worker stopped responding during the final attempt',
            locked_by = null, locked_until = null
        where status = 'processing' and locked_until < now() and attempts >= max_attempts
          and (p_job_types is null or job_type = any (p_job_types))
        returning payload
    ),
    exhausted_generations as (
        update image_generations g
        set status = 'failed', updated_at = now(),
            error_message = 'Image generation failed: the worker stopped responding. '
                            'Please try again.'
        from exhausted e
        where e.payload ->> 'generation_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
          and g.id = (e.payload ->> 'generation_id')::uuid
          and g.status not in ('completed', 'failed')
    ),
    due as (
        select id, priority, created_at
        from job_queue
        where status = 'pending'
          and scheduled_at <= now()
          and (p_job_types is null or job_type = any (p_job_types))
        order by priority desc, created_at
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    expired as (
        -- A lease that ran out means its worker vanished: the job is taken over.
        select id, priority, created_at
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
        select id from (select * from due union all select * from expired) candidates
        order by priority desc, created_at
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

-- The original function, kept for the SQL editor and old callers: one job, 10 minute lease.
create or replace function public.claim_next_job(p_job_types text[] default null)
returns setof public.job_queue
language sql
security definer
set search_path = public, pg_temp
as $$
    select * from claim_jobs('sql:' || pg_backend_pid(), 1, p_job_types, 600)
$$;

create or replace function public.heartbeat_jobs(
    p_worker_id text,
    p_job_ids uuid[],
    p_lease_seconds integer default 300
) returns setof uuid
language sql
security definer
set search_path = public, pg_temp
as $$
    -- Returns the jobs this worker still holds; any other id's lease was lost. Rows are
    -- locked in id order, as complete_jobs locks them, so the two cannot deadlock.
    with held as (
        select id
        from job_queue
        where id = any (p_job_ids)
          and status = 'processing'
          and locked_by = p_worker_id
        order by id
        for update
    )
    update job_queue j
    set locked_until = now() + make_interval(secs => coalesce(p_lease_seconds, 300)),
        updated_at = now()
    from held
    where j.id = held.id
    returning j.id
$$;

create or replace function public.complete_job(
    p_job_id uuid,
    p_error_message text default null,
    p_error_details jsonb default null,
    p_result jsonb default null,
    p_worker_id text default null,
    p_retryable boolean default true
) returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_job job_queue;
begin
    select * into v_job from job_queue where id = p_job_id for update;
    if not found or v_job.status <> 'processing' then
        return false;
    end if;
    -- Fencing: a worker whose lease was taken over no longer owns the job.
    if p_worker_id is not null and v_job.locked_by is distinct from p_worker_id then
        return false;
    end if;

    if p_error_message is null then
        update job_queue
        set status = 'completed', completed_at = now(), updated_at = now(), result = p_result,
            error_message = null, error_details = null, locked_by = null, locked_until = null
        where id = p_job_id;
    elsif coalesce(p_retryable, true) and v_job.attempts < v_job.max_attempts then
        -- Backoff 2 s, 4 s, 8 s ... with +-10 % jitter so retries do not arrive in step.
        update job_queue
        set status = 'pending',
            scheduled_at = now() + make_interval(
                secs => power(2, v_job.attempts) * (0.9 + random() * 0.2)),
            error_message = p_error_message, error_details = p_error_details,
            locked_by = null, locked_until = null, updated_at = now()
        where id = p_job_id;
    else
        update job_queue
        set status = 'failed', completed_at = now(), updated_at = now(),
            error_message = p_error_message, error_details = p_error_details,
            locked_by = null, locked_until = null
        where id = p_job_id;
    end if;
    return true;
end
$$;

-- Completes many successful jobs of one worker in one transaction: short jobs finishing
-- together share one commit instead of paying one each. Fencing as in complete_job;
-- returns the ids it completed (a job whose lease was lost is left alone).
create or replace function public.complete_jobs(
    p_worker_id text,
    p_job_ids uuid[],
    p_results jsonb[] default null
) returns setof uuid
language sql
security definer
set search_path = public, pg_temp
as $$
    with held as (
        select id
        from job_queue
        where id = any (p_job_ids)
          and status = 'processing'
          and locked_by = p_worker_id
        order by id
        for update
    )
    update job_queue j
    set status = 'completed', completed_at = now(), updated_at = now(),
        result = p_results[array_position(p_job_ids, j.id)],
        error_message = null, error_details = null, locked_by = null, locked_until = null
    from held
    where j.id = held.id
    returning j.id
$$;

-- Like the other queue functions (0007_security.sql): the service role's alone.
revoke all on function public.complete_jobs(text, uuid[], jsonb[])
    from public, anon, authenticated;
grant execute on function public.complete_jobs(text, uuid[], jsonb[]) to service_role;

-- Hands jobs back untouched (graceful shutdown): the attempt does not count.
create or replace function public.release_jobs(p_worker_id text, p_job_ids uuid[])
returns integer
language sql
security definer
set search_path = public, pg_temp
as $$
    with released as (
        update job_queue
        set status = 'pending', attempts = greatest(attempts - 1, 0), scheduled_at = now(),
            locked_by = null, locked_until = null, updated_at = now()
        where id = any (p_job_ids) and status = 'processing' and locked_by = p_worker_id
        returning id
    )
    select count(*)::integer from released
$$;

create or replace function public.cancel_job(p_job_id uuid, p_reason text default 'Cancelled')
returns boolean
language sql
security definer
set search_path = public, pg_temp
as $$
    with cancelled as (
        update job_queue
        set status = 'cancelled', completed_at = now(), updated_at = now(),
            error_message = p_reason, locked_by = null, locked_until = null
        where id = p_job_id and status in ('pending', 'processing')
        returning id
    )
    select exists (select from cancelled)
$$;
