-- The queue's own failure call: the runner records every failed attempt through it,
-- whatever the job type. The job retries or fails (complete_job's rules); what follows
-- for a generation is the job_ended_fails_generation trigger's business, not the
-- caller's. Returns the job's status afterwards, null when this worker no longer holds it.
-- fail_generation, its older name, stays for callers that know it, and now calls it.

create or replace function public.fail_job(
    p_job_id uuid,
    p_worker_id text,
    p_error_message text,
    p_error_details jsonb default null,
    p_retryable boolean default true
) returns text
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if not complete_job(p_job_id, p_error_message, p_error_details, null, p_worker_id,
                        p_retryable) then
        return null;
    end if;
    return (select status from job_queue where id = p_job_id);
end
$$;

revoke all on function public.fail_job(uuid, text, text, jsonb, boolean)
    from public, anon, authenticated;
grant execute on function public.fail_job(uuid, text, text, jsonb, boolean) to service_role;

create or replace function public.fail_generation(
    p_job_id uuid,
    p_worker_id text,
    p_error_message text,
    p_error_details jsonb default null,
    p_retryable boolean default true
) returns text
language sql
security definer
set search_path = public, pg_temp
as $$
    select fail_job(p_job_id, p_worker_id, p_error_message, p_error_details, p_retryable)
$$;
