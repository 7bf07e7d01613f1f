-- Where a generation stands in the queue and when it should be done: "is it queued or
-- hung?". For its owner, through get-generation (the API) and rpc('generation_status').
--
--   position           its place in the claim's order (sql/0080_fair_turns.sql): 1 + the
--                      due pending jobs that a claim takes before it (a higher priority,
--                      or the same priority and an earlier turn); null unless it waits.
--   workers_busy       jobs being run now: how many run side by side.
--   median_seconds     the median generation_time_seconds of its model's last 100
--                      generations completed within the hour; with none, the model's
--                      estimated_time_seconds (estimate_basis 'recent' or 'model'; null
--                      and null when the model has neither).
--   estimated_seconds  until it is done: waiting, the rounds of busy workers ahead of it
--                      and its own (floor((position - 1) / workers_busy) + 1) times the
--                      median; running, the median less the time it has run (at least 0);
--                      null when finished or without a median.
-- Cheap: the jobs ahead are counted on the claim's index (an index-only range scan up to
-- the job's own place, never past it), the durations on the last 100 of one model.

create index if not exists image_generations_model_completed_idx
    on public.image_generations (model, completed_at desc) include (generation_time_seconds)
    where status = 'completed';

create or replace function imagegen.generation_status(p_generation_id uuid, p_user_id uuid)
returns jsonb
language plpgsql
stable
set search_path = public, pg_temp
as $$
declare
    g image_generations;
    j job_queue;
    v_ahead bigint;
    v_busy bigint;
    v_samples integer;
    v_median numeric;
    v_basis text;
    v_estimate numeric;
begin
    select * into g from image_generations where id = p_generation_id and user_id = p_user_id;
    if not found then
        perform imagegen.invalid('generation_id', 'Unknown generation');
    end if;

    select count(*), percentile_cont(0.5) within group (order by seconds)
    into v_samples, v_median
    from (select generation_time_seconds as seconds
          from image_generations
          where model = g.model and status = 'completed'
            and completed_at > now() - interval '1 hour'
            and generation_time_seconds is not null
          order by completed_at desc
          limit 100) recent;
    if v_samples > 0 then
        v_basis := 'recent';
    else
        select estimated_time_seconds into v_median
        from models where id = g.model_id or (g.model_id is null and name = g.model)
        limit 1;
        v_basis := case when v_median is not null then 'model' end;
    end if;

    select * into j
    from job_queue
    where payload ? 'generation_id' and payload ->> 'generation_id' = g.id::text
      and status in ('pending', 'processing')
    order by created_at desc
    limit 1;
    select count(*) into v_busy from job_queue where status = 'processing';

    if j.status = 'pending' then
        select count(*) into v_ahead
        from (select from job_queue
              where status = 'pending' and scheduled_at <= now() and priority > j.priority
              union all
              select from job_queue
              where status = 'pending' and scheduled_at <= now() and priority = j.priority
                and (turn, created_at) < (j.turn, j.created_at)) ahead;
        v_estimate := (floor(v_ahead / greatest(v_busy, 1)) + 1) * v_median;
    elsif j.status = 'processing' then
        v_estimate := greatest(v_median - extract(epoch from now() - j.started_at), 0);
    end if;

    return jsonb_build_object(
        'generation_id', g.id,
        'status', g.status,
        'job_status', j.status,
        'position', v_ahead + 1,
        'workers_busy', v_busy,
        'median_seconds', round(v_median, 1),
        'estimate_basis', v_basis,
        'samples', v_samples,
        'estimated_seconds', round(v_estimate)
    );
end
$$;

-- The apps' call, as PostgREST runs it: the signed-in user's own generations only.
create or replace function public.generation_status(p_generation_id uuid)
returns jsonb
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    select imagegen.generation_status(p_generation_id, auth.uid())
$$;

-- The API's, for the user it has authenticated (get-generation).
create or replace function public.generation_queue_status(p_generation_id uuid, p_user_id uuid)
returns jsonb
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    select imagegen.generation_status(p_generation_id, p_user_id)
$$;

revoke all on function imagegen.generation_status(uuid, uuid) from public, anon, authenticated;
revoke all on function public.generation_status(uuid) from public, anon, authenticated;
revoke all on function public.generation_queue_status(uuid, uuid)
    from public, anon, authenticated;
grant execute on function public.generation_status(uuid) to authenticated, service_role;
grant execute on function public.generation_queue_status(uuid, uuid) to service_role;
