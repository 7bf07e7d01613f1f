-- Worker liveness: PostgreSQL knows at once when a worker's session ends (kill -9, a
-- lost host), so its jobs need not wait for their lease to run out.
--
-- Each worker takes a session-level advisory lock, keyed by its id, on a connection of
-- its own (register_worker) and keeps that connection open while it runs. The lock
-- lives exactly as long as that session. reclaim_dead_workers (called every few
-- seconds by every worker) finds the registered workers whose lock is free: their
-- session is gone, so the leases of their jobs end now and the next claim_jobs takes
-- the jobs over as it takes over any expired lease (attempts, the final-attempt rule
-- and the fencing of complete_job unchanged). The lease stays the fallback for a worker
-- that is alive but stuck, and for workers that do not register (the PostgREST gateway,
-- the old worker, claim_next_job).

create table if not exists imagegen.worker_sessions (
    worker_id text primary key,
    lock_key bigint not null,
    registered_at timestamptz not null default now()
);

create or replace function imagegen.worker_lock_key(p_worker_id text) returns bigint
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select hashtextextended('imagegen.worker:' || p_worker_id, 0)
$$;

-- On the worker's dedicated connection: true when this session now holds the worker's
-- lock (false: another live session holds it, the worker id is running twice).
create or replace function public.register_worker(p_worker_id text) returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_key bigint := imagegen.worker_lock_key(p_worker_id);
begin
    if p_worker_id is null or p_worker_id = '' then
        perform imagegen.invalid('worker_id', 'worker_id is required');
    end if;
    if not pg_try_advisory_lock(v_key) then
        return false;
    end if;
    insert into imagegen.worker_sessions (worker_id, lock_key)
    values (p_worker_id, v_key)
    on conflict (worker_id) do update
        set lock_key = excluded.lock_key, registered_at = now();
    return true;
end
$$;

-- Ends the leases of every registered worker whose session is gone; returns how many
-- jobs were freed. After a server restart every lock is gone, live workers' included:
-- a registration from before the start counts only once its worker has had a minute
-- to register again.
create or replace function public.reclaim_dead_workers() returns integer
language sql
security definer
set search_path = public, pg_temp
as $$
    with dead as (
        delete from imagegen.worker_sessions s
        where (s.registered_at > pg_postmaster_start_time()
               or now() > pg_postmaster_start_time() + interval '1 minute')
          -- Free for this transaction only when no session holds it: its worker is gone.
          and pg_try_advisory_xact_lock(s.lock_key)
        returning s.worker_id
    ),
    freed as (
        update job_queue j
        set locked_until = now(), updated_at = now()
        where j.status = 'processing'
          and j.locked_by in (select worker_id from dead)
          and j.locked_until > now()
        returning j.id
    )
    select count(*)::integer from freed
$$;

revoke all on table imagegen.worker_sessions from public, anon, authenticated;
revoke all on function imagegen.worker_lock_key(text) from public, anon, authenticated;
revoke all on function public.register_worker(text) from public, anon, authenticated;
revoke all on function public.reclaim_dead_workers() from public, anon, authenticated;
grant execute on function public.register_worker(text) to service_role;
grant execute on function public.reclaim_dead_workers() to service_role;
