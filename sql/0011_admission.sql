-- Admission control: start_generation (sql/0005) refuses what the service should not
-- take on, before it writes anything.
--   * Per user: at most `max_active_generations_per_user` generations not yet finished
--     (pending, queued, processing, downloading). SQLSTATE PT429: the API answers 429,
--     and so does PostgREST (a PTxyz code is its HTTP status).
--   * Overall: at most `max_queue_depth` jobs waiting (status pending). SQLSTATE PT503:
--     503 with Retry-After. This bound takes no lock, so concurrent starts may pass it
--     by as many as run at once; the per-user limit is exact.
--     Counting the waiting jobs costs about 0.07 ms per thousand: on every start, a deep
--     queue made it the accept path's largest cost (bench/accept_path.py). So a bound
--     above QUEUE_HEADROOM (1,000) is checked against a shared count at most 250 ms old,
--     and counted again only when that count is within the headroom of the bound (or
--     stale): a large bound may be passed by what is accepted within 250 ms beyond its
--     headroom; a refusal, and any bound up to 1,000, always comes from a fresh count.
-- Both live in imagegen.settings; configure_admission() changes them, 0 switches one off.

create index if not exists image_generations_user_active_idx
    on public.image_generations (user_id)
    where status in ('pending', 'queued', 'processing', 'downloading');

insert into imagegen.settings (key, value)
values ('max_active_generations_per_user', '50'), ('max_queue_depth', '10000')
on conflict (key) do nothing;

create or replace function imagegen.integer_setting(p_key text, p_default integer)
returns integer
language sql
stable
set search_path = imagegen, pg_temp
as $$
    select coalesce((select value::integer from imagegen.settings where key = p_key), p_default)
$$;

create or replace function public._active_generations(p_user_id uuid) returns integer
language sql
stable
set search_path = public, pg_temp
as $$
    select count(*)::integer
    from image_generations
    where user_id = p_user_id and status in ('pending', 'queued', 'processing', 'downloading')
$$;

-- The last count of waiting jobs, shared by every start (one row).
create table if not exists imagegen.queue_depth_sample (
    id boolean primary key default true check (id),
    depth integer not null,
    counted_at timestamptz not null
);
insert into imagegen.queue_depth_sample (depth, counted_at)
values (0, '-infinity')
on conflict (id) do nothing;
revoke all on imagegen.queue_depth_sample from public;

-- Whether `p_limit` jobs or more are waiting (see the header for when it counts).
create or replace function public._queue_full(p_limit integer) returns boolean
language plpgsql
set search_path = public, pg_temp
as $$
declare
    c_headroom constant integer := 1000;  -- QUEUE_HEADROOM
    v_sample imagegen.queue_depth_sample;
    v_depth integer;
begin
    if p_limit > c_headroom then
        select * into v_sample from imagegen.queue_depth_sample;
        if v_sample.counted_at > clock_timestamp() - interval '250 milliseconds'
           and v_sample.depth < p_limit - c_headroom then
            return false;
        end if;
    end if;
    select count(*) into v_depth
    from (select from job_queue where status = 'pending' limit p_limit) waiting;
    if p_limit > c_headroom then
        -- One writer at a time; a start that finds the row taken does not wait for it.
        perform from imagegen.queue_depth_sample for update skip locked;
        if found then
            update imagegen.queue_depth_sample
            set depth = v_depth, counted_at = clock_timestamp();
        end if;
    end if;
    return v_depth >= p_limit;
end
$$;

-- Raises PT429 or PT503 when a new generation of this user must be refused. Holds, until
-- the caller's transaction ends, a lock that serialises this user's starts, so that
-- concurrent requests cannot pass the limit together.
create or replace function public.admit_generation(p_user_id uuid) returns void
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_user_limit integer := imagegen.integer_setting('max_active_generations_per_user', 50);
    v_queue_limit integer := imagegen.integer_setting('max_queue_depth', 10000);
begin
    if v_queue_limit > 0 and _queue_full(v_queue_limit) then
        raise exception using errcode = 'PT503',
            message = 'The service is busy with too many waiting generations. '
                      'Please try again in a minute.';
    end if;
    if v_user_limit <= 0 then
        return;
    end if;
    -- At the limit already: refused at once, without queueing behind this user's lock
    -- (a burst is answered in parallel). Else take the lock and count again.
    if _active_generations(p_user_id) < v_user_limit then
        perform pg_advisory_xact_lock(hashtextextended('imagegen.admission:' || p_user_id, 0));
        if _active_generations(p_user_id) < v_user_limit then
            return;
        end if;
    end if;
    raise exception using errcode = 'PT429',
        message = format('You already have %s generations in progress, the most allowed at '
                         'once. Please wait for one to finish.', v_user_limit);
end
$$;

-- For operators: e.g. select configure_admission(p_max_active_per_user => 20).
-- A null leaves that limit as it is; 0 switches it off.
create or replace function public.configure_admission(
    p_max_active_per_user integer default null,
    p_max_queue_depth integer default null
) returns jsonb
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if p_max_active_per_user < 0 or p_max_queue_depth < 0 then
        raise exception using errcode = 'invalid_parameter_value',
                              message = 'limits must be 0 (off) or more';
    end if;
    insert into imagegen.settings (key, value)
    select key, value::text
    from (values ('max_active_generations_per_user', p_max_active_per_user),
                 ('max_queue_depth', p_max_queue_depth)) given (key, value)
    where value is not null
    on conflict (key) do update set value = excluded.value, updated_at = now();
    return jsonb_build_object(
        'max_active_generations_per_user',
        imagegen.integer_setting('max_active_generations_per_user', 50),
        'max_queue_depth', imagegen.integer_setting('max_queue_depth', 10000));
end
$$;

revoke all on function imagegen.integer_setting(text, integer) from public;
revoke all on function public._active_generations(uuid), public._queue_full(integer),
    public.admit_generation(uuid), public.configure_admission(integer, integer) from public;
do $grants$
begin
    if exists (select from pg_roles where rolname = 'anon') then
        revoke all on function public._active_generations(uuid), public._queue_full(integer),
            public.admit_generation(uuid), public.configure_admission(integer, integer)
            from anon, authenticated;
    end if;
end
$grants$;
grant execute on function public._active_generations(uuid), public._queue_full(integer),
    public.admit_generation(uuid), public.configure_admission(integer, integer)
    to service_role;
