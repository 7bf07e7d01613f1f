-- One provider rate limit for all workers (issue 16, point 4). A token bucket per provider
-- account, kept here so that every worker process takes from the same one before each
-- create: N workers together never exceed it. A 429 from the provider pauses the bucket,
-- so every worker stops creating until the provider's Retry-After, not just the one that
-- saw it.
--
-- A caller that finds no token is given a turn (a reservation): its token is taken now,
-- from the future, and the job waits in the queue (snooze_job) until then; when it comes
-- back it is granted at once. Without turns every refused job would come back at the
-- next token's time, all together, and be refused again: turns make each refusal the
-- last one, and the wait first come, first served.
--
--   creates_per_minute  the limit (Replicate: 600 creates a minute); 0: no limit (the
--                       pauses still hold)
--   burst               tokens the bucket holds at most: creates sent at once after a
--                       quiet spell (kept below the provider's own burst)
--   tokens              now, as of refilled_at; below 0: turns handed out ahead
--   refilled_at         when tokens was counted; in the future while paused (the bucket
--                       refills from then)
--   paused_until        the provider's last Retry-After, for operators
--
-- Change the limit with configure_provider_limit('replicate', 1200) (README).

create table if not exists imagegen.provider_limits (
    provider text primary key,
    creates_per_minute integer not null check (creates_per_minute >= 0),
    burst numeric not null check (burst >= 1),
    tokens numeric not null,
    refilled_at timestamptz not null default now(),
    paused_until timestamptz
);

-- Turns handed out: the job whose token was taken ahead, and when it may create.
create table if not exists imagegen.provider_turns (
    job_id uuid primary key,
    provider text not null references imagegen.provider_limits (provider) on delete cascade,
    turn_at timestamptz not null
);
create index if not exists provider_turns_turn_at_idx on imagegen.provider_turns (turn_at);

revoke all on imagegen.provider_limits, imagegen.provider_turns
    from public, anon, authenticated;

-- Replicate's documented limit; a burst of half a second's worth.
insert into imagegen.provider_limits (provider, creates_per_minute, burst, tokens)
values ('replicate', 600, 5, 5)
on conflict (provider) do nothing;

-- A turn is kept this long past its time (a job cancelled while it waited leaves one).
create or replace function imagegen.turn_grace() returns interval
language sql
immutable
as $$ select interval '10 minutes' $$;

-- Before each create: 0 when the caller may create now, else the seconds to wait (the
-- job snoozes that long, then asks again with the same `p_job_id` and is granted). A
-- caller without a job (null) is only told how long to wait. One transaction, under the
-- bucket's row lock; the clock is read after the lock is had.
create or replace function public.take_provider_token(
    p_provider text,
    p_job_id uuid default null
) returns double precision
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    l imagegen.provider_limits;
    v_now timestamptz;
    v_turn timestamptz;
    v_rate numeric;
    v_tokens numeric;
    v_from timestamptz;
begin
    select * into l from imagegen.provider_limits where provider = p_provider for update;
    if not found then
        return 0;  -- a provider without a limit
    end if;
    v_now := clock_timestamp();

    if p_job_id is not null then
        delete from imagegen.provider_turns t where t.job_id = p_job_id
        returning t.turn_at into v_turn;
        if v_turn is not null then
            if v_turn <= v_now + interval '50 milliseconds' then
                return 0;  -- its turn: the token was taken when the turn was given
            end if;
            insert into imagegen.provider_turns (job_id, provider, turn_at)
            values (p_job_id, p_provider, v_turn);  -- back too early: the same turn
            return extract(epoch from v_turn - v_now);
        end if;
        -- Turns long past belong to jobs that never came back.
        delete from imagegen.provider_turns t
        where t.job_id in (select o.job_id from imagegen.provider_turns o
                           where o.turn_at < v_now - imagegen.turn_grace()
                           order by o.turn_at limit 8 for update skip locked);
    end if;

    if l.creates_per_minute = 0 then
        return greatest(extract(epoch from l.refilled_at - v_now), 0);  -- a pause only
    end if;
    v_rate := l.creates_per_minute / 60.0;
    v_from := greatest(l.refilled_at, v_now);
    v_tokens := least(l.burst,
                      l.tokens + v_rate * greatest(extract(epoch from v_now - l.refilled_at), 0));
    if v_tokens >= 1 and v_from <= v_now then
        update imagegen.provider_limits
        set tokens = v_tokens - 1, refilled_at = v_from
        where provider = p_provider;
        return 0;
    end if;
    if p_job_id is null then
        return extract(epoch from v_from - v_now) + greatest(1 - v_tokens, 0) / v_rate;
    end if;
    -- No token now: this job's is taken ahead, at the first time the bucket has one.
    v_turn := v_from + make_interval(secs => greatest(1 - v_tokens, 0) / v_rate);
    update imagegen.provider_limits
    set tokens = v_tokens - 1, refilled_at = v_from
    where provider = p_provider;
    insert into imagegen.provider_turns (job_id, provider, turn_at)
    values (p_job_id, p_provider, v_turn);
    return extract(epoch from v_turn - v_now);
end
$$;

-- The provider answered 429 with Retry-After `p_seconds`: no worker creates before then.
-- Keeps the later of two pauses. The bucket stops refilling until the pause ends, starts
-- again empty (the provider said we were over), and the turns handed out move back by the
-- pause's length, so they do not all fall due together when it ends. Returns the seconds
-- until the pause ends.
create or replace function public.pause_provider(p_provider text, p_seconds double precision)
returns double precision
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    l imagegen.provider_limits;
    v_now timestamptz;
    v_until timestamptz;
    v_from timestamptz;
    v_tokens numeric;
begin
    if p_seconds is null or p_seconds < 0 or p_seconds > 3600 then
        perform imagegen.invalid('seconds', 'a pause is 0 to 3600 seconds');
    end if;
    select * into l from imagegen.provider_limits where provider = p_provider for update;
    if not found then
        insert into imagegen.provider_limits (provider, creates_per_minute, burst, tokens)
        values (p_provider, 0, 1, 0)
        returning * into l;
    end if;
    v_now := clock_timestamp();
    v_until := v_now + make_interval(secs => p_seconds);
    v_from := greatest(l.refilled_at, v_now);
    if v_until <= v_from then
        return extract(epoch from v_from - v_now);  -- an as long or longer pause holds
    end if;
    v_tokens := least(l.burst, l.tokens + (l.creates_per_minute / 60.0)
                      * greatest(extract(epoch from v_now - l.refilled_at), 0));
    update imagegen.provider_limits
    set tokens = least(v_tokens, 0), refilled_at = v_until,
        paused_until = greatest(paused_until, v_until)
    where provider = p_provider;
    update imagegen.provider_turns set turn_at = turn_at + (v_until - v_from)
    where provider = p_provider;
    return p_seconds;
end
$$;

-- Set a provider's limit (a null leaves it as it is); the row is the one authority every
-- worker reads at each create, so a change holds at once for all of them.
create or replace function public.configure_provider_limit(
    p_provider text,
    p_creates_per_minute integer default null,
    p_burst numeric default null
) returns void
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if p_creates_per_minute < 0 then
        perform imagegen.invalid('creates_per_minute', 'must be 0 (no limit) or more');
    end if;
    if p_burst < 1 then
        perform imagegen.invalid('burst', 'must be at least 1');
    end if;
    insert into imagegen.provider_limits (provider, creates_per_minute, burst, tokens)
    values (p_provider, coalesce(p_creates_per_minute, 600), coalesce(p_burst, 5),
            coalesce(p_burst, 5))
    on conflict (provider) do update
    set creates_per_minute = coalesce(p_creates_per_minute, provider_limits.creates_per_minute),
        burst = coalesce(p_burst, provider_limits.burst),
        tokens = least(provider_limits.tokens, coalesce(p_burst, provider_limits.burst));
end
$$;

-- For operators: each provider's limit, the tokens now, the pause, the turns waiting.
create or replace view public.provider_limit_status
with (security_invoker = true) as
select l.provider,
       l.creates_per_minute,
       l.burst,
       case when l.creates_per_minute = 0 then null
            else round(least(l.burst, l.tokens + l.creates_per_minute / 60.0
                       * greatest(extract(epoch from now() - l.refilled_at), 0)), 2)
       end as tokens,
       case when l.paused_until > now() then l.paused_until end as paused_until,
       (select count(*) from imagegen.provider_turns t
        where t.provider = l.provider and t.turn_at > now()) as turns_waiting,
       (select max(t.turn_at) from imagegen.provider_turns t
        where t.provider = l.provider) as last_turn_at
from imagegen.provider_limits l;

-- security_invoker (as every view here): the service role reads the tables under it.
revoke all on public.provider_limit_status from public, anon, authenticated;
grant select on public.provider_limit_status to service_role;
grant select on imagegen.provider_limits, imagegen.provider_turns to service_role;

revoke all on function imagegen.turn_grace() from public, anon, authenticated;
revoke all on function public.take_provider_token(text, uuid),
    public.pause_provider(text, double precision),
    public.configure_provider_limit(text, integer, numeric)
    from public, anon, authenticated;
grant execute on function public.take_provider_token(text, uuid),
    public.pause_provider(text, double precision),
    public.configure_provider_limit(text, integer, numeric)
    to service_role;
