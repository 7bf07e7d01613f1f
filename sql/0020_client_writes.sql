-- The apps' own writes to image_generations (issue 12, points 1 and 2), allowed exactly
-- as they make them and turned into the same state changes as our own functions:
--   * insert their own row, status `pending`, with the columns the apps send
--     (apps/mobile/services/imageGeneration.ts, RemixBottomSheet.tsx, web api/generate.ts);
--     checked like a start-generation request, so the worker never runs what the API
--     would refuse;
--   * cancel (an active row -> `failed`, the apps' cancel and error report) and retry
--     (`failed` -> `pending`, the mobile batch retry). Nothing else.
-- docs/state-machine.md draws the whole state machine: who may set which status.
--
-- Who wrote: a client's statement runs as role `authenticated` (PostgREST); our own
-- SECURITY DEFINER functions run as their owner, so the client triggers fire only when
-- current_user is `authenticated`. The rules every writer obeys (a finished generation
-- stays finished, a failed one can only be retried, a failed one stops its work) fire for
-- everyone.

-- Columns ---------------------------------------------------------------------------------
-- What the apps send, and no more: model_id, seed, priority, batch_id, retry counts and
-- the Replicate columns are the server's. completed_at is in the web app's error report;
-- it is accepted and then set by the trigger, never taken from the client.
grant insert (user_id, prompt, negative_prompt, model, style, width, height, steps,
              guidance_scale, source_image_url, generation_strength, status)
    on public.image_generations to authenticated;
grant update (status, error_message, retry_count, completed_at)
    on public.image_generations to authenticated;

-- Policies --------------------------------------------------------------------------------
-- Permissive: what a user may write. Restrictive: own rows only, whatever permissive
-- policies an old database carries besides ours.
drop policy if exists "Users add their own pending generations" on public.image_generations;
create policy "Users add their own pending generations" on public.image_generations
    for insert to authenticated
    with check (user_id = auth.uid() and status = 'pending');

drop policy if exists "Users cancel and retry their own generations" on public.image_generations;
create policy "Users cancel and retry their own generations" on public.image_generations
    for update to authenticated
    using (user_id = auth.uid()) with check (user_id = auth.uid());

drop policy if exists "Only own generations are added" on public.image_generations;
create policy "Only own generations are added" on public.image_generations
    as restrictive for insert to authenticated
    with check (user_id = auth.uid());

drop policy if exists "Only own generations are changed" on public.image_generations;
create policy "Only own generations are changed" on public.image_generations
    as restrictive for update to authenticated
    using (user_id = auth.uid()) with check (user_id = auth.uid());

-- A source image URL a user may hand to the worker ------------------------------------------
-- The SQL half of worker/source_image.py's policy, for what can be seen without DNS:
-- http(s), no credentials, a host name with a dot or a public IP literal. The worker
-- checks every resolved address again when it fetches.
create or replace function imagegen.check_source_image_url(p_url text) returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_authority text := substring(p_url from '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)');
    v_host text;
    v_address inet;
begin
    if p_url !~* '^https?://[^\s]+$' or length(p_url) > 2048 then
        perform imagegen.invalid('source_image_url', 'source_image_url must be an http(s) URL');
    end if;
    if position('@' in v_authority) > 0 then
        perform imagegen.invalid('source_image_url',
                                 'source_image_url must not contain credentials');
    end if;
    v_host := lower(case when v_authority like '[%'
                         then substring(v_authority from '^\[([^\]]*)\]')
                         else split_part(v_authority, ':', 1) end);
    begin
        v_address := v_host::inet;
    exception when invalid_text_representation then
        v_address := null;
    end;
    if v_address is null then
        if v_host !~ '^[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z][a-z0-9-]*\.?$'
           or v_host ~ '(^|\.)(localhost|local|internal|localdomain|home|lan|arpa)\.?$' then
            perform imagegen.invalid('source_image_url',
                'source_image_url must name a public host');
        end if;
    elsif v_address <<= any (array[
            -- worker/source_image.py's _FORBIDDEN_V4 and _FORBIDDEN_V6, and every IPv6
            -- form that embeds an IPv4 address (mapped, compatible, NAT64, 6to4).
            '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16',
            '172.16.0.0/12', '192.0.0.0/24', '192.0.2.0/24', '192.88.99.0/24',
            '192.168.0.0/16', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24',
            '224.0.0.0/4', '240.0.0.0/4',
            '::/96', '::ffff:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48', '100::/64',
            '2001::/23', '2001:db8::/32', '2002::/16', 'fc00::/7', 'fe80::/10', 'fec0::/10',
            'ff00::/8']::inet[]) then
        perform imagegen.invalid('source_image_url',
            'source_image_url points to a private or reserved address');
    end if;
end
$$;

-- Insert: a pending row the API would have accepted ---------------------------------------
-- The row is checked as start_generation checks a request (generation_parameters: an
-- active model, its sizes and steps, lengths, the source image; imagegen.admit_generation:
-- the user's and the queue's limits) and completed with what will run: the model's row
-- (model_id, its name), the defaults it fills in, a source image only where the model
-- takes one (the remix sheet sends it for every model; the legacy call drops it for
-- text-to-image models, and so does the row).
create or replace function imagegen.check_client_generation() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    m models;
    p jsonb;
    v_source boolean;
begin
    if new.status is distinct from 'pending' then
        perform imagegen.invalid('status', 'a new generation starts as pending');
    end if;
    -- The apps name the model by models.name; the API's names (id, Replicate id) work too.
    select * into m
    from models
    where name = new.model or id::text = lower(new.model) or replicate_id = new.model
    order by name = new.model desc, is_active desc nulls last, is_default desc nulls last,
             sort_order nulls last, created_at
    limit 1;
    if not found then
        perform imagegen.invalid('model', format('Unknown model: %s', new.model));
    end if;
    if new.source_image_url is not null then
        perform imagegen.check_source_image_url(new.source_image_url);
    end if;
    v_source := new.source_image_url is not null and coalesce(m.supports_img2img, false);
    p := generation_parameters(
        p_prompt => new.prompt, p_model_id => m.id::text, p_width => new.width,
        p_height => new.height, p_num_inference_steps => new.steps,
        p_guidance_scale => new.guidance_scale, p_negative_prompt => new.negative_prompt,
        p_source_image_url => case when v_source then new.source_image_url end,
        p_strength => case when v_source then new.generation_strength end,
        p_style => new.style
    );
    perform imagegen.admit_generation(new.user_id);

    new.model := p ->> 'model_name';
    new.model_id := (p ->> 'model_row_id')::uuid;
    new.width := (p ->> 'width')::integer;
    new.height := (p ->> 'height')::integer;
    new.steps := (p ->> 'num_inference_steps')::integer;
    new.guidance_scale := (p ->> 'guidance_scale')::numeric;
    new.source_image_url := case when v_source then new.source_image_url end;
    new.generation_strength := (p ->> 'strength')::numeric;
    return new;
end
$$;

drop trigger if exists client_inserts_generation on public.image_generations;
create trigger client_inserts_generation
    before insert on public.image_generations
    for each row
    when (current_user = 'authenticated')
    execute function imagegen.check_client_generation();

-- Update: cancel or retry, nothing else -----------------------------------------------------
-- Cancel: an active row (pending, queued, processing, downloading) -> failed; the message
-- is the client's (the error report's) or 'Cancelled by user'. Retry: failed -> pending,
-- only when none of its jobs is still active; the row starts clean (process-queue or the
-- legacy call then runs it). A failed row may have its message rewritten (the mobile app
-- reports an error the legacy call has already recorded). retry_count may only be reset.
create or replace function imagegen.check_client_generation_change() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    new.completed_at := old.completed_at;  -- the server's, even where a client sends one
    if new.retry_count is distinct from old.retry_count and new.retry_count <> 0 then
        perform imagegen.invalid('retry_count', 'retry_count can only be reset to 0');
    end if;

    if old.status in ('pending', 'queued', 'processing', 'downloading')
       and new.status = 'failed' then
        new.error_message := left(coalesce(new.error_message, 'Cancelled by user'), 1000);
        new.retry_count := old.retry_count;
        new.completed_at := now();
    elsif old.status = 'failed' and new.status = 'pending' then
        if exists (select from job_queue
                   where payload ? 'generation_id' and payload ->> 'generation_id' = old.id::text
                     and status in ('pending', 'processing')) then
            perform imagegen.invalid('status',
                'this generation is still being worked on; retry it when it has ended');
        end if;
        new.error_message := null;
        new.retry_count := 0;
        new.completed_at := null;
        new.generation_time_seconds := null;
        new.replicate_prediction_id := null;
        new.prediction_requested_at := null;
    elsif old.status = 'failed' and new.status = 'failed' then
        new.error_message := left(coalesce(new.error_message, old.error_message), 1000);
        new.retry_count := old.retry_count;
    elsif new is not distinct from old then
        return new;  -- nothing changes
    else
        perform imagegen.invalid('status', format(
            'a generation cannot be moved from %s to %s', old.status, new.status));
    end if;
    new.updated_at := now();
    return new;
end
$$;

drop trigger if exists client_changes_generation on public.image_generations;
create trigger client_changes_generation
    before update on public.image_generations
    for each row
    when (current_user = 'authenticated')
    execute function imagegen.check_client_generation_change();

-- Every writer: a finished generation stays finished --------------------------------------
-- completed is final; failed can only be retried (-> pending). So an output that arrives
-- after a cancel (the legacy finish has no job to fence it) is refused, not stored.
create or replace function imagegen.refuse_reopening_generation() returns trigger
language plpgsql
set search_path = public, pg_temp
as $$
begin
    perform imagegen.invalid('status', format(
        'generation %s is %s and cannot become %s', old.id, old.status, new.status));
    return null;
end
$$;

drop trigger if exists ended_generation_stays_ended on public.image_generations;
create trigger ended_generation_stays_ended
    before update of status on public.image_generations
    for each row
    when (old.status in ('completed', 'failed') and new.status is distinct from old.status
          and not (old.status = 'failed' and new.status = 'pending'))
    execute function imagegen.refuse_reopening_generation();

-- Every writer: a generation that fails stops its work ------------------------------------
-- Its active jobs are cancelled and, where a prediction was running for it, Replicate is
-- told to cancel it (a cancel-prediction job, worker/jobs/cancel_prediction.py). This is
-- what the apps' cancel by UPDATE and cancel_generation() do. When a job's final failure
-- failed the generation (section 8 of the baseline), nothing is active any more and its
-- prediction has ended: nothing to stop. A prediction whose id arrives after the cancel
-- is cancelled by record_prediction (below).
create or replace function imagegen.stop_failed_generation() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_stopped integer;
begin
    with stopped as (
        update job_queue
        set status = 'cancelled', completed_at = now(), updated_at = now(),
            error_message = coalesce(new.error_message, 'Cancelled'),
            locked_by = null, locked_until = null
        where payload ? 'generation_id' and payload ->> 'generation_id' = new.id::text
          and status in ('pending', 'processing')
        returning id
    )
    select count(*) into v_stopped from stopped;

    if new.replicate_prediction_id is not null
       and old.status in ('pending', 'queued', 'processing')
       and (v_stopped > 0 or new.user_id = auth.uid()) then
        perform imagegen.cancel_prediction_later(new.replicate_prediction_id, new.id,
                                                 new.user_id);
    end if;
    return null;
end
$$;

create or replace function imagegen.cancel_prediction_later(
    p_prediction_id text,
    p_generation_id uuid,
    p_user_id uuid
) returns uuid
language sql
security definer
set search_path = public, pg_temp
as $$
    select enqueue_job(
        p_job_type => 'cancel-prediction',
        -- Not `generation_id`: this job is not the generation's work (a retry need not
        -- wait for it, and its failure must not fail the retried generation).
        p_payload => jsonb_build_object('prediction_id', p_prediction_id,
                                        'cancelled_generation_id', p_generation_id,
                                        'user_id', p_user_id),
        p_priority => 1,  -- a running prediction costs money until it stops
        p_created_by => p_user_id,
        p_dedupe_key => 'cancel-prediction:' || p_prediction_id
    )
$$;

drop trigger if exists failed_generation_stops_its_work on public.image_generations;
create trigger failed_generation_stops_its_work
    after update of status on public.image_generations
    for each row
    when (new.status = 'failed'
          and old.status in ('pending', 'queued', 'processing', 'downloading'))
    execute function imagegen.stop_failed_generation();

-- The rpc the apps may call: the same cancel as an UPDATE (the trigger above does the rest).
create or replace function public.cancel_generation(p_generation_id uuid)
returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    update image_generations
    set status = 'failed', error_message = 'Cancelled by the user', completed_at = now(),
        updated_at = now()
    where id = p_generation_id
      and user_id = auth.uid()
      and status in ('pending', 'queued', 'processing', 'downloading');
    return found;
end
$$;

-- A prediction created while its generation was being cancelled: the worker could not save
-- its id (the job is no longer held), so it is cancelled here, as soon as it is known.
-- Otherwise as before: saved on the generation, fenced by the job's lease.
create or replace function public.record_prediction(
    p_job_id uuid,
    p_worker_id text,
    p_prediction_id text
) returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_job job_queue;
begin
    update image_generations
    set replicate_prediction_id = p_prediction_id, prediction_requested_at = null,
        updated_at = now()
    where id = imagegen.held_generation(p_job_id, p_worker_id);
    if found then
        return true;
    end if;
    select * into v_job from job_queue where id = p_job_id;
    if v_job.status = 'cancelled'
       and not exists (select from image_generations
                       where replicate_prediction_id = p_prediction_id) then
        perform imagegen.cancel_prediction_later(
            p_prediction_id, (v_job.payload ->> 'generation_id')::uuid, v_job.created_by);
    end if;
    return false;
exception when unique_violation then
    return false;
end
$$;

-- Private, like every function (the baseline's section 13): triggers need no grant.
revoke all on function imagegen.check_source_image_url(text) from public, anon, authenticated;
revoke all on function imagegen.check_client_generation() from public, anon, authenticated;
revoke all on function imagegen.check_client_generation_change()
    from public, anon, authenticated;
revoke all on function imagegen.refuse_reopening_generation() from public, anon, authenticated;
revoke all on function imagegen.stop_failed_generation() from public, anon, authenticated;
revoke all on function imagegen.cancel_prediction_later(text, uuid, uuid)
    from public, anon, authenticated;
