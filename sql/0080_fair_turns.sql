-- Fair turns: among due jobs of equal priority, claims interleave users, so one user's
-- batch of a thousand cannot hold back another user's single image by more than a round.
--
-- Each job gets a turn when it is enqueued (start-time fair queueing): one past its
-- owner's last waiting job at that priority, and never below the round being served (the
-- lowest turn still waiting there), so a newcomer joins the current round instead of
-- going behind everything. The claim orders by priority, then turn, then age: priorities
-- still win, and within a priority each owner gets one job per round. The owner is
-- created_by, else the payload's user_id (the old platform's rows); a job with neither
-- is a round of its own and runs in the current one.

alter table public.job_queue add column if not exists turn bigint not null default 0;

-- The rows the old platform left waiting get the turns they would have had: each owner's
-- jobs numbered by age, at each priority.
update public.job_queue j
set turn = numbered.turn
from (
    select id,
           row_number() over (
               partition by priority, coalesce(created_by::text, payload ->> 'user_id', id::text)
               order by created_at, id
           ) - 1 as turn
    from public.job_queue
    where status = 'pending'
) numbered
where j.id = numbered.id and numbered.turn <> 0;

-- The claim's order replaces the age-only one (job_queue_pending_idx); scheduled_at is
-- included so queue_position counts the jobs ahead from the index alone.
drop index if exists public.job_queue_pending_idx;
create index if not exists job_queue_fair_idx
    on public.job_queue (priority desc, turn, created_at) include (scheduled_at)
    where status = 'pending';
-- An owner's last waiting turn at a priority: one index probe per enqueue.
create index if not exists job_queue_owner_turn_idx
    on public.job_queue ((coalesce(created_by::text, payload ->> 'user_id')), priority, turn)
    where status = 'pending';

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
    where status = 'pending' and priority = new.priority
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

drop trigger if exists job_takes_its_turn on public.job_queue;
create trigger job_takes_its_turn
    before insert on public.job_queue
    for each row
    when (new.status = 'pending')
    execute function imagegen.assign_turn();

revoke all on function imagegen.assign_turn() from public, anon, authenticated;

-- The baseline's claim, ordered by turn within a priority.
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
        -- A lease that ran out on the final attempt: the job fails (and with it, by the
        -- rule of section 8, its generation) instead of running forever a job that keeps
        -- killing its workers. error_type marks the attempt as lost in its history.
        update job_queue
        set status = 'failed', completed_at = now(), updated_at = now(),
            error_message = 'Image generation failed: the worker stopped responding '
                            'during the final attempt. Please try again.',
            error_details = jsonb_build_object('error_type', 'lease_expired',
                                               'worker_id', locked_by, 'attempt', attempts),
            locked_by = null, locked_until = null
        where status = 'processing' and locked_until < now() and attempts >= max_attempts
          and (p_job_types is null or job_type = any (p_job_types))
    ),
    due as (
        select id, priority, turn, created_at
        from job_queue
        where status = 'pending'
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
        select id from (select * from due union all select * from expired) candidates
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
