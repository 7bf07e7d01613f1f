-- Starting generations the apps created themselves (CLIENTS.md §2 flows 1 and 5): the
-- mobile app inserts a `pending` row and calls the legacy generate-image with its id; a
-- retry sets failed rows back to `pending` and calls process-queue. Either way the row
-- goes through the same admission as start-generation and gets one generate-image job
-- (dedupe key `generate-image:<id>`: two calls for one row, or a legacy call racing
-- process-queue, share that job and pay for one prediction). The job's lease and retries
-- then apply as to any other: a crashed API or worker leaves nothing `processing` forever.

-- A failed generation has ended: it gets its completed_at, whoever failed it (the job rule
-- of the baseline's section 8, a cancel, the worker).
create or replace function imagegen.stamp_ended_generation() returns trigger
language plpgsql
set search_path = public, pg_temp
as $$
begin
    new.completed_at := coalesce(new.completed_at, now());
    return new;
end
$$;

drop trigger if exists generation_failed_stamps_completed_at on public.image_generations;
create trigger generation_failed_stamps_completed_at
    before update of status on public.image_generations
    for each row
    when (new.status = 'failed' and old.status is distinct from 'failed')
    execute function imagegen.stamp_ended_generation();

-- The row's own parameters, checked as a request's would be (the apps store the model as
-- its row id or its name; steps beyond what the model takes are brought within it).
create or replace function imagegen.row_parameters(g public.image_generations) returns jsonb
language plpgsql
stable
security definer
set search_path = public, pg_temp
as $$
declare
    m models;
begin
    select * into m from models
    where id = g.model_id or name = g.model or replicate_id = g.model
    order by id = g.model_id desc nulls last, is_active desc nulls last, sort_order nulls last
    limit 1;
    return generation_parameters(
        g.prompt, coalesce(m.replicate_id, g.model_id::text, g.model), null, g.width, g.height,
        least(g.steps, coalesce(m.max_steps, 50)), least(g.guidance_scale, 50), g.seed,
        g.negative_prompt, g.source_image_url,
        case when g.source_image_url is not null then g.generation_strength end, g.style
    );
end
$$;

-- Queue an admitted generation row: `queued`, with the checked parameters, and its job.
create or replace function imagegen.queue_generation(p_generation_id uuid, p jsonb)
returns uuid
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    g image_generations;
begin
    update image_generations
    set status = 'queued', error_message = null, updated_at = now(),
        model_id = coalesce((p ->> 'model_row_id')::uuid, model_id),
        model = coalesce(model, p ->> 'model_name'),
        width = (p ->> 'width')::integer, height = (p ->> 'height')::integer,
        steps = (p ->> 'num_inference_steps')::integer,
        guidance_scale = (p ->> 'guidance_scale')::numeric
    where id = p_generation_id
    returning * into g;
    return enqueue_job(
        p_job_type => 'generate-image',
        p_payload => p - 'model_name' - 'model_row_id' - 'style'
            || jsonb_build_object('generation_id', g.id, 'user_id', g.user_id),
        p_priority => coalesce(g.priority, 0),
        p_created_by => g.user_id,
        p_dedupe_key => 'generate-image:' || g.id
    );
end
$$;

-- Whether the generation ran before (a retry): then starting it again is a new request.
-- An app's pending row that never ran was counted against the limits when it was inserted.
create or replace function imagegen.ran_before(p_generation_id uuid) returns boolean
language sql
stable
set search_path = public, pg_temp
as $$
    select exists (
        select from job_queue
        where payload ? 'generation_id' and payload ->> 'generation_id' = p_generation_id::text
          and job_type = 'generate-image')
$$;

-- The generation's active job, if it has one.
create or replace function imagegen.active_job(p_generation_id uuid) returns uuid
language sql
stable
set search_path = public, pg_temp
as $$
    select id from job_queue
    where payload ? 'generation_id' and payload ->> 'generation_id' = p_generation_id::text
      and status in ('pending', 'processing')
    order by created_at desc
    limit 1
$$;

-- The legacy generate-image: without a generation id, start_generation (a row of its
-- own); with one, the caller's row: a row no job works on is admitted and queued, one
-- with an active job keeps it, an ended one is answered as it is. The endpoint then waits for the row.
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
    if g.status in ('pending', 'queued', 'processing', 'downloading') and v_job_id is null then
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

-- process-queue: starts the caller's `pending` generations that have no active job (what
-- a retry left), oldest first, as far as the user's limits allow; the rest stay pending.
-- A row whose parameters no model takes fails with the reason. Returns how many started.
create or replace function public.process_queue(p_user_id uuid) returns integer
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    g image_generations;
    p jsonb;
    v_started integer := 0;
begin
    for g in
        select * from image_generations i
        where i.user_id = p_user_id and i.status = 'pending'
        order by i.priority desc, i.created_at
        for update skip locked
    loop
        continue when imagegen.active_job(g.id) is not null;
        begin
            p := imagegen.row_parameters(g);
        exception when invalid_parameter_value then
            update image_generations
            set status = 'failed', error_message = sqlerrm, updated_at = now()
            where id = g.id;
            continue;
        end;
        begin
            perform imagegen.admit_generation(p_user_id,
                                              p_counted => not imagegen.ran_before(g.id));
        exception when sqlstate 'PT429' or sqlstate 'PT503' then
            exit;
        end;
        perform imagegen.queue_generation(g.id, p);
        v_started := v_started + 1;
    end loop;
    return v_started;
end
$$;

revoke all on function imagegen.stamp_ended_generation(),
    imagegen.row_parameters(public.image_generations), imagegen.queue_generation(uuid, jsonb),
    imagegen.active_job(uuid), imagegen.ran_before(uuid),
    public.start_legacy_generation(uuid, text, text, uuid, text, integer, integer, integer,
                                   numeric, bigint, text, text, numeric, text),
    public.process_queue(uuid)
    from public, anon, authenticated;
grant execute on function
    public.start_legacy_generation(uuid, text, text, uuid, text, integer, integer, integer,
                                   numeric, bigint, text, text, numeric, text),
    public.process_queue(uuid)
    to service_role;
