-- One rule, one place (docs/DESIGN.md, "One rule, one place").
--
-- * Which generation statuses are active is imagegen.active_statuses(); the functions that
--   asked `status in (...)` with the list typed out ask imagegen.is_active(status). It is
--   inlined to the same `status = any (...)`, so the partial indexes on active rows still
--   serve it; they and the batch_progress view keep their literal (rebuilding them would
--   change nothing but the text).
-- * A blank prompt is one without a visible character: imagegen.is_blank(), which sees
--   NBSP, zero-width spaces, joiners and a BOM as nothing (`\S` did not); the API no
--   longer checks it itself. model_id and model_version get a length limit, so the API
--   keeps no per-field length of its own (its 64 KiB body cap protects the process).
-- * The queue words its own failures for operators: a lease lost on the final attempt
--   fails the job as "The worker stopped responding during the final attempt"; the
--   generation's message for the user is written where a job's end fails its generation.

create or replace function imagegen.active_statuses() returns text[]
language sql
immutable
parallel safe
as $$
    select array['pending', 'queued', 'processing', 'downloading']
$$;

create or replace function imagegen.is_active(p_status text) returns boolean
language sql
immutable
parallel safe
as $$
    select p_status = any (imagegen.active_statuses())
$$;

-- Only spaces and separators (Unicode Z), controls, format and private-use characters
-- (C: zero-width space, joiners, BOM): what a model (and a user) sees as nothing.
create or replace function imagegen.is_blank(p_text text) returns boolean
language sql
immutable
parallel safe
as $$
    select p_text !~ ('[^[:space:][:cntrl:]\u0080-\u00a0\u00ad\u061c\u1680\u180e'
                      '\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ue000-\uf8ff'
                      '\ufeff\ufff0-\ufffb]')
$$;

revoke all on function imagegen.active_statuses() from public;
revoke all on function imagegen.is_active(text) from public;
revoke all on function imagegen.is_blank(text) from public;

create or replace function public.generation_parameters(
    p_prompt text,
    p_model_id text,
    p_model_version text default null,
    p_width integer default null,
    p_height integer default null,
    p_num_inference_steps integer default null,
    p_guidance_scale numeric default null,
    p_seed bigint default null,
    p_negative_prompt text default null,
    p_source_image_url text default null,
    p_strength numeric default null,
    p_style text default null
) returns jsonb
language plpgsql
stable
security definer
set search_path = public, pg_temp
as $$
declare
    m models;
    v_width integer;
    v_height integer;
    v_steps integer;
    v_guidance numeric;
    v_strength numeric;
    v_scale numeric;
begin
    if p_prompt is null or imagegen.is_blank(p_prompt) then
        perform imagegen.invalid('prompt', 'prompt is required (it has no visible character)');
    end if;
    if length(p_prompt) > 4000 then
        perform imagegen.invalid('prompt', 'prompt must be at most 4000 characters');
    end if;
    if p_negative_prompt is not null and length(p_negative_prompt) > 4000 then
        perform imagegen.invalid('negative_prompt', 'negative_prompt must be at most 4000 characters');
    end if;
    if p_style is not null and length(p_style) > 100 then
        perform imagegen.invalid('style', 'style must be at most 100 characters');
    end if;
    if p_model_id is null or length(btrim(p_model_id)) = 0 then
        perform imagegen.invalid('model_id', 'model_id is required');
    end if;
    -- Names and ids are short; the answer below quotes the value.
    if length(p_model_id) > 200 then
        perform imagegen.invalid('model_id', 'model_id must be at most 200 characters');
    end if;
    if length(p_model_version) > 200 then
        perform imagegen.invalid('model_version', 'model_version must be at most 200 characters');
    end if;

    -- The row's id (the web app sends models.id) or its Replicate id; operators' rows may
    -- share a replicate_id, so the active, default, first-sorted one wins.
    select * into m
    from models
    where id::text = lower(p_model_id) or replicate_id = p_model_id
    order by id::text = lower(p_model_id) desc, is_active desc nulls last,
             is_default desc nulls last, sort_order nulls last, created_at
    limit 1;
    if not found then
        perform imagegen.invalid('model_id', format('Unknown model: %s', p_model_id));
    end if;
    if not coalesce(m.is_active, true) then
        perform imagegen.invalid('model_id', format('Model %s is not available', p_model_id));
    end if;
    -- A version names the exact Replicate model that runs (and its price): only the
    -- model's own.
    if p_model_version is not null and p_model_version is distinct from m.version then
        perform imagegen.invalid('model_version',
            format('model_version must be empty or %s''s own version', m.name));
    end if;

    -- The operators' rows may leave limits empty: CONTRACT §1's defaults stand in.
    m.min_width := coalesce(m.min_width, 256);
    m.max_width := coalesce(m.max_width, 2048);
    m.min_height := coalesce(m.min_height, 256);
    m.max_height := coalesce(m.max_height, 2048);
    m.max_steps := coalesce(m.max_steps, 50);
    m.strength_min := coalesce(m.strength_min, 0);
    m.strength_max := coalesce(m.strength_max, 1);
    v_width := coalesce(p_width, m.default_width, 1024);
    v_height := coalesce(p_height, m.default_height, 1024);
    v_steps := coalesce(p_num_inference_steps, m.default_steps, 30);
    v_guidance := coalesce(p_guidance_scale, m.default_guidance_scale, 7.5);

    -- Any size the apps offer fits any model: beyond these bounds it is no image size.
    if v_width not between 128 and 8192 then
        perform imagegen.invalid('width', 'width must be between 128 and 8192');
    end if;
    if v_height not between 128 and 8192 then
        perform imagegen.invalid('height', 'height must be between 128 and 8192');
    end if;
    -- Within them, a size the model does not take is scaled, keeping its shape, until it
    -- does (then clamped where no scale fits both sides), on a multiple of 8.
    if v_width not between m.min_width and m.max_width
       or v_height not between m.min_height and m.max_height then
        v_scale := least(1.0, m.max_width::numeric / v_width, m.max_height::numeric / v_height);
        v_scale := greatest(v_scale, m.min_width::numeric / v_width,
                            m.min_height::numeric / v_height);
        v_width := least(greatest(round(v_width * v_scale / 8) * 8, m.min_width), m.max_width);
        v_height := least(greatest(round(v_height * v_scale / 8) * 8, m.min_height),
                          m.max_height);
    end if;
    if v_steps not between 1 and m.max_steps then
        perform imagegen.invalid('num_inference_steps',
                         format('num_inference_steps must be between 1 and %s for %s',
                                m.max_steps, m.name));
    end if;
    if v_guidance not between 0 and 50 then
        perform imagegen.invalid('guidance_scale', 'guidance_scale must be between 0 and 50');
    end if;
    if p_seed is not null and p_seed not between 0 and 4294967295 then
        perform imagegen.invalid('seed', 'seed must be between 0 and 4294967295');
    end if;

    if p_source_image_url is not null then
        if not coalesce(m.supports_img2img, false) then
            perform imagegen.invalid('source_image_url',
                             format('%s does not support image-to-image', m.name));
        end if;
        if p_source_image_url !~* '^https?://[^\s]+$' or length(p_source_image_url) > 2048 then
            perform imagegen.invalid('source_image_url', 'source_image_url must be an http(s) URL');
        end if;
        v_strength := coalesce(p_strength, m.default_strength, 0.8);
        if v_strength not between m.strength_min and m.strength_max then
            perform imagegen.invalid('strength', format('strength must be between %s and %s for %s',
                                                m.strength_min, m.strength_max, m.name));
        end if;
    elsif p_strength is not null then
        perform imagegen.invalid('strength', 'strength needs a source_image_url');
    end if;

    return jsonb_build_object(
        'prompt', p_prompt,
        'negative_prompt', p_negative_prompt,
        'model_id', m.replicate_id,
        'model_name', m.name,
        'model_row_id', m.id,
        'model_version', m.version,
        'style', p_style,
        'width', v_width,
        'height', v_height,
        'num_inference_steps', v_steps,
        'guidance_scale', v_guidance,
        'seed', p_seed,
        'source_image_url', p_source_image_url,
        'strength', v_strength
    );
end
$$;

create or replace function imagegen.fail_generation_of_ended_job()
returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if new.payload ->> 'generation_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' then
        update image_generations
        set status = 'failed', updated_at = now(),
            error_message = case
                when new.error_details ->> 'error_type' = 'lease_expired' then
                    'Image generation failed: the worker stopped responding during the '
                    'final attempt. Please try again.'
                else coalesce(new.error_message, 'Image generation failed')
            end,
            retry_count = greatest(new.attempts - 1, 0)
        where id = (new.payload ->> 'generation_id')::uuid
          and imagegen.is_active(status);
    end if;
    return null;
end
$$;

create or replace function imagegen.check_client_generation_change()
returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    new.completed_at := old.completed_at;  -- the server's, even where a client sends one
    if new.retry_count is distinct from old.retry_count and new.retry_count <> 0 then
        perform imagegen.invalid('retry_count', 'retry_count can only be reset to 0');
    end if;

    if imagegen.is_active(old.status)
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

create or replace function public.start_legacy_generation(
    p_user_id uuid,
    p_prompt text,
    p_model_id text,
    p_generation_id uuid default null,
    p_model_version text default null,
    p_width integer default null,
    p_height integer default null,
    p_num_inference_steps integer default null,
    p_guidance_scale numeric default null,
    p_seed bigint default null,
    p_negative_prompt text default null,
    p_source_image_url text default null,
    p_strength numeric default null,
    p_style text default null
) returns table (generation_id uuid, job_id uuid, status text)
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    g image_generations;
    p jsonb;
    v_job_id uuid;
begin
    if p_generation_id is null then
        return query
        select s.generation_id, s.job_id, 'queued'::text
        from start_generation(p_user_id, p_prompt, p_model_id, p_model_version, p_width,
                              p_height, p_num_inference_steps, p_guidance_scale, p_seed,
                              p_negative_prompt, p_source_image_url, p_strength, p_style) s;
        return;
    end if;

    -- Locked: a second call for this row waits here, then finds it queued.
    select * into g from image_generations i
    where i.id = p_generation_id and i.user_id = p_user_id
    for update;
    if not found then
        perform imagegen.invalid('generation_id', 'Unknown generation');
    end if;
    v_job_id := imagegen.active_job(g.id);
    -- Not ended and nothing working on it (the app's new row; an orphan): start it.
    if imagegen.is_active(g.status) and v_job_id is null then
        p := generation_parameters(
            p_prompt, p_model_id, p_model_version, p_width, p_height, p_num_inference_steps,
            p_guidance_scale, p_seed, p_negative_prompt, p_source_image_url, p_strength, p_style
        );
        perform imagegen.admit_generation(p_user_id,
                                          p_counted => not imagegen.ran_before(g.id));
        v_job_id := imagegen.queue_generation(g.id, p);
        return query select g.id, v_job_id, 'queued'::text;
        return;
    end if;
    return query select g.id, v_job_id, g.status;
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
