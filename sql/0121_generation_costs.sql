-- Where the money goes (issue 16, point 5). Each generation keeps the provider's own
-- figures and our estimate of its cost; operators read them per user, model and day.
--
--   provider_metrics  what Replicate reported for the prediction that produced the output:
--                     {"prediction_id", "status", "metrics": {...} (its `metrics` object as
--                     given: predict_time, total_time, ...), "history": [{"status", "at"}]
--                     (starting at created_at, processing at started_at, the final status
--                     at completed_at: the prediction's own timestamps)}; written by
--                     generation_downloading when the prediction has succeeded.
--   predict_time      metrics.predict_time in seconds, when Replicate gave a number: the
--                     GPU time it bills.
--   estimated_cost    models.cost_per_generation of the generation's model when it
--                     completed (a trigger, whoever completes it).
--
-- Redefines public.generation_downloading (baseline, section 6): p_provider_metrics comes
-- last with a default, so positional calls keep their meaning; the old signature goes, as
-- with both a call would be ambiguous. It now also locks the generation before completing
-- its job, the order a cancel takes (row, then its jobs: sql/0020's trigger), so the two
-- wait for each other instead of deadlocking.

alter table public.image_generations
    add column if not exists provider_metrics jsonb,
    add column if not exists predict_time numeric,
    add column if not exists estimated_cost numeric;

drop function if exists public.generation_downloading(
    uuid, text, text, text, integer, integer, numeric);

-- The prediction succeeded: complete the generate job, enqueue the download (priority 1:
-- the output URL expires), mark the generation downloading and keep the provider's
-- figures, together.
create or replace function public.generation_downloading(
    p_job_id uuid,
    p_worker_id text,
    p_output_url text,
    p_format text,
    p_width integer,
    p_height integer,
    p_generation_time_seconds numeric,
    p_provider_metrics jsonb default null
) returns uuid
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_job job_queue;
    v_result jsonb;
    v_download_id uuid;
    v_predict_time jsonb := p_provider_metrics -> 'metrics' -> 'predict_time';
begin
    select * into v_job from job_queue where id = p_job_id;
    perform from image_generations
    where id = (v_job.payload ->> 'generation_id')::uuid
    for update;
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
        provider_metrics = coalesce(p_provider_metrics, provider_metrics),
        predict_time = case when jsonb_typeof(v_predict_time) = 'number'
                            then (v_predict_time #>> '{}')::numeric
                            when p_provider_metrics is null then predict_time end,
        updated_at = now()
    where id = (v_job.payload ->> 'generation_id')::uuid
      and status not in ('completed', 'failed');
    return v_download_id;
end
$$;

-- The estimate, taken when the generation completes: the model's price then, kept even if
-- the operators change it later.
create or replace function imagegen.price_completed_generation() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    new.estimated_cost := (
        select cost_per_generation
        from models
        where id = new.model_id or (new.model_id is null and name = new.model)
        order by id = new.model_id desc nulls last
        limit 1);
    return new;
end
$$;

drop trigger if exists completed_generation_is_priced on public.image_generations;
create trigger completed_generation_is_priced
    before update of status on public.image_generations
    for each row
    when (new.status = 'completed' and old.status is distinct from 'completed')
    execute function imagegen.price_completed_generation();

-- For operators (the SQL editor, service_role), never for the apps: per user, model and day
-- (UTC, by when the generation was started).
create or replace view public.generation_costs with (security_invoker = true) as
select
    user_id,
    model,
    (created_at at time zone 'UTC')::date as day,
    count(*) as generations,
    count(*) filter (where status = 'completed') as succeeded,
    count(*) filter (where status = 'failed') as failed,
    coalesce(sum(predict_time), 0) as predict_seconds,
    coalesce(sum(estimated_cost), 0) as estimated_cost
from public.image_generations
group by user_id, model, (created_at at time zone 'UTC')::date;

revoke all on public.generation_costs from public, anon, authenticated;
grant select on public.generation_costs to service_role;

revoke all on function public.generation_downloading(
    uuid, text, text, text, integer, integer, numeric, jsonb) from public, anon, authenticated;
grant execute on function public.generation_downloading(
    uuid, text, text, text, integer, integer, numeric, jsonb) to service_role;
revoke all on function imagegen.price_completed_generation() from public, anon, authenticated;
