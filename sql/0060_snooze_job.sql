-- Snooze: a worker hands a job it holds back to the queue until a given time, without
-- spending an attempt (the claim counted one; the snooze takes it back). For work that
-- waits on something outside the job (a provider's rate limit, a prediction running on
-- the provider while a webhook is awaited), not for failures: fail_job records those.
-- Fenced by the lease: true when this worker held the job and it is now pending again.

create or replace function public.snooze_job(
    p_job_id uuid,
    p_worker_id text,
    p_until timestamptz
) returns boolean
language sql
security definer
set search_path = public, pg_temp
as $$
    with snoozed as (
        update job_queue
        set status = 'pending', attempts = greatest(attempts - 1, 0),
            scheduled_at = greatest(coalesce(p_until, now()), now()),
            locked_by = null, locked_until = null, updated_at = now()
        where id = p_job_id and status = 'processing' and locked_by = p_worker_id
        returning id
    )
    select exists (select from snoozed)
$$;

revoke all on function public.snooze_job(uuid, text, timestamptz)
    from public, anon, authenticated;
grant execute on function public.snooze_job(uuid, text, timestamptz) to service_role;
