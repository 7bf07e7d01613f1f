-- What Supabase provides and plain PostgreSQL lacks, created only where missing, so that
-- on a Supabase database this migration changes nothing.

do $shim$
begin
    if not exists (select from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;

    if to_regnamespace('auth') is null then
        create schema auth;
        grant usage on schema auth to anon, authenticated, service_role;
    end if;

    if to_regclass('auth.users') is null then
        create table auth.users (
            id uuid primary key default gen_random_uuid(),
            email text unique,
            raw_user_meta_data jsonb not null default '{}'::jsonb,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        );
    end if;

    if to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb
        language sql stable
        as $fn$
            select coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
        $fn$;
    end if;

    if to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid
        language sql stable
        as $fn$
            select nullif(
                coalesce(
                    nullif(current_setting('request.jwt.claim.sub', true), ''),
                    auth.jwt() ->> 'sub'
                ),
                ''
            )::uuid
        $fn$;
    end if;

    if to_regprocedure('auth.role()') is null then
        create function auth.role() returns text
        language sql stable
        as $fn$ select auth.jwt() ->> 'role' $fn$;
    end if;
end
$shim$;

-- pg_cron: Supabase enables it from the dashboard; a plain server has it where it is
-- installed, and only in the database that cron.database_name names.
do $cron$
begin
    if exists (select from pg_available_extensions where name = 'pg_cron')
       and current_setting('cron.database_name', true) = current_database() then
        create extension if not exists pg_cron;
    end if;
end
$cron$;

-- net.http_post: pg_net where it can be had, else the same signature in plpython3u,
-- which really performs the request (synchronously, inside the calling transaction).
do $net$
begin
    if exists (select from pg_extension where extname = 'pg_net') then
        return;
    end if;
    if exists (select from pg_available_extensions where name = 'pg_net') then
        create extension pg_net;
        return;
    end if;
    if to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') is not null then
        return;
    end if;

    create schema if not exists net;
    create table if not exists net._http_response (
        id bigint primary key,
        status_code integer,
        content_type text,
        content text,
        timed_out boolean not null default false,
        error_msg text,
        created timestamptz not null default now()
    );
    create sequence if not exists net.http_request_queue_id_seq;

    if exists (select from pg_available_extensions where name = 'plpython3u') then
        create extension if not exists plpython3u;
        create function net.http_post(
            url text,
            body jsonb default '{}'::jsonb,
            params jsonb default '{}'::jsonb,
            headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
            timeout_milliseconds integer default 5000
        ) returns bigint
        language plpython3u
        as $py$
import json
import socket
import urllib.error
import urllib.parse
import urllib.request

request_id = plpy.execute("select nextval('net.http_request_queue_id_seq') as id")[0]["id"]
target = url
query = json.loads(params) if params else {}
if query:
    target += ("&" if "?" in target else "?") + urllib.parse.urlencode(query)
request = urllib.request.Request(
    target,
    data=(body or "{}").encode(),
    headers=json.loads(headers) if headers else {},
    method="POST",
)
status = content_type = content = error = None
timed_out = False
try:
    with urllib.request.urlopen(request, timeout=timeout_milliseconds / 1000.0) as response:
        status = response.status
        content_type = response.headers.get("Content-Type")
        content = response.read(1_000_000).decode("utf-8", "replace")
except urllib.error.HTTPError as exc:
    status = exc.code
    content_type = exc.headers.get("Content-Type")
    content = exc.read(1_000_000).decode("utf-8", "replace")
except (socket.timeout, TimeoutError):
    timed_out = True
    error = "Timeout was reached"
except Exception as exc:
    error = f"{type(exc).__name__}: {exc}"

plan = plpy.prepare(
    "insert into net._http_response"
    " (id, status_code, content_type, content, timed_out, error_msg)"
    " values ($1, $2, $3, $4, $5, $6)",
    ["bigint", "integer", "text", "text", "boolean", "text"],
)
plpy.execute(plan, [request_id, status, content_type, content, timed_out, error])
return request_id
        $py$;
    else
        create function net.http_post(
            url text,
            body jsonb default '{}'::jsonb,
            params jsonb default '{}'::jsonb,
            headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
            timeout_milliseconds integer default 5000
        ) returns bigint
        language plpgsql
        as $fn$
        begin
            raise exception 'net.http_post needs pg_net or plpython3u, and neither is installed';
        end
        $fn$;
    end if;
    revoke all on function net.http_post(text, jsonb, jsonb, jsonb, integer) from public;
    grant execute on function net.http_post(text, jsonb, jsonb, jsonb, integer) to service_role;
end
$net$;
