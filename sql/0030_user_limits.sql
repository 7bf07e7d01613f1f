-- Per-user limits, the ones the apps show (CLIENTS.md §2 flows 3-4) and admission enforces:
-- generations per day, per hour, and how many may be in progress at once. A user's
-- `user_rate_limits` row sets their own limits (the old database has the table, rows and
-- all; its column defaults stay its own); a null limit there means the setting:
--   daily_generation_limit           1000   generations per UTC day
--   hourly_generation_limit           200   generations per clock hour
--   max_active_generations_per_user    50   in progress at once (the baseline's setting)
--   max_batch_size                     10   prompts in one batch (the apps offer 10)
-- 0 switches a limit off. The day and hour are fixed windows: the row keeps each window's
-- count and its reset time, so a refusal can say when to come back (Retry-After).
-- "In progress" is now queued, processing or downloading: a `pending` row is one the app
-- inserted (or a retry left) that nothing has started yet, so it costs nothing until
-- generate-image or process-queue starts it, through this admission.

create table if not exists public.user_rate_limits (
    user_id uuid primary key references auth.users (id) on delete cascade,
    daily_generations_count integer default 0,
    daily_generations_limit integer,
    daily_reset_at timestamptz,
    hourly_generations_count integer default 0,
    hourly_generations_limit integer,
    hourly_reset_at timestamptz,
    last_generation_at timestamptz,
    max_batch_size integer,
    max_concurrent_generations integer,
    total_generations_all_time integer default 0,
    updated_at timestamptz default now()
);

alter table public.user_rate_limits enable row level security;
drop policy if exists "Users read their own limits" on public.user_rate_limits;
create policy "Users read their own limits" on public.user_rate_limits
    for select to authenticated using (user_id = auth.uid());
revoke all on public.user_rate_limits from public, anon, authenticated;
grant select on public.user_rate_limits to authenticated;
grant all on public.user_rate_limits to service_role;

insert into imagegen.settings (key, value)
values ('daily_generation_limit', '1000'), ('hourly_generation_limit', '200'),
       ('max_batch_size', '10')
on conflict (key) do nothing;

create or replace function imagegen.active_generations(p_user_id uuid) returns integer
language sql
stable
set search_path = public, pg_temp
as $$
    select count(*)::integer
    from image_generations
    where user_id = p_user_id and status in ('queued', 'processing', 'downloading')
$$;

-- The user's limits and usage now, and whether `p_count` more generations may start: the
-- one place every limit is read. `retry_at` is when the limit that refuses frees up (null
-- for the concurrent limit: when one finishes).
create or replace function imagegen.rate_limits(p_user_id uuid, p_count integer default 1)
returns jsonb
language plpgsql
stable
security definer
set search_path = public, pg_temp
as $$
declare
    r user_rate_limits;
    v_now timestamptz := now();
    v_daily_limit integer;
    v_hourly_limit integer;
    v_max_concurrent integer;
    v_daily_used integer := 0;
    v_hourly_used integer := 0;
    v_daily_reset timestamptz := date_trunc('day', v_now, 'UTC') + interval '1 day';
    v_hourly_reset timestamptz := date_trunc('hour', v_now) + interval '1 hour';
    v_active integer := imagegen.active_generations(p_user_id);
    v_reason text;
    v_retry_at timestamptz;
begin
    select * into r from user_rate_limits where user_id = p_user_id;
    v_daily_limit := coalesce(r.daily_generations_limit,
                              imagegen.integer_setting('daily_generation_limit', 1000));
    v_hourly_limit := coalesce(r.hourly_generations_limit,
                               imagegen.integer_setting('hourly_generation_limit', 200));
    v_max_concurrent := coalesce(r.max_concurrent_generations,
                                 imagegen.integer_setting('max_active_generations_per_user', 50));
    if r.daily_reset_at > v_now then
        v_daily_used := coalesce(r.daily_generations_count, 0);
        v_daily_reset := r.daily_reset_at;
    end if;
    if r.hourly_reset_at > v_now then
        v_hourly_used := coalesce(r.hourly_generations_count, 0);
        v_hourly_reset := r.hourly_reset_at;
    end if;

    -- A batch is one request: it needs a free slot, and room for all its items per window.
    if v_max_concurrent > 0 and v_active >= v_max_concurrent then
        v_reason := format('You already have %s generations in progress, the most allowed at '
                           'once. Please wait for one to finish.', v_max_concurrent);
    elsif v_daily_limit > 0 and v_daily_used + p_count > v_daily_limit then
        v_reason := format('Daily limit reached: %s of %s generations used today.',
                           v_daily_used, v_daily_limit);
        v_retry_at := v_daily_reset;
    elsif v_hourly_limit > 0 and v_hourly_used + p_count > v_hourly_limit then
        v_reason := format('Hourly limit reached: %s of %s generations used this hour.',
                           v_hourly_used, v_hourly_limit);
        v_retry_at := v_hourly_reset;
    end if;

    return jsonb_build_object(
        'can_generate', v_reason is null,
        'limit_reason', v_reason,
        'daily_used', v_daily_used,
        'daily_limit', v_daily_limit,
        'daily_reset_at', v_daily_reset,
        'hourly_used', v_hourly_used,
        'hourly_limit', v_hourly_limit,
        'hourly_reset_at', v_hourly_reset,
        'active_generations', v_active,
        'max_concurrent', v_max_concurrent,
        'total_all_time', coalesce(r.total_generations_all_time, 0),
        'max_batch_size', coalesce(r.max_batch_size, imagegen.integer_setting('max_batch_size', 10)),
        'retry_at', v_retry_at
    );
end
$$;

-- The baseline's one-argument admission becomes this one (same calls still resolve here):
-- `p_count` generations of one request (a batch) are admitted or refused together. Raises
-- PT503 when the queue is full, PT429 when a limit of the user refuses (DETAIL: when to
-- retry, as an ISO timestamp, for Retry-After); else counts them in the user's row.
-- `p_counted`: generations already counted when their row was admitted (an app's insert)
-- and only now started: only the queue and the concurrent limit apply.
drop function if exists imagegen.admit_generation(uuid);
create or replace function imagegen.admit_generation(
    p_user_id uuid,
    p_count integer default 1,
    p_counted boolean default false
) returns void
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_queue_limit integer := imagegen.integer_setting('max_queue_depth', 10000);
    v_new integer := case when p_counted then 0 else p_count end;
    v_limits jsonb;
begin
    if v_queue_limit > 0 and imagegen.queue_full(v_queue_limit) then
        raise exception using errcode = 'PT503',
            message = 'The service is busy with too many waiting generations. '
                      'Please try again in a minute.';
    end if;
    -- Refused at once when a limit already refuses, without queueing behind this user's
    -- lock (a burst is answered in parallel); else take the lock and look again.
    v_limits := imagegen.rate_limits(p_user_id, v_new);
    if (v_limits ->> 'can_generate')::boolean then
        perform pg_advisory_xact_lock(hashtextextended('imagegen.admission:' || p_user_id, 0));
        v_limits := imagegen.rate_limits(p_user_id, v_new);
    end if;
    if not (v_limits ->> 'can_generate')::boolean then
        raise exception using errcode = 'PT429', message = v_limits ->> 'limit_reason',
            detail = coalesce(v_limits ->> 'retry_at', '');
    end if;
    if v_new = 0 then
        return;
    end if;

    insert into user_rate_limits as u (
        user_id, daily_generations_count, daily_reset_at, hourly_generations_count,
        hourly_reset_at, last_generation_at, total_generations_all_time, updated_at
    )
    values (p_user_id, v_new, (v_limits ->> 'daily_reset_at')::timestamptz, v_new,
            (v_limits ->> 'hourly_reset_at')::timestamptz, now(), v_new, now())
    on conflict (user_id) do update
    set daily_generations_count = (v_limits ->> 'daily_used')::integer + v_new,
        daily_reset_at = excluded.daily_reset_at,
        hourly_generations_count = (v_limits ->> 'hourly_used')::integer + v_new,
        hourly_reset_at = excluded.hourly_reset_at,
        last_generation_at = now(),
        total_generations_all_time = coalesce(u.total_generations_all_time, 0) + v_new,
        updated_at = now();
end
$$;

-- What the apps read (RateLimitIndicator.tsx, checkCanGenerate): one JSON object, for the
-- caller only (another user's id answers null; the service role may ask for anyone). The
-- old database's own versions of both functions give way (a return type cannot change).
drop function if exists public.get_user_limits(uuid);
drop function if exists public.check_rate_limit(uuid, integer);
create or replace function public.get_user_limits(p_user_id uuid)
returns jsonb
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    select imagegen.rate_limits(p_user_id) - 'max_batch_size' - 'retry_at'
    where p_user_id = auth.uid() or auth.role() = 'service_role'
$$;

-- Whether `p_count` generations may start now, and if not why and until when.
create or replace function public.check_rate_limit(p_user_id uuid, p_count integer default 1)
returns jsonb
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    select jsonb_build_object(
        'allowed', (l ->> 'can_generate')::boolean,
        'reason', l ->> 'limit_reason',
        'retry_at', l -> 'retry_at',
        'daily_remaining', greatest((l ->> 'daily_limit')::integer
                                    - (l ->> 'daily_used')::integer, 0),
        'hourly_remaining', greatest((l ->> 'hourly_limit')::integer
                                     - (l ->> 'hourly_used')::integer, 0),
        'active_generations', l -> 'active_generations',
        'max_concurrent', l -> 'max_concurrent')
    from imagegen.rate_limits(p_user_id, greatest(coalesce(p_count, 1), 1)) l
    where p_user_id = auth.uid() or auth.role() = 'service_role'
$$;

revoke all on function imagegen.active_generations(uuid), imagegen.rate_limits(uuid, integer),
    imagegen.admit_generation(uuid, integer, boolean), public.get_user_limits(uuid),
    public.check_rate_limit(uuid, integer)
    from public, anon, authenticated;
grant execute on function public.get_user_limits(uuid), public.check_rate_limit(uuid, integer)
    to authenticated, service_role;

-- For operators, the baseline's configure_admission with the new settings besides: e.g.
-- select configure_admission(p_hourly_limit => 50). A null leaves a setting as it is, 0
-- switches it off; the answer is every setting as it now is.
drop function if exists public.configure_admission(integer, integer);
create or replace function public.configure_admission(
    p_max_active_per_user integer default null,
    p_max_queue_depth integer default null,
    p_daily_limit integer default null,
    p_hourly_limit integer default null,
    p_max_batch_size integer default null
) returns jsonb
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if least(p_max_active_per_user, p_max_queue_depth, p_daily_limit, p_hourly_limit,
             p_max_batch_size) < 0 then
        raise exception using errcode = 'invalid_parameter_value',
                              message = 'limits must be 0 (off) or more';
    end if;
    insert into imagegen.settings (key, value)
    select key, value::text
    from (values ('max_active_generations_per_user', p_max_active_per_user),
                 ('max_queue_depth', p_max_queue_depth),
                 ('daily_generation_limit', p_daily_limit),
                 ('hourly_generation_limit', p_hourly_limit),
                 ('max_batch_size', p_max_batch_size)) given (key, value)
    where value is not null
    on conflict (key) do update set value = excluded.value, updated_at = now();
    return jsonb_build_object(
        'max_active_generations_per_user',
        imagegen.integer_setting('max_active_generations_per_user', 50),
        'max_queue_depth', imagegen.integer_setting('max_queue_depth', 10000),
        'daily_generation_limit', imagegen.integer_setting('daily_generation_limit', 1000),
        'hourly_generation_limit', imagegen.integer_setting('hourly_generation_limit', 200),
        'max_batch_size', imagegen.integer_setting('max_batch_size', 10));
end
$$;

revoke all on function public.configure_admission(integer, integer, integer, integer, integer)
    from public, anon, authenticated;
grant execute on function
    public.configure_admission(integer, integer, integer, integer, integer) to service_role;
