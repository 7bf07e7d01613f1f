-- Attempt history in the row, as River's `errors`: each job keeps its last attempts (who
-- ran it, when, how it ended, the error and its kind) in `attempt_history`, so an operator
-- reading job_queue in the table editor sees why a job retried without the service's logs.
--
-- One trigger writes it, inside the statement that ends the attempt, whichever function
-- that is: complete_job / complete_jobs / fail_job (completed, retry, failed), claim_jobs
-- (a lease taken over or exhausted: lost), cancel_job and a cancelled generation
-- (cancelled). A snooze or a release hands the attempt back (attempts goes down again):
-- it was no attempt, and is not listed. Bounded: the last 10 attempts, messages cut to
-- 500 characters. Rows from before this migration start with an empty list.

alter table public.job_queue
    add column if not exists attempt_history jsonb not null default '[]'::jsonb;

create or replace function imagegen.record_attempt() returns trigger
language plpgsql
set search_path = public, pg_temp
as $$
declare
    c_kept constant integer := 10;
    c_message_chars constant integer := 500;
    v_outcome text;
    v_kind text := new.error_details ->> 'error_type';
    v_error text;
begin
    if new.status = 'processing' then
        -- A new attempt began while this one held the job: its lease ran out.
        v_outcome := 'lost';
        v_kind := 'lease_expired';
        v_error := 'The worker stopped renewing its lease';
    elsif v_kind = 'lease_expired' then
        v_outcome := 'lost';
        v_error := new.error_message;
    elsif new.status = 'pending' then
        v_outcome := 'retry';
        v_error := new.error_message;
    elsif new.status = 'failed' then
        v_outcome := 'failed';
        v_error := new.error_message;
    else
        -- completed, or cancelled (error_details is then an earlier attempt's)
        v_outcome := new.status;
        v_error := case when new.status = 'cancelled' then new.error_message end;
        v_kind := null;
    end if;

    new.attempt_history := old.attempt_history || jsonb_build_array(jsonb_strip_nulls(
        jsonb_build_object(
            'attempt', old.attempts,
            'worker', old.locked_by,
            'started_at', old.started_at,
            'finished_at', now(),
            'outcome', v_outcome,
            'error', left(v_error, c_message_chars),
            'error_kind', v_kind
        )));
    while jsonb_array_length(new.attempt_history) > c_kept loop
        new.attempt_history := new.attempt_history - 0;
    end loop;
    return new;
end
$$;

-- Only updates that end an attempt call the function: a heartbeat (still processing, same
-- attempt) and a snooze or release (attempts handed back) do not.
drop trigger if exists job_attempt_recorded on public.job_queue;
create trigger job_attempt_recorded
    before update on public.job_queue
    for each row
    when (old.status = 'processing'
          and (new.status <> 'processing' or new.attempts > old.attempts)
          and not (new.status = 'pending' and new.attempts < old.attempts))
    execute function imagegen.record_attempt();

revoke all on function imagegen.record_attempt() from public, anon, authenticated;
