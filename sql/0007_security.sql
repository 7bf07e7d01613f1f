-- Row level security and grants. Users read their own rows (the apps read them
-- directly); every write goes through the SECURITY DEFINER functions, which only
-- service_role may call, but for what a signed-in user may do to their own rows.

alter table public.image_generations enable row level security;
alter table public.images enable row level security;
alter table public.job_queue enable row level security;
alter table public.models enable row level security;

drop policy if exists "Users read their own generations" on public.image_generations;
create policy "Users read their own generations" on public.image_generations
    for select to authenticated using (user_id = auth.uid());

drop policy if exists "Users read their own images" on public.images;
create policy "Users read their own images" on public.images
    for select to authenticated using (user_id = auth.uid());

-- The apps let users favourite, rate and publish their own images: those columns only.
drop policy if exists "Users mark their own images" on public.images;
create policy "Users mark their own images" on public.images
    for update to authenticated using (user_id = auth.uid()) with check (user_id = auth.uid());

drop policy if exists "Users read their own jobs" on public.job_queue;
create policy "Users read their own jobs" on public.job_queue
    for select to authenticated using (created_by = auth.uid());

drop policy if exists "Anyone reads active models" on public.models;
create policy "Anyone reads active models" on public.models
    for select to anon, authenticated using (is_active);

revoke all on public.image_generations, public.images, public.job_queue, public.models
    from public, anon, authenticated;
grant select on public.image_generations, public.images, public.job_queue
    to authenticated;
grant update (is_favorite, is_public, rating) on public.images to authenticated;
grant select on public.models to anon, authenticated;
grant all on public.image_generations, public.images, public.job_queue, public.models
    to service_role;

revoke all on public.queue_health, public.failed_jobs_recent, public.stuck_jobs,
    public.queue_throughput from public, anon, authenticated;
grant select on public.queue_health, public.failed_jobs_recent, public.stuck_jobs,
    public.queue_throughput to authenticated, service_role;

-- Functions: nobody by default (Supabase also grants anon/authenticated explicitly).
do $grants$
declare
    f regprocedure;
begin
    for f in
        select p.oid::regprocedure
        from pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and p.proname in ('enqueue_job', 'claim_jobs', 'claim_next_job', 'heartbeat_jobs',
                            'complete_job', 'release_jobs', 'cancel_job', 'start_generation',
                            'generation_parameters',
                            'begin_generation', 'record_prediction', 'generation_downloading',
                            'finish_generation', 'fail_generation', 'cancel_generation',
                            '_invalid', '_held_generation')
    loop
        execute format('revoke all on function %s from public, anon, authenticated', f);
        execute format('grant execute on function %s to service_role', f);
    end loop;
end
$grants$;
grant execute on function public.cancel_generation(uuid) to authenticated;

-- Realtime: the apps follow their generations and jobs as they change.
do $realtime$
declare
    t text;
begin
    if exists (select from pg_publication where pubname = 'supabase_realtime') then
        foreach t in array array['image_generations', 'job_queue'] loop
            if not exists (select from pg_publication_tables
                           where pubname = 'supabase_realtime' and schemaname = 'public'
                             and tablename = t) then
                execute format('alter publication supabase_realtime add table public.%I', t);
            end if;
        end loop;
    end if;
end
$realtime$;
