-- generation_status (sql/0082_generation_status.sql) at depth: the jobs ahead are counted
-- up to a bound, so one call never reads more of the queue than that, however long the
-- queue is (bench/queue_position.py: with 100,000 queued, the unbounded count read every
-- index entry ahead of the tail, 9 ms a call). Past the bound the answer is a lower bound:
--
--   position        1 + the jobs ahead, counted up to `queue_position_limit` (setting,
--                   default 1,000; imagegen.settings): at most limit + 1.
--   position_exact  false when the count stopped at the bound (position and
--                   estimated_seconds are then "at least"); null unless it waits.
--
-- Everything else is as in 0082; the two public wrappers call this function unchanged.

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
    v_limit integer := greatest(imagegen.integer_setting('queue_position_limit', 1000), 1);
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
                and (turn, created_at) < (j.turn, j.created_at)
              limit v_limit) ahead;
        v_estimate := (floor(v_ahead / greatest(v_busy, 1)) + 1) * v_median;
    elsif j.status = 'processing' then
        v_estimate := greatest(v_median - extract(epoch from now() - j.started_at), 0);
    end if;

    return jsonb_build_object(
        'generation_id', g.id,
        'status', g.status,
        'job_status', j.status,
        'position', v_ahead + 1,
        'position_exact', case when v_ahead is not null then v_ahead < v_limit end,
        'workers_busy', v_busy,
        'median_seconds', round(v_median, 1),
        'estimate_basis', v_basis,
        'samples', v_samples,
        'estimated_seconds', round(v_estimate)
    );
end
$$;

revoke all on function imagegen.generation_status(uuid, uuid) from public, anon, authenticated;
