-- Batches as the mobile app drives them (CLIENTS.md §2 flow 5, M/store/batchStore.ts):
-- batch-generate starts one, the app follows `batch_progress` and Realtime on both tables,
-- retries (failed generations back to pending, then process-queue), cancels and deletes.
-- The old database has `batch_generations` (and image_generations.batch_id referencing it,
-- on delete cascade): kept, rows and all.

create table if not exists public.batch_generations (
    id uuid primary key default gen_random_uuid(),
    user_id uuid references auth.users (id) on delete cascade,
    name text,
    total_count integer not null,
    completed_count integer default 0,
    failed_count integer default 0,
    status text default 'pending',
    model_id text,
    model_version text,
    width integer,
    height integer,
    steps integer,
    guidance_scale numeric,
    is_multi_generation boolean default false,
    multi_count integer,
    created_at timestamptz default now(),
    completed_at timestamptz
);
create index if not exists batch_generations_user_created_idx
    on public.batch_generations (user_id, created_at desc);

-- A generation belongs to its batch: deleting the batch deletes its generations (and so
-- their images), as the app's deleteBatch expects.
do $fk$
begin
    if not exists (
        select from pg_constraint
        where conrelid = 'public.image_generations'::regclass and contype = 'f'
          and conkey = array[(select attnum from pg_attribute
                              where attrelid = 'public.image_generations'::regclass
                                and attname = 'batch_id')]
    ) then
        alter table public.image_generations
            add constraint image_generations_batch_id_fkey foreign key (batch_id)
            references public.batch_generations (id) on delete cascade;
    end if;
end
$fk$;
create index if not exists image_generations_batch_idx
    on public.image_generations (batch_id, batch_index)
    where batch_id is not null;

-- The counts follow the generations: after each statement that changes statuses, each
-- batch touched gets the difference, and its status once every item has ended
-- (completed / partial / failed). Once per statement, after all its rows are locked, so a
-- multi-row update (the app's retry and cancel) cannot deadlock with a worker finishing
-- an item of the same batch; increments, so concurrent finishes never lose a count.
-- A batch's status from its counts: processing until every item has ended.
create or replace function imagegen.batch_status(
    p_total integer, p_completed integer, p_failed integer
) returns text
language sql
immutable
as $$
    select case
        when p_completed + p_failed < p_total then 'processing'
        when p_failed = 0 then 'completed'
        when p_completed = 0 then 'failed'
        else 'partial' end
$$;

create or replace function imagegen.count_batch_items() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    -- The new counts are written in terms of the row being updated (b), never of a value
    -- read before: when two finishes meet, the second re-reads the row the first wrote.
    with changes as (
        select n.batch_id,
               sum((n.status = 'completed')::integer - (o.status = 'completed')::integer)::integer
                   as completed,
               sum((n.status = 'failed')::integer - (o.status = 'failed')::integer)::integer
                   as failed
        from new_rows n
        join old_rows o on o.id = n.id
        where n.batch_id is not null and n.status is distinct from o.status
        group by n.batch_id
    )
    update batch_generations b
    set completed_count = greatest(coalesce(b.completed_count, 0) + c.completed, 0),
        failed_count = greatest(coalesce(b.failed_count, 0) + c.failed, 0),
        status = imagegen.batch_status(
            b.total_count, greatest(coalesce(b.completed_count, 0) + c.completed, 0),
            greatest(coalesce(b.failed_count, 0) + c.failed, 0)),
        completed_at = case
            when imagegen.batch_status(
                     b.total_count, greatest(coalesce(b.completed_count, 0) + c.completed, 0),
                     greatest(coalesce(b.failed_count, 0) + c.failed, 0)) = 'processing'
                then null
            else coalesce(b.completed_at, now()) end
    from changes c
    where b.id = c.batch_id;
    return null;
end
$$;

drop trigger if exists batch_items_counted on public.image_generations;
create trigger batch_items_counted
    after update on public.image_generations
    referencing old table as old_rows new table as new_rows
    for each statement
    execute function imagegen.count_batch_items();

-- The counts are the trigger's: a signed-in user's update (the app sends failed_count 0
-- with a retry) changes the status and completed_at only.
create or replace function imagegen.keep_batch_counts() returns trigger
language plpgsql
set search_path = public, pg_temp
as $$
begin
    new.completed_count := old.completed_count;
    new.failed_count := old.failed_count;
    return new;
end
$$;

drop trigger if exists batch_counts_kept on public.batch_generations;
create trigger batch_counts_kept
    before update on public.batch_generations
    for each row
    when (current_user = 'authenticated')
    execute function imagegen.keep_batch_counts();

-- What the app's loadBatch reads: the batch, its live counts and its items in order.
drop view if exists public.batch_progress;
create view public.batch_progress with (security_invoker = true) as
select
    b.id,
    b.user_id,
    b.name,
    b.total_count,
    b.completed_count,
    b.failed_count,
    count(g.id) filter (where g.status in ('queued', 'processing', 'downloading'))
        as processing_count,
    count(g.id) filter (where g.status = 'pending') as pending_count,
    b.status,
    b.created_at,
    b.completed_at,
    coalesce(
        jsonb_agg(jsonb_build_object(
            'id', g.id, 'index', g.batch_index, 'prompt', g.prompt, 'status', g.status,
            'error_message', g.error_message, 'retry_count', g.retry_count,
            'image_url', (select i.public_url from public.images i
                          where i.generation_id = g.id order by i.created_at limit 1))
            order by g.batch_index) filter (where g.id is not null),
        '[]'::jsonb) as items
from public.batch_generations b
left join public.image_generations g on g.batch_id = b.id
group by b.id;

-- A user sees, changes (status, completed_at: the app's retry and cancel) and deletes
-- their own batches only; batch-generate creates them.
alter table public.batch_generations enable row level security;
drop policy if exists "Users read their own batches" on public.batch_generations;
create policy "Users read their own batches" on public.batch_generations
    for select to authenticated using (user_id = auth.uid());
drop policy if exists "Users update their own batches" on public.batch_generations;
create policy "Users update their own batches" on public.batch_generations
    for update to authenticated using (user_id = auth.uid())
    with check (user_id = auth.uid()
                and status in ('pending', 'processing', 'completed', 'partial', 'failed'));
drop policy if exists "Users delete their own batches" on public.batch_generations;
create policy "Users delete their own batches" on public.batch_generations
    for delete to authenticated using (user_id = auth.uid());
revoke all on public.batch_generations, public.batch_progress from public, anon, authenticated;
grant select, delete on public.batch_generations to authenticated;
grant update (status, completed_at, failed_count) on public.batch_generations to authenticated;
grant select on public.batch_progress to authenticated;
grant all on public.batch_generations to service_role;
grant select on public.batch_progress to service_role;

-- batch-generate (its request body as it came: {prompts: [{text, negative_prompt, seed,
-- tags}], shared_settings: {model_id, model_version, width, height, steps,
-- guidance_scale}, batch_name}): every prompt checked as a start-generation request would be (a uuid or
-- Replicate id for the model; steps beyond the model's brought within them), then the
-- whole batch admitted as one request or refused with nothing written, then the batch
-- row, its generations and their jobs. Answers what the app reads: {id, name,
-- total_count, generations}.
create or replace function public.start_batch(p_user_id uuid, p_request jsonb)
returns jsonb
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_prompts jsonb := p_request -> 'prompts';
    v_settings jsonb := coalesce(nullif(p_request -> 'shared_settings', 'null'), '{}'::jsonb);
    v_name text := nullif(p_request ->> 'batch_name', '');
    v_count integer;
    v_max integer;
    v_params jsonb[] := '{}';
    v_prompt jsonb;
    v_max_steps integer;
    p jsonb;
    v_batch_id uuid;
    v_generation_id uuid;
    v_generations jsonb := '[]'::jsonb;
    v_index integer := 0;
begin
    if p_user_id is null or not exists (select from auth.users where id = p_user_id) then
        perform imagegen.invalid('user_id', 'Unknown user');
    end if;
    if jsonb_typeof(p_request) is distinct from 'object' then
        perform imagegen.invalid('body', 'the request must be a JSON object');
    end if;
    if jsonb_typeof(v_prompts) is distinct from 'array' or jsonb_array_length(v_prompts) = 0 then
        perform imagegen.invalid('prompts', 'prompts must be a non-empty list');
    end if;
    if jsonb_typeof(v_settings) <> 'object' then
        perform imagegen.invalid('shared_settings', 'shared_settings must be an object');
    end if;
    v_count := jsonb_array_length(v_prompts);
    v_max := (imagegen.rate_limits(p_user_id, v_count) ->> 'max_batch_size')::integer;
    if v_max > 0 and v_count > v_max then
        perform imagegen.invalid('prompts', format('a batch holds at most %s prompts', v_max));
    end if;
    if v_name is not null and length(v_name) > 200 then
        perform imagegen.invalid('batch_name', 'batch_name must be at most 200 characters');
    end if;

    select max_steps into v_max_steps from models
    where id::text = lower(v_settings ->> 'model_id') or replicate_id = v_settings ->> 'model_id'
    limit 1;
    for v_prompt in select value from jsonb_array_elements(v_prompts) loop
        if jsonb_typeof(v_prompt) <> 'object' then
            perform imagegen.invalid('prompts', 'each prompt must be an object with text');
        end if;
        begin
            v_params := v_params || generation_parameters(
                p_prompt => v_prompt ->> 'text',
                p_model_id => v_settings ->> 'model_id',
                p_model_version => nullif(v_settings ->> 'model_version', ''),
                p_width => (v_settings ->> 'width')::integer,
                p_height => (v_settings ->> 'height')::integer,
                p_num_inference_steps => least((v_settings ->> 'steps')::integer,
                                               coalesce(v_max_steps, 50)),
                p_guidance_scale => least((v_settings ->> 'guidance_scale')::numeric, 50),
                p_seed => (v_prompt ->> 'seed')::bigint,
                p_negative_prompt => nullif(v_prompt ->> 'negative_prompt', '')
            );
        exception when invalid_text_representation or numeric_value_out_of_range then
            perform imagegen.invalid('shared_settings', 'shared_settings: ' || sqlerrm);
        end;
    end loop;

    perform imagegen.admit_generation(p_user_id, v_count);

    p := v_params[1];
    insert into batch_generations (user_id, name, total_count, completed_count, failed_count,
                                   status, model_id, model_version, width, height, steps,
                                   guidance_scale)
    values (p_user_id, coalesce(v_name, 'Batch ' || to_char(now(), 'YYYY-MM-DD HH24:MI')),
            v_count, 0, 0, 'processing', p ->> 'model_row_id', p ->> 'model_version',
            (p ->> 'width')::integer, (p ->> 'height')::integer,
            (p ->> 'num_inference_steps')::integer, (p ->> 'guidance_scale')::numeric)
    returning id into v_batch_id;

    foreach p in array v_params loop
        insert into image_generations (
            user_id, prompt, negative_prompt, model, model_id, width, height, steps,
            guidance_scale, seed, status, batch_id, batch_index
        )
        values (
            p_user_id, p ->> 'prompt', p ->> 'negative_prompt', p ->> 'model_name',
            (p ->> 'model_row_id')::uuid, (p ->> 'width')::integer, (p ->> 'height')::integer,
            (p ->> 'num_inference_steps')::integer, (p ->> 'guidance_scale')::numeric,
            (p ->> 'seed')::bigint, 'pending', v_batch_id, v_index
        )
        returning id into v_generation_id;
        perform imagegen.queue_generation(v_generation_id, p);
        v_generations := v_generations || jsonb_build_object(
            'id', v_generation_id, 'index', v_index, 'prompt', p ->> 'prompt',
            'status', 'queued');
        v_index := v_index + 1;
    end loop;

    return jsonb_build_object(
        'id', v_batch_id,
        'name', (select name from batch_generations where id = v_batch_id),
        'total_count', v_count,
        'generations', v_generations
    );
end
$$;

-- Realtime: the app follows its batches and their generations (and, from the baseline,
-- its jobs). Supabase has the publication; where it is missing it is made as Supabase
-- makes it (empty), then given these tables.
do $realtime$
declare
    t text;
begin
    if not exists (select from pg_publication where pubname = 'supabase_realtime') then
        create publication supabase_realtime;
    end if;
    foreach t in array array['image_generations', 'job_queue', 'batch_generations'] loop
        if not exists (select from pg_publication_tables
                       where pubname = 'supabase_realtime' and schemaname = 'public'
                         and tablename = t) then
            execute format('alter publication supabase_realtime add table public.%I', t);
        end if;
    end loop;
end
$realtime$;

revoke all on function imagegen.count_batch_items(), imagegen.keep_batch_counts(),
    imagegen.batch_status(integer, integer, integer),
    public.start_batch(uuid, jsonb)
    from public, anon, authenticated;
grant execute on function public.start_batch(uuid, jsonb) to service_role;
