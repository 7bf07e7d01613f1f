-- The worker trigger: pg_cron job `process-jobs-worker` POSTs to
-- <worker url>/functions/v1/process-jobs with the worker secret as bearer token. URL and
-- secret are read when the job runs, from Supabase Vault where it exists, else from
-- imagegen.settings (service_role only), so neither appears in cron.job.

create schema if not exists imagegen;
revoke all on schema imagegen from public;
grant usage on schema imagegen to service_role;

create table if not exists imagegen.settings (
    key text primary key,
    value text not null,
    updated_at timestamptz not null default now()
);
revoke all on imagegen.settings from public;
grant select, insert, update, delete on imagegen.settings to service_role;

create or replace function imagegen.get_setting(p_key text) returns text
language plpgsql
stable
security definer
set search_path = imagegen, pg_temp
as $$
declare
    v_value text;
begin
    if to_regclass('vault.decrypted_secrets') is not null then
        execute 'select decrypted_secret from vault.decrypted_secrets where name = $1'
            into v_value using 'imagegen_' || p_key;
        if v_value is not null then
            return v_value;
        end if;
    end if;
    select value into v_value from imagegen.settings where key = p_key;
    return v_value;
end
$$;

create or replace function imagegen.put_setting(p_key text, p_value text) returns void
language plpgsql
security definer
set search_path = imagegen, pg_temp
as $$
declare
    v_id uuid;
begin
    -- By name: Vault's create_secret has four arguments (a key id) in current releases.
    if to_regproc('vault.create_secret') is not null then
        execute 'select id from vault.secrets where name = $1' into v_id using 'imagegen_' || p_key;
        if v_id is null then
            execute 'select vault.create_secret($1, $2)' using p_value, 'imagegen_' || p_key;
        else
            execute 'select vault.update_secret($1, $2)' using v_id, p_value;
        end if;
        return;
    end if;
    insert into imagegen.settings (key, value) values (p_key, p_value)
    on conflict (key) do update set value = excluded.value, updated_at = now();
end
$$;

-- What the cron job runs: one POST to the worker, which answers at once.
create or replace function public.invoke_worker() returns bigint
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_url text := imagegen.get_setting('worker_url');
    v_secret text := imagegen.get_setting('worker_secret');
begin
    if v_url is null or v_secret is null then
        raise exception 'worker URL or secret not configured: run configure_worker_cron()';
    end if;
    return net.http_post(
        url := rtrim(v_url, '/') || '/functions/v1/process-jobs',
        body := '{}'::jsonb,
        headers := jsonb_build_object('Content-Type', 'application/json',
                                      'Authorization', 'Bearer ' || v_secret),
        timeout_milliseconds := 5000
    );
end
$$;

-- Finished jobs older than the retention age go, and so do old cron run records.
create or replace function public.prune_finished_jobs(p_older_than interval default null)
returns integer
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_age interval := coalesce(p_older_than,
                               imagegen.get_setting('job_retention')::interval,
                               interval '7 days');
    v_deleted integer;
begin
    delete from job_queue
    where status in ('completed', 'failed', 'cancelled') and completed_at < now() - v_age;
    get diagnostics v_deleted = row_count;
    if to_regclass('cron.job_run_details') is not null then
        execute 'delete from cron.job_run_details where end_time < now() - $1' using v_age;
    end if;
    return v_deleted;
end
$$;

create or replace function imagegen.cron_version_at_least(p_major integer, p_minor integer)
returns boolean
language sql
stable
as $$
    select coalesce(
        (select (string_to_array(split_part(extversion, '-', 1), '.'))[1]::integer > p_major
             or ((string_to_array(split_part(extversion, '-', 1), '.'))[1]::integer = p_major
                 and coalesce((string_to_array(split_part(extversion, '-', 1), '.'))[2]::integer,
                              0) >= p_minor)
         from pg_extension where extname = 'pg_cron'),
        false)
$$;

-- (Re)schedule the worker trigger and the retention job. The interval defaults to
-- '10 seconds' where pg_cron has second schedules (1.5+), else every minute.
create or replace function public.configure_worker_cron(
    p_url text,
    p_secret text,
    p_schedule text default null,
    p_retention interval default interval '7 days'
) returns bigint
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_schedule text := coalesce(
        p_schedule,
        case when imagegen.cron_version_at_least(1, 5) then '10 seconds' else '* * * * *' end);
    v_job_id bigint;
begin
    if p_url is null or p_url !~* '^https?://' then
        raise exception using errcode = 'invalid_parameter_value',
                              message = 'worker URL must be an http(s) URL';
    end if;
    if length(coalesce(p_secret, '')) < 16 then
        raise exception using errcode = 'invalid_parameter_value',
                              message = 'worker secret must be at least 16 characters';
    end if;
    if to_regnamespace('cron') is null then
        raise exception 'pg_cron is not installed in this database';
    end if;
    perform imagegen.put_setting('worker_url', p_url);
    perform imagegen.put_setting('worker_secret', p_secret);
    perform imagegen.put_setting('job_retention', p_retention::text);
    execute 'select cron.schedule($1, $2, $3)' into v_job_id
        using 'process-jobs-worker', v_schedule, 'select public.invoke_worker()';
    execute 'select cron.schedule($1, $2, $3)'
        using 'imagegen-retention', '17 3 * * *', 'select public.prune_finished_jobs()';
    return v_job_id;
end
$$;

revoke all on function imagegen.get_setting(text), imagegen.put_setting(text, text),
    imagegen.cron_version_at_least(integer, integer) from public;
revoke all on function public.invoke_worker(), public.prune_finished_jobs(interval),
    public.configure_worker_cron(text, text, text, interval) from public;
do $grants$
begin
    if exists (select from pg_roles where rolname = 'anon') then
        revoke all on function public.invoke_worker(), public.prune_finished_jobs(interval),
            public.configure_worker_cron(text, text, text, interval) from anon, authenticated;
    end if;
end
$grants$;
grant execute on function public.invoke_worker(), public.prune_finished_jobs(interval),
    public.configure_worker_cron(text, text, text, interval) to service_role;
