-- Functions the HTTP service calls besides the queue: wake workers, read queue depth for
-- /metrics, and read one generation for its owner (the CLI follows a generation this way).

create or replace function public.nudge_workers() returns void
language sql
security definer
set search_path = public, pg_temp
as $$
    select pg_notify('job_queue', 'nudge')
$$;

-- Active jobs only: the partial indexes keep this cheap however many finished jobs exist.
create or replace function public.queue_depth()
returns table (job_type text, status text, count bigint)
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    select job_type, status, count(*)
    from job_queue
    where status in ('pending', 'processing')
    group by job_type, status
$$;

create or replace function public.get_generation(p_generation_id uuid, p_user_id uuid)
returns jsonb
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    select to_jsonb(g) || jsonb_build_object(
        'images', coalesce((select jsonb_agg(to_jsonb(i)) from images i
                            where i.generation_id = g.id), '[]'::jsonb))
    from image_generations g
    where g.id = p_generation_id and g.user_id = p_user_id
$$;

revoke all on function public.nudge_workers(), public.queue_depth(),
    public.get_generation(uuid, uuid) from public, anon, authenticated;
grant execute on function public.nudge_workers(), public.queue_depth(),
    public.get_generation(uuid, uuid) to service_role;
