-- A generation's life, each step one transaction: start (row + job), begin, record the
-- Replicate prediction, hand over to the download, finish (image + completed), fail
-- (only when the job has no attempts left) and cancel (by its owner).

create or replace function public._invalid(p_field text, p_message text) returns void
language plpgsql
as $$
begin
    -- SQLSTATE 22023 with the field in COLUMN and in the message (PostgREST passes on
    -- only the message): the API answers 400 naming that field.
    raise exception using errcode = 'invalid_parameter_value', column = p_field,
        message = case when starts_with(p_message, p_field) then p_message
                       else p_field || ': ' || p_message end;
end
$$;

-- A request's parameters, checked against its model's limits and completed with the
-- model's defaults: what a generate-image job carries. Raises 22023 naming the field.
-- start_generation stores this; the synchronous endpoints run it without a row.
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
begin
    -- Any whitespace, not only spaces (btrim's default), makes an empty prompt.
    if p_prompt is null or p_prompt !~ '\S' then
        perform _invalid('prompt', 'prompt is required');
    end if;
    if length(p_prompt) > 4000 then
        perform _invalid('prompt', 'prompt must be at most 4000 characters');
    end if;
    if p_negative_prompt is not null and length(p_negative_prompt) > 4000 then
        perform _invalid('negative_prompt', 'negative_prompt must be at most 4000 characters');
    end if;
    if p_style is not null and length(p_style) > 100 then
        perform _invalid('style', 'style must be at most 100 characters');
    end if;
    if p_model_id is null or length(btrim(p_model_id)) = 0 then
        perform _invalid('model_id', 'model_id is required');
    end if;

    select * into m from models where replicate_id = p_model_id;
    if not found then
        perform _invalid('model_id', format('Unknown model: %s', p_model_id));
    end if;
    if not m.is_active then
        perform _invalid('model_id', format('Model %s is not available', p_model_id));
    end if;

    v_width := coalesce(p_width, m.default_width);
    v_height := coalesce(p_height, m.default_height);
    v_steps := coalesce(p_num_inference_steps, m.default_steps);
    v_guidance := coalesce(p_guidance_scale, m.default_guidance_scale);

    if v_width not between m.min_width and m.max_width then
        perform _invalid('width', format('width must be between %s and %s for %s',
                                         m.min_width, m.max_width, m.name));
    end if;
    if v_height not between m.min_height and m.max_height then
        perform _invalid('height', format('height must be between %s and %s for %s',
                                          m.min_height, m.max_height, m.name));
    end if;
    if v_steps not between 1 and m.max_steps then
        perform _invalid('num_inference_steps',
                         format('num_inference_steps must be between 1 and %s for %s',
                                m.max_steps, m.name));
    end if;
    if v_guidance not between 0 and 50 then
        perform _invalid('guidance_scale', 'guidance_scale must be between 0 and 50');
    end if;
    if p_seed is not null and p_seed not between 0 and 4294967295 then
        perform _invalid('seed', 'seed must be between 0 and 4294967295');
    end if;

    if p_source_image_url is not null then
        if not m.supports_img2img then
            perform _invalid('source_image_url',
                             format('%s does not support image-to-image', m.name));
        end if;
        if p_source_image_url !~* '^https?://[^\s]+$' or length(p_source_image_url) > 2048 then
            perform _invalid('source_image_url', 'source_image_url must be an http(s) URL');
        end if;
        v_strength := coalesce(p_strength, m.default_strength, 0.8);
        if v_strength not between m.strength_min and m.strength_max then
            perform _invalid('strength', format('strength must be between %s and %s for %s',
                                                m.strength_min, m.strength_max, m.name));
        end if;
    elsif p_strength is not null then
        perform _invalid('strength', 'strength needs a source_image_url');
    end if;

    return jsonb_build_object(
        'prompt', p_prompt,
        'negative_prompt', p_negative_prompt,
        'model_id', p_model_id,
        'model_name', m.name,
        'model_version', coalesce(p_model_version, m.version),
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

create or replace function public.start_generation(
    p_user_id uuid,
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
    p_style text default null,
    p_priority integer default 0
) returns table (generation_id uuid, job_id uuid)
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    p jsonb;
    v_generation_id uuid;
    v_job_id uuid;
begin
    if p_user_id is null or not exists (select from auth.users where id = p_user_id) then
        perform _invalid('user_id', 'Unknown user');
    end if;
    p := generation_parameters(
        p_prompt, p_model_id, p_model_version, p_width, p_height, p_num_inference_steps,
        p_guidance_scale, p_seed, p_negative_prompt, p_source_image_url, p_strength, p_style
    );
    -- Too much active work (this user's, or everyone's): refused with nothing written.
    perform admit_generation(p_user_id);  -- sql/0011_admission.sql

    insert into image_generations (
        user_id, prompt, negative_prompt, model, model_id, style, width, height, steps,
        guidance_scale, seed, source_image_url, generation_strength, status, priority
    )
    values (
        p_user_id, p_prompt, p_negative_prompt, p ->> 'model_name', p_model_id, p_style,
        (p ->> 'width')::integer, (p ->> 'height')::integer,
        (p ->> 'num_inference_steps')::integer, (p ->> 'guidance_scale')::numeric, p_seed,
        p_source_image_url, (p ->> 'strength')::numeric, 'queued', coalesce(p_priority, 0)
    )
    returning id into v_generation_id;

    v_job_id := enqueue_job(
        p_job_type => 'generate-image',
        p_payload => p - 'model_name' - 'style'
            || jsonb_build_object('generation_id', v_generation_id, 'user_id', p_user_id),
        p_priority => coalesce(p_priority, 0),
        p_created_by => p_user_id,
        p_dedupe_key => 'generate-image:' || v_generation_id
    );

    return query select v_generation_id, v_job_id;
end
$$;

-- The job's generation, when the job is still held by this worker.
create or replace function public._held_generation(p_job_id uuid, p_worker_id text)
returns uuid
language sql
stable
set search_path = public, pg_temp
as $$
    select (payload ->> 'generation_id')::uuid
    from job_queue
    where id = p_job_id
      and status = 'processing'
      and (p_worker_id is null or locked_by = p_worker_id)
$$;

-- Start (or resume) work on the generation: returns it, with any saved prediction id,
-- or nothing when the job is no longer this worker's or the generation has ended.
create or replace function public.begin_generation(p_job_id uuid, p_worker_id text)
returns setof public.image_generations
language sql
security definer
set search_path = public, pg_temp
as $$
    update image_generations g
    set status = 'processing',
        retry_count = greatest(j.attempts - 1, 0),
        updated_at = now()
    from job_queue j
    where j.id = p_job_id
      and j.status = 'processing'
      and (p_worker_id is null or j.locked_by = p_worker_id)
      and g.id = (j.payload ->> 'generation_id')::uuid
      and g.status in ('pending', 'queued', 'processing')
    returning g.*
$$;

-- Saved before waiting on the prediction, so that a retry resumes it instead of paying
-- for a new one.
create or replace function public.record_prediction(
    p_job_id uuid,
    p_worker_id text,
    p_prediction_id text
) returns boolean
language sql
security definer
set search_path = public, pg_temp
as $$
    with saved as (
        update image_generations
        set replicate_prediction_id = p_prediction_id, updated_at = now()
        where id = _held_generation(p_job_id, p_worker_id)
        returning id
    )
    select exists (select from saved)
$$;

-- The prediction succeeded: complete the generate job, enqueue the download (priority 1:
-- the output URL expires) and mark the generation downloading, together.
create or replace function public.generation_downloading(
    p_job_id uuid,
    p_worker_id text,
    p_output_url text,
    p_format text,
    p_width integer,
    p_height integer,
    p_generation_time_seconds numeric
) returns uuid
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_job job_queue;
    v_result jsonb;
    v_download_id uuid;
begin
    select * into v_job from job_queue where id = p_job_id;
    v_result := jsonb_build_object('output_url', p_output_url, 'format', p_format,
                                   'width', p_width, 'height', p_height,
                                   'generation_time_seconds', p_generation_time_seconds);
    if not complete_job(p_job_id, p_result => v_result, p_worker_id => p_worker_id) then
        return null;
    end if;

    v_download_id := enqueue_job(
        p_job_type => 'download-image',
        p_payload => jsonb_build_object(
            'generation_id', v_job.payload -> 'generation_id',
            'user_id', v_job.payload -> 'user_id'
        ) || v_result,
        p_priority => 1,
        p_created_by => v_job.created_by,
        p_dedupe_key => 'download-image:' || (v_job.payload ->> 'generation_id')
    );

    update image_generations
    set status = 'downloading', generation_time_seconds = p_generation_time_seconds,
        updated_at = now()
    where id = (v_job.payload ->> 'generation_id')::uuid
      and status not in ('completed', 'failed');
    return v_download_id;
end
$$;

-- The file is stored: the images row, the generation completed and (for a job) the job
-- completed, together. With p_user_id (the legacy endpoint) the caller must own the
-- generation. Returns the images row, or nothing when the job was not this worker's.
create or replace function public.finish_generation(
    p_generation_id uuid,
    p_storage_path text,
    p_public_url text,
    p_file_size bigint,
    p_width integer,
    p_height integer,
    p_format text,
    p_job_id uuid default null,
    p_worker_id text default null,
    p_user_id uuid default null
) returns setof public.images
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    g image_generations;
begin
    select * into g from image_generations where id = p_generation_id for update;
    if not found or (p_user_id is not null and g.user_id <> p_user_id) then
        perform _invalid('generation_id', 'Unknown generation');
    end if;
    if p_job_id is not null and not complete_job(
        p_job_id,
        p_result => jsonb_build_object('storage_path', p_storage_path, 'public_url', p_public_url),
        p_worker_id => p_worker_id
    ) then
        return;
    end if;

    update image_generations
    set status = 'completed', error_message = null, completed_at = now(), updated_at = now(),
        width = p_width, height = p_height,
        generation_time_seconds = coalesce(
            generation_time_seconds, extract(epoch from now() - created_at))
    where id = p_generation_id;

    return query
    insert into images (generation_id, user_id, filename, storage_path, public_url, file_size,
                        width, height, format, prompt, negative_prompt, model, style)
    values (p_generation_id, g.user_id, p_generation_id || '.' || p_format, p_storage_path,
            p_public_url, p_file_size, p_width, p_height, p_format, g.prompt,
            g.negative_prompt, g.model, g.style)
    on conflict (generation_id) do update
    set storage_path = excluded.storage_path, public_url = excluded.public_url,
        file_size = excluded.file_size, width = excluded.width, height = excluded.height,
        format = excluded.format, filename = excluded.filename
    returning *;
end
$$;

-- A job attempt failed. The job retries (with backoff) or, with no attempts left or a
-- permanent error, fails, and only then does its generation fail, with a message a user
-- can read. Returns the job's new status, or null when the job was not this worker's.
create or replace function public.fail_generation(
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
declare
    v_job job_queue;
begin
    if not complete_job(p_job_id, p_error_message, p_error_details, null, p_worker_id,
                        p_retryable) then
        return null;
    end if;
    select * into v_job from job_queue where id = p_job_id;
    if v_job.status = 'failed' then
        update image_generations
        set status = 'failed', error_message = p_error_message, updated_at = now(),
            retry_count = greatest(v_job.attempts - 1, 0)
        where id = (v_job.payload ->> 'generation_id')::uuid
          and status not in ('completed', 'failed');
    end if;
    return v_job.status;
end
$$;

-- The owner gives up on a generation that has not finished: it fails as cancelled and
-- its jobs stop.
create or replace function public.cancel_generation(p_generation_id uuid)
returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    update image_generations
    set status = 'failed', error_message = 'Cancelled by the user', updated_at = now()
    where id = p_generation_id
      and user_id = auth.uid()
      and status in ('pending', 'queued', 'processing', 'downloading');
    if not found then
        return false;
    end if;
    update job_queue
    set status = 'cancelled', completed_at = now(), updated_at = now(),
        error_message = 'Cancelled by the user', locked_by = null, locked_until = null
    where payload ->> 'generation_id' = p_generation_id::text
      and status in ('pending', 'processing');
    return true;
end
$$;
