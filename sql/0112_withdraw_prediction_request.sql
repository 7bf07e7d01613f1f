-- A create the provider refused with 429 made nothing. When the intent it noted
-- (request_prediction) was this attempt's own, made since the job was claimed, the note is
-- withdrawn, so that the job, back from waiting out the pause, does not first look for a
-- prediction that cannot exist (a list call to the provider each time). A note of an
-- earlier attempt is kept: its create may have been ambiguous (a timeout, a 5xx) and is
-- what the adoption looks for. Fenced by the lease; true when the note was withdrawn.

create or replace function public.withdraw_prediction_request(
    p_job_id uuid,
    p_worker_id text,
    p_requested_at timestamptz
) returns boolean
language sql
security definer
set search_path = public, pg_temp
as $$
    with withdrawn as (
        update image_generations g
        set prediction_requested_at = null, updated_at = now()
        from job_queue j
        where j.id = p_job_id and j.status = 'processing' and j.locked_by = p_worker_id
          and g.id = (j.payload ->> 'generation_id')::uuid
          and g.prediction_requested_at = p_requested_at
          and g.prediction_requested_at >= j.started_at
        returning g.id
    )
    select exists (select from withdrawn)
$$;

revoke all on function public.withdraw_prediction_request(uuid, text, timestamptz)
    from public, anon, authenticated;
grant execute on function public.withdraw_prediction_request(uuid, text, timestamptz)
    to service_role;
