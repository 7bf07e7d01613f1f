-- The legacy generate-image runs its generation's jobs itself, as a worker does: it claims
-- them (with a lease, heartbeats, the same failure rule) instead of waiting for a worker,
-- so an API-only process still answers, and a crash mid-call leaves a lease that runs out
-- and a job the next worker takes over. A worker may claim the same jobs first: then the
-- call only waits.

-- Claims the due pending job (generate or download) of this generation, if there is one.
create or replace function public.claim_generation_job(
    p_generation_id uuid,
    p_worker_id text,
    p_lease_seconds integer default 300
) returns setof public.job_queue
language sql
security definer
set search_path = public, pg_temp
as $$
    with due as (
        select id
        from job_queue
        where payload ? 'generation_id'
          and payload ->> 'generation_id' = p_generation_id::text
          and status = 'pending'
          and scheduled_at <= now()
        order by priority desc, created_at
        limit 1
        for update skip locked
    )
    update job_queue j
    set status = 'processing',
        attempts = j.attempts + 1,
        locked_by = p_worker_id,
        locked_until = now() + make_interval(secs => coalesce(p_lease_seconds, 300)),
        started_at = now(),
        updated_at = now()
    from due
    where j.id = due.id
    returning j.*
$$;

revoke all on function public.claim_generation_job(uuid, text, integer)
    from public, anon, authenticated;
grant execute on function public.claim_generation_job(uuid, text, integer) to service_role;
