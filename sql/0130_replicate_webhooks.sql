-- Replicate webhooks (issue 16): with a public URL configured, a prediction reports its end
-- to /functions/v1/replicate-webhook instead of being polled by a worker that holds a slot
-- for the whole run. The generate-image job creates the prediction, saves its id and hands
-- its slot back (await_webhook, a snooze until the model's expected time plus a grace);
-- a verified delivery (api/app.py, worker/webhooks.py) is recorded once and becomes a
-- process-webhook job (accept_webhook), which makes that job due now
-- (wake_prediction_job); the job then reads the prediction and goes on as ever
-- (generation_downloading, or a failed attempt). A delivery that never comes is covered
-- by the snooze running out: the job wakes, polls once and snoozes again, 5 s growing to
-- 300 s. Each step is one transaction; the generate-image job's lease and dedupe key make
-- the generation move on exactly once whatever the order of deliveries and wake-ups.

-- One row per delivery Replicate made (its `webhook-id`, the same when it resends one): a
-- second delivery of the same id changes nothing.
create table if not exists imagegen.webhook_deliveries (
    webhook_id text primary key check (length(webhook_id) between 1 and 200),
    prediction_id text not null,
    status text,
    received_at timestamptz not null default now()
);
create index if not exists webhook_deliveries_received_idx
    on imagegen.webhook_deliveries (received_at);

-- A verified delivery: recorded, and when it reports a prediction's end and a generation
-- holds that prediction, a process-webhook job (deduplicated per prediction and status,
-- so resent and reordered deliveries collapse), together. False when this webhook-id was
-- seen before (nothing changes). The payload is the prediction as Replicate sends it.
create or replace function public.accept_webhook(p_webhook_id text, p_payload jsonb)
returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_prediction text := p_payload ->> 'id';
    v_status text := p_payload ->> 'status';
begin
    if p_webhook_id is null or length(p_webhook_id) not between 1 and 200 then
        perform imagegen.invalid('webhook-id', 'webhook-id must be 1 to 200 characters');
    end if;
    if jsonb_typeof(p_payload -> 'id') is distinct from 'string'
       or length(v_prediction) not between 1 and 200 then
        perform imagegen.invalid('id', 'the delivery names no prediction');
    end if;

    insert into imagegen.webhook_deliveries (webhook_id, prediction_id, status)
    values (p_webhook_id, v_prediction, left(v_status, 40))
    on conflict (webhook_id) do nothing;
    if not found then
        return false;
    end if;

    if v_status in ('succeeded', 'failed', 'canceled', 'aborted')
       and exists (select from image_generations where replicate_prediction_id = v_prediction)
    then
        perform enqueue_job(
            p_job_type => 'process-webhook',
            p_payload => jsonb_build_object('prediction_id', v_prediction, 'status', v_status),
            p_priority => 1,
            p_max_attempts => 5,
            p_dedupe_key => 'process-webhook:' || v_prediction || ':' || v_status
        );
    end if;
    return true;
end
$$;

-- The prediction ended: the generate-image job of the generation holding it becomes due
-- now (and the workers are woken). 'woken'; 'busy' when a worker holds that job (it reads
-- the prediction itself, or snoozes: the caller tries again shortly); 'none' when no
-- active job has it (the generation moved on already, or was cancelled).
create or replace function public.wake_prediction_job(p_prediction_id text)
returns text
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_job job_queue;
begin
    select j.* into v_job
    from image_generations g
    join job_queue j on j.dedupe_key = 'generate-image:' || g.id
                    and j.status in ('pending', 'processing')
    where g.replicate_prediction_id = p_prediction_id
    for update of j;
    if not found then
        return 'none';
    end if;
    if v_job.status = 'processing' then
        return 'busy';
    end if;
    update job_queue
    set scheduled_at = least(scheduled_at, now()), updated_at = now()
    where id = v_job.id;
    perform pg_notify('job_queue', 'generate-image');
    return 'woken';
end
$$;

-- The prediction is running on Replicate: the worker hands the job back until the
-- prediction's expected end (the model's estimated_time_seconds plus p_grace_seconds),
-- or for p_delay_seconds when given (a poll that found it still running). The snooze
-- spends no attempt (sql/0060_snooze_job.sql). Returns the wake-up time, null when the
-- job is no longer this worker's.
create or replace function public.await_webhook(
    p_job_id uuid,
    p_worker_id text,
    p_grace_seconds numeric,
    p_delay_seconds numeric default null
) returns timestamptz
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_estimate numeric;
    v_until timestamptz;
begin
    if p_delay_seconds is null then
        select max(m.estimated_time_seconds) into v_estimate
        from job_queue j
        join models m on m.replicate_id = j.payload ->> 'model_id'
        where j.id = p_job_id;
    end if;
    v_until := now() + make_interval(secs => greatest(0, coalesce(
        p_delay_seconds, coalesce(v_estimate, 0) + coalesce(p_grace_seconds, 0))));
    if not snooze_job(p_job_id, p_worker_id, v_until) then
        return null;
    end if;
    return v_until;
end
$$;

-- The saved prediction failed or was cancelled on Replicate: the generation lets go of it
-- before the attempt is recorded as failed, so the retry creates a new one (as a retry in
-- polling mode does) instead of finding the same failure again. Fenced by the lease.
create or replace function public.release_prediction(
    p_job_id uuid,
    p_worker_id text,
    p_prediction_id text
) returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    update image_generations
    set replicate_prediction_id = null, updated_at = now()
    where id = imagegen.held_generation(p_job_id, p_worker_id)
      and replicate_prediction_id = p_prediction_id;
    return found;
end
$$;

revoke all on table imagegen.webhook_deliveries from public, anon, authenticated;
revoke all on function public.accept_webhook(text, jsonb) from public, anon, authenticated;
revoke all on function public.wake_prediction_job(text) from public, anon, authenticated;
revoke all on function public.await_webhook(uuid, text, numeric, numeric)
    from public, anon, authenticated;
revoke all on function public.release_prediction(uuid, text, text)
    from public, anon, authenticated;
grant execute on function public.accept_webhook(text, jsonb) to service_role;
grant execute on function public.wake_prediction_job(text) to service_role;
grant execute on function public.await_webhook(uuid, text, numeric, numeric) to service_role;
grant execute on function public.release_prediction(uuid, text, text) to service_role;
