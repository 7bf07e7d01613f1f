-- The baseline: imagegen's whole schema in one file, written so that it both installs on
-- an empty database (plain PostgreSQL or Supabase) and upgrades the old Picture platform's
-- database in place (its tables, rows, queue functions, views, grants, cron job). It folds
-- the twelve files the project had before anything was deployed. From here on `sql/` is a
-- history: add a file for each change, never edit one (imagegen migrate refuses).
--
-- Where the old database already has an object, `if not exists` keeps it and its rows;
-- the columns, constraints and indexes the service relies on and it lacks are added
-- afterwards, one statement each, so both paths end with everything the service uses (the
-- old tables keep their own extra columns, nullability and foreign keys). What the old
-- platform had that we replace (its queue functions, views, policies and grants) is
-- dropped and created anew.
--
-- Sections: 1 Supabase shim, 2 private schema and settings, 3 tables, 4 models,
-- 5 queue, 6 generations, 7 admission, 8 the failure rule, 9 views, 10 RLS and table
-- grants, 11 cron, 12 storage, 13 function grants.

-- Functions that exist before this file ran (the old platform's) keep their grants; every
-- function this file creates is private until section 13 grants it by name.
drop table if exists pg_temp.baseline_functions_before;
create temporary table baseline_functions_before as select oid from pg_proc;

-- 1. Supabase shim ------------------------------------------------------------------------
-- What Supabase provides and plain PostgreSQL lacks, created only where missing, so that
-- on a Supabase database this section changes nothing.

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

-- 2. The private schema -------------------------------------------------------------------
-- `public` is what PostgREST exposes; helpers and settings live in `imagegen` (the
-- migrator's own table is there too), reachable by the service role only.

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

-- SQLSTATE 22023 with the field in COLUMN and in the message (PostgREST passes on only
-- the message): the API answers 400 naming that field.
create or replace function imagegen.invalid(p_field text, p_message text) returns void
language plpgsql
as $$
begin
    raise exception using errcode = 'invalid_parameter_value', column = p_field,
        message = case when starts_with(p_message, p_field) then p_message
                       else p_field || ': ' || p_message end;
end
$$;

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

create or replace function imagegen.integer_setting(p_key text, p_default integer)
returns integer
language sql
stable
set search_path = imagegen, pg_temp
as $$
    select coalesce((select value::integer from imagegen.settings where key = p_key), p_default)
$$;

-- 3. Tables -------------------------------------------------------------------------------
-- The tables the apps and operators read (CONTRACT §2-3). On the old database they exist
-- with the columns of CLIENTS.md §1 and are kept, rows and all.


create table if not exists public.models (
    id uuid primary key default gen_random_uuid(),
    name text not null unique,
    display_name text not null,
    replicate_id text not null unique,
    version text,
    description text,
    default_width integer not null default 1024 check (default_width > 0),
    default_height integer not null default 1024 check (default_height > 0),
    default_steps integer not null default 30 check (default_steps > 0),
    default_guidance_scale numeric not null default 7.5 check (default_guidance_scale >= 0),
    default_strength numeric check (default_strength between 0 and 1),
    min_width integer not null default 256 check (min_width > 0),
    max_width integer not null default 2048,
    min_height integer not null default 256 check (min_height > 0),
    max_height integer not null default 2048,
    max_steps integer not null default 50 check (max_steps > 0),
    supports_img2img boolean not null default false,
    supports_negative_prompt boolean not null default false,
    supports_seed boolean not null default true,
    supported_aspect_ratios jsonb,
    strength_min numeric not null default 0 check (strength_min >= 0),
    strength_max numeric not null default 1 check (strength_max <= 1),
    estimated_time_seconds integer,
    cost_per_generation numeric,
    is_active boolean not null default true,
    is_default boolean not null default false,
    sort_order integer not null default 0,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    check (min_width <= max_width and min_height <= max_height),
    check (strength_min <= strength_max)
);

-- Operators' rows on the old database may share a replicate_id (nothing made it unique
-- there); only one may ever be the default, as the mobile app reads it with .single().
do $one_default$
declare
    v_defaults text;
begin
    select string_agg(name, ', ' order by name) into v_defaults
    from public.models where is_default having count(*) > 1;
    if v_defaults is not null then
        raise exception 'models has more than one is_default row (%): the mobile app reads '
                        'exactly one; clear is_default on all but one, then migrate again',
                        v_defaults;
    end if;
end
$one_default$;
create unique index if not exists models_one_default_idx on public.models (is_default)
    where is_default;

create table if not exists public.image_generations (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references auth.users (id) on delete cascade,
    prompt text not null check (length(prompt) between 1 and 4000),
    negative_prompt text,
    model text,
    model_id uuid references public.models (id) on delete set null,
    style text,
    width integer check (width > 0),
    height integer check (height > 0),
    steps integer check (steps > 0),
    guidance_scale numeric check (guidance_scale >= 0),
    seed bigint,
    source_image_url text,
    generation_strength numeric check (generation_strength between 0 and 1),
    status text not null default 'pending'
        check (status in ('pending', 'queued', 'processing', 'downloading', 'completed', 'failed')),
    error_message text,
    generation_time_seconds numeric check (generation_time_seconds >= 0),
    replicate_prediction_id text,
    retry_count integer not null default 0 check (retry_count >= 0),
    priority integer not null default 0,
    batch_id uuid,
    batch_index integer,
    multi_group_id uuid,
    multi_index integer,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    completed_at timestamptz,
    prediction_requested_at timestamptz
);
-- The old table has neither (CLIENTS.md §1): added, with now() for the old rows.
alter table public.image_generations
    add column if not exists updated_at timestamptz not null default now();
-- Set before a prediction is created, cleared when its id is saved (section 6).
alter table public.image_generations
    add column if not exists prediction_requested_at timestamptz;
create index if not exists image_generations_user_created_idx
    on public.image_generations (user_id, created_at desc);
create index if not exists image_generations_active_idx
    on public.image_generations (status, updated_at)
    where status in ('pending', 'queued', 'processing', 'downloading');

create table if not exists public.images (
    id uuid primary key default gen_random_uuid(),
    generation_id uuid unique references public.image_generations (id) on delete cascade,
    user_id uuid not null references auth.users (id) on delete cascade,
    filename text not null,
    storage_path text not null,
    public_url text not null,
    file_size bigint check (file_size > 0),
    width integer check (width > 0),
    height integer check (height > 0),
    format text check (format in ('webp', 'png', 'jpeg', 'svg')),
    prompt text,
    negative_prompt text,
    model text,
    style text,
    is_public boolean not null default false,
    is_favorite boolean not null default false,
    rating integer check (rating between 1 and 5),
    blurhash text,
    created_at timestamptz not null default now(),
    archived_at timestamptz,
    download_count integer default 0,
    source_image_id uuid references public.images (id) on delete set null,
    generation_strength numeric
);
create index if not exists images_user_created_idx on public.images (user_id, created_at desc);

create table if not exists public.job_queue (
    id uuid primary key default gen_random_uuid(),
    job_type text not null,
    payload jsonb not null default '{}'::jsonb,
    status text not null default 'pending'
        check (status in ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    attempts integer not null default 0 check (attempts >= 0),
    max_attempts integer not null default 3 check (max_attempts > 0),
    priority integer not null default 0,
    scheduled_at timestamptz not null default now(),
    started_at timestamptz,
    completed_at timestamptz,
    error_message text,
    error_details jsonb,
    created_by uuid,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
-- The old table allowed four job types by name; any well-formed type is ours to add.
alter table public.job_queue drop constraint if exists job_queue_job_type_check;
alter table public.job_queue add constraint job_queue_job_type_check
    check (job_type ~ '^[a-z][a-z0-9-]{0,62}$');
-- Old rows may carry a null priority (the claim orders by it) and no payload default.
update public.job_queue set priority = 0 where priority is null;
alter table public.job_queue alter column priority set default 0,
    alter column priority set not null,
    alter column payload set default '{}'::jsonb;
-- What a reliable queue adds (DESIGN.md): the lease, the result and a dedupe key.
alter table public.job_queue add column if not exists locked_by text;
alter table public.job_queue add column if not exists locked_until timestamptz;
alter table public.job_queue add column if not exists result jsonb;
alter table public.job_queue add column if not exists dedupe_key text;

-- Jobs the old worker holds have no lease: they get the old platform's own ten minutes
-- from their start, after which claim_jobs takes them over like any expired lease.
update public.job_queue
set locked_until = coalesce(started_at, updated_at) + interval '10 minutes'
where status = 'processing' and locked_until is null;

-- The claim path: due pending jobs by priority then age, and expired leases.
create index if not exists job_queue_pending_idx
    on public.job_queue (priority desc, created_at)
    where status = 'pending';
create index if not exists job_queue_lease_idx
    on public.job_queue (locked_until)
    where status = 'processing';
create unique index if not exists job_queue_dedupe_idx
    on public.job_queue (dedupe_key)
    where dedupe_key is not null and status in ('pending', 'processing');
create index if not exists job_queue_created_by_idx
    on public.job_queue (created_by, created_at desc)
    where created_by is not null;
create index if not exists job_queue_finished_idx
    on public.job_queue (completed_at)
    where status in ('completed', 'failed', 'cancelled');
create index if not exists job_queue_generation_idx
    on public.job_queue (((payload ->> 'generation_id')))
    where payload ? 'generation_id';

-- 4. Models -------------------------------------------------------------------------------
-- The model families the service offers (CONTRACT §4), one row each, with the defaults and
-- limits generation_parameters enforces. The operators' rows are theirs: a family whose
-- replicate_id (or name) is already present is not added, no existing row is changed, and
-- a seeded row becomes the default only where no row is. Models sized by aspect ratio
-- render 1024 px on the short side, so no width:height beyond 8:1 is accepted: the
-- ultra's smallest side is 2752 / 8 = 344.

insert into public.models (
    name, display_name, replicate_id, version, description,
    default_width, default_height, default_steps, default_guidance_scale, default_strength,
    min_width, max_width, min_height, max_height, max_steps,
    supports_img2img, supports_negative_prompt, supports_seed, supported_aspect_ratios,
    estimated_time_seconds, cost_per_generation, is_default, sort_order
)
select
    name, display_name, replicate_id, version, description,
    default_width, default_height, default_steps, default_guidance_scale, default_strength,
    min_width, max_width, min_height, max_height, max_steps,
    supports_img2img, supports_negative_prompt, supports_seed, supported_aspect_ratios::jsonb,
    estimated_time_seconds, cost_per_generation,
    is_default and not exists (select from public.models where is_default), sort_order
from (values
    ('flux-schnell', 'FLUX Schnell', 'black-forest-labs/flux-schnell', null,
     'Fastest FLUX model, four steps.',
     1024, 1024, 4, 0, null, 256, 1440, 256, 1440, 4,
     false, false, true,
     '["1:1","16:9","21:9","3:2","2:3","4:5","5:4","3:4","4:3","9:16","9:21"]',
     3, 0.003, true, 10),
    ('flux-dev', 'FLUX Dev', 'black-forest-labs/flux-dev', null,
     'High quality FLUX with image-to-image.',
     1024, 1024, 28, 3, 0.8, 256, 1440, 256, 1440, 50,
     true, false, true, null, 30, 0.025, false, 20),
    ('flux-krea-dev', 'FLUX Krea Dev', 'black-forest-labs/flux-krea-dev', null,
     'FLUX tuned for photographic realism.',
     1024, 1024, 28, 4.5, 0.8, 256, 1440, 256, 1440, 50,
     true, false, true, null, 30, 0.025, false, 25),
    ('flux-1.1-pro', 'FLUX 1.1 Pro', 'black-forest-labs/flux-1.1-pro', null,
     'Best FLUX quality.',
     1024, 1024, 25, 3, null, 256, 1440, 256, 1440, 50,
     false, false, true, null, 10, 0.04, false, 30),
    ('flux-1.1-pro-ultra', 'FLUX 1.1 Pro Ultra', 'black-forest-labs/flux-1.1-pro-ultra', null,
     'FLUX at up to four megapixels.',
     1024, 1024, 25, 3, null, 344, 2752, 344, 2752, 50,
     false, false, true, null, 15, 0.06, false, 35),
    ('ideogram-v3-turbo', 'Ideogram V3 Turbo', 'ideogram-ai/ideogram-v3-turbo', null,
     'Strong at text in images.',
     1024, 1024, 30, 7.5, null, 256, 2048, 256, 2048, 50,
     false, false, true, null, 10, 0.03, false, 40),
    ('imagen-4', 'Imagen 4', 'google/imagen-4', null,
     'Google''s photorealistic model.',
     1024, 1024, 30, 7.5, null, 256, 2048, 256, 2048, 50,
     false, false, false, null, 15, 0.04, false, 50),
    ('sdxl-lightning', 'SDXL Lightning', 'bytedance/sdxl-lightning-4step',
     '5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637',
     'SDXL in four steps.',
     1024, 1024, 4, 0, 0.8, 256, 1280, 256, 1280, 4,
     true, false, true, null, 3, 0.002, false, 60),
    ('sdxl', 'Stable Diffusion XL', 'stability-ai/sdxl',
     '39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b',
     'The classic SDXL with refiner.',
     1024, 1024, 30, 7.5, 0.8, 256, 1536, 256, 1536, 100,
     true, true, true, null, 25, 0.01, false, 70),
    ('seedream-4', 'Seedream 4', 'bytedance/seedream-4', null,
     'ByteDance''s model up to 4K, with image editing.',
     2048, 2048, 30, 7.5, 0.8, 1024, 4096, 1024, 4096, 50,
     true, false, true, null, 20, 0.03, false, 80),
    ('seedream-3', 'Seedream 3', 'bytedance/seedream-3', null,
     'ByteDance''s text-to-image model.',
     1024, 1024, 30, 2.5, null, 512, 2048, 512, 2048, 50,
     false, false, true, null, 15, 0.03, false, 85),
    ('recraft-v3', 'Recraft V3', 'recraft-ai/recraft-v3', null,
     'Realistic images with styles.',
     1024, 1024, 30, 7.5, null, 1024, 2048, 1024, 2048, 50,
     false, false, false, null, 10, 0.04, false, 90),
    ('recraft-v3-svg', 'Recraft V3 SVG', 'recraft-ai/recraft-v3-svg', null,
     'Vector illustrations as SVG.',
     1024, 1024, 30, 7.5, null, 1024, 2048, 1024, 2048, 50,
     false, false, true, null, 15, 0.08, false, 95),
    ('stable-diffusion-3.5-large', 'Stable Diffusion 3.5 Large',
     'stability-ai/stable-diffusion-3.5-large', null,
     'Stability''s large SD 3.5.',
     1024, 1024, 35, 4.5, null, 256, 2048, 256, 2048, 50,
     false, false, true, null, 20, 0.065, false, 100),
    ('stable-diffusion-3.5-medium', 'Stable Diffusion 3.5 Medium',
     'stability-ai/stable-diffusion-3.5-medium', null,
     'Stability''s medium SD 3.5.',
     1024, 1024, 40, 5, null, 256, 2048, 256, 2048, 50,
     false, false, true, null, 15, 0.035, false, 105),
    ('qwen-image', 'Qwen Image', 'qwen/qwen-image', null,
     'Alibaba''s model, strong at text rendering.',
     1024, 1024, 30, 3, null, 256, 2048, 256, 2048, 50,
     false, false, true, null, 15, 0.025, false, 110),
    ('playground-v2.5', 'Playground v2.5', 'playgroundai/playground-v2.5-1024px-aesthetic',
     'a45f82a1382bed5c7aeb861dac7c7d191b0fdf74d8d57c4a0e6ed7d4d0bf7d24',
     'Aesthetic SDXL-class model (generic input family).',
     1024, 1024, 25, 3, null, 256, 1536, 256, 1536, 50,
     false, true, true, null, 15, 0.01, false, 120)
) as seed (
    name, display_name, replicate_id, version, description,
    default_width, default_height, default_steps, default_guidance_scale, default_strength,
    min_width, max_width, min_height, max_height, max_steps,
    supports_img2img, supports_negative_prompt, supports_seed, supported_aspect_ratios,
    estimated_time_seconds, cost_per_generation, is_default, sort_order
)
where not exists (select from public.models m
                  where m.replicate_id = seed.replicate_id or m.name = seed.name);

-- The web app sent models.id as model_id and the old start-generation queued it as it
-- came; the worker needs the Replicate id.
update public.job_queue j
set payload = j.payload || jsonb_build_object('model_id', m.replicate_id)
from public.models m
where j.status in ('pending', 'processing') and j.payload ->> 'model_id' = m.id::text;

-- 5. The queue ----------------------------------------------------------------------------
-- Enqueue, claim (with leases), heartbeat, complete (with fencing and backoff), release
-- and cancel. Each state change is one function, one transaction.

-- The old platform's signatures, replaced by ones with extra defaulted arguments; both
-- existing would make calls with the original arguments ambiguous.
drop function if exists public.enqueue_job(text, jsonb, integer, timestamptz, integer);
drop function if exists public.claim_next_job(text[]);
drop function if exists public.complete_job(uuid, text, jsonb);

create or replace function public.enqueue_job(
    p_job_type text,
    p_payload jsonb default '{}'::jsonb,
    p_priority integer default 0,
    p_scheduled_at timestamptz default now(),
    p_max_attempts integer default 3,
    p_created_by uuid default null,
    p_dedupe_key text default null
) returns uuid
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_id uuid;
begin
    loop
        insert into job_queue (job_type, payload, priority, scheduled_at, max_attempts,
                               created_by, dedupe_key)
        values (p_job_type, coalesce(p_payload, '{}'::jsonb), coalesce(p_priority, 0),
                coalesce(p_scheduled_at, now()), coalesce(p_max_attempts, 3), p_created_by,
                p_dedupe_key)
        on conflict (dedupe_key) where dedupe_key is not null
                                   and status in ('pending', 'processing')
        do nothing
        returning id into v_id;

        if v_id is not null then
            -- Wakes listening workers at once; delivered when this transaction commits.
            perform pg_notify('job_queue', p_job_type);
            return v_id;
        end if;

        -- An active job holds this key: hand back that one instead of a duplicate.
        select id into v_id
        from job_queue
        where dedupe_key = p_dedupe_key and status in ('pending', 'processing');
        if v_id is not null then
            return v_id;
        end if;
        -- It finished between the two statements: try the insert again.
    end loop;
end
$$;

create or replace function public.claim_jobs(
    p_worker_id text,
    p_limit integer default 1,
    p_job_types text[] default null,
    p_lease_seconds integer default 300
) returns setof public.job_queue
language sql
security definer
set search_path = public, pg_temp
as $$
    with exhausted as (
        -- A lease that ran out on the final attempt: the job fails (and with it, by the
        -- rule of section 8, its generation) instead of running forever a job that keeps
        -- killing its workers.
        update job_queue
        set status = 'failed', completed_at = now(), updated_at = now(),
            error_message = 'Image generation failed: the worker stopped responding '
                            'during the final attempt. Please try again.',
            locked_by = null, locked_until = null
        where status = 'processing' and locked_until < now() and attempts >= max_attempts
          and (p_job_types is null or job_type = any (p_job_types))
    ),
    due as (
        select id, priority, created_at
        from job_queue
        where status = 'pending'
          and scheduled_at <= now()
          and (p_job_types is null or job_type = any (p_job_types))
        order by priority desc, created_at
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    expired as (
        -- A lease that ran out means its worker vanished: the job is taken over.
        select id, priority, created_at
        from job_queue
        where status = 'processing'
          and locked_until < now()
          and attempts < max_attempts
          and (p_job_types is null or job_type = any (p_job_types))
        order by locked_until
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    chosen as (
        select id from (select * from due union all select * from expired) candidates
        order by priority desc, created_at
        limit coalesce(p_limit, 1)
    )
    update job_queue j
    set status = 'processing',
        attempts = j.attempts + 1,
        locked_by = p_worker_id,
        locked_until = now() + make_interval(secs => coalesce(p_lease_seconds, 300)),
        started_at = now(),
        updated_at = now()
    -- Not a join: planned without knowing p_limit, a join hashes the whole table (history
    -- included) on every claim; `= any (array)` is a primary-key lookup per chosen job.
    where j.id = any (array(select id from chosen))
    returning j.*
$$;

-- The original function, kept for the SQL editor and old callers: one job, 10 minute lease.
create or replace function public.claim_next_job(p_job_types text[] default null)
returns setof public.job_queue
language sql
security definer
set search_path = public, pg_temp
as $$
    select * from claim_jobs('sql:' || pg_backend_pid(), 1, p_job_types, 600)
$$;

create or replace function public.heartbeat_jobs(
    p_worker_id text,
    p_job_ids uuid[],
    p_lease_seconds integer default 300
) returns setof uuid
language sql
security definer
set search_path = public, pg_temp
as $$
    -- Returns the jobs this worker still holds; any other id's lease was lost. Rows are
    -- locked in id order, as complete_jobs locks them, so the two cannot deadlock.
    with held as (
        select id
        from job_queue
        where id = any (p_job_ids)
          and status = 'processing'
          and locked_by = p_worker_id
        order by id
        for update
    )
    update job_queue j
    set locked_until = now() + make_interval(secs => coalesce(p_lease_seconds, 300)),
        updated_at = now()
    from held
    where j.id = held.id
    returning j.id
$$;

create or replace function public.complete_job(
    p_job_id uuid,
    p_error_message text default null,
    p_error_details jsonb default null,
    p_result jsonb default null,
    p_worker_id text default null,
    p_retryable boolean default true
) returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_job job_queue;
begin
    select * into v_job from job_queue where id = p_job_id for update;
    if not found or v_job.status <> 'processing' then
        return false;
    end if;
    -- Fencing: a worker whose lease was taken over no longer owns the job.
    if p_worker_id is not null and v_job.locked_by is distinct from p_worker_id then
        return false;
    end if;

    if p_error_message is null then
        update job_queue
        set status = 'completed', completed_at = now(), updated_at = now(), result = p_result,
            error_message = null, error_details = null, locked_by = null, locked_until = null
        where id = p_job_id;
    elsif coalesce(p_retryable, true) and v_job.attempts < v_job.max_attempts then
        -- Backoff 2 s, 4 s, 8 s ... with +-10 % jitter so retries do not arrive in step.
        update job_queue
        set status = 'pending',
            scheduled_at = now() + make_interval(
                secs => power(2, v_job.attempts) * (0.9 + random() * 0.2)),
            error_message = p_error_message, error_details = p_error_details,
            locked_by = null, locked_until = null, updated_at = now()
        where id = p_job_id;
    else
        update job_queue
        set status = 'failed', completed_at = now(), updated_at = now(),
            error_message = p_error_message, error_details = p_error_details,
            locked_by = null, locked_until = null
        where id = p_job_id;
    end if;
    return true;
end
$$;

-- Completes many successful jobs of one worker in one transaction: short jobs finishing
-- together share one commit instead of paying one each. Fencing as in complete_job;
-- returns the ids it completed (a job whose lease was lost is left alone).
create or replace function public.complete_jobs(
    p_worker_id text,
    p_job_ids uuid[],
    p_results jsonb[] default null
) returns setof uuid
language sql
security definer
set search_path = public, pg_temp
as $$
    with held as (
        select id
        from job_queue
        where id = any (p_job_ids)
          and status = 'processing'
          and locked_by = p_worker_id
        order by id
        for update
    )
    update job_queue j
    set status = 'completed', completed_at = now(), updated_at = now(),
        result = p_results[array_position(p_job_ids, j.id)],
        error_message = null, error_details = null, locked_by = null, locked_until = null
    from held
    where j.id = held.id
    returning j.id
$$;

-- Hands jobs back untouched (graceful shutdown): the attempt does not count.
create or replace function public.release_jobs(p_worker_id text, p_job_ids uuid[])
returns integer
language sql
security definer
set search_path = public, pg_temp
as $$
    with released as (
        update job_queue
        set status = 'pending', attempts = greatest(attempts - 1, 0), scheduled_at = now(),
            locked_by = null, locked_until = null, updated_at = now()
        where id = any (p_job_ids) and status = 'processing' and locked_by = p_worker_id
        returning id
    )
    select count(*)::integer from released
$$;

create or replace function public.cancel_job(p_job_id uuid, p_reason text default 'Cancelled')
returns boolean
language sql
security definer
set search_path = public, pg_temp
as $$
    with cancelled as (
        update job_queue
        set status = 'cancelled', completed_at = now(), updated_at = now(),
            error_message = p_reason, locked_by = null, locked_until = null
        where id = p_job_id and status in ('pending', 'processing')
        returning id
    )
    select exists (select from cancelled)
$$;

-- 6. Generations --------------------------------------------------------------------------
-- A generation's life, each step one transaction: start (row + job), begin, record the
-- Replicate prediction, hand over to the download, finish (image + completed), fail and
-- cancel (by its owner). Then what the HTTP service reads besides.

-- A request's parameters, checked against its model's limits and completed with the
-- model's defaults: what a generate-image job carries. Raises 22023 naming the field.
-- start_generation stores this; the synchronous endpoints run it without a row.
create or replace function public.generation_parameters(
    p_prompt text,
    p_model_id text,
    p_model_version text default null,
    p_width integer default null,
    p_height integer default null,
    p_num_inference_steps integer default null,
    p_guidance_scale numeric default null,
    p_seed bigint default null,
    p_negative_prompt text default null,
    p_source_image_url text default null,
    p_strength numeric default null,
    p_style text default null
) returns jsonb
language plpgsql
stable
security definer
set search_path = public, pg_temp
as $$
declare
    m models;
    v_width integer;
    v_height integer;
    v_steps integer;
    v_guidance numeric;
    v_strength numeric;
begin
    -- Any whitespace, not only spaces (btrim's default), makes an empty prompt.
    if p_prompt is null or p_prompt !~ '\S' then
        perform imagegen.invalid('prompt', 'prompt is required');
    end if;
    if length(p_prompt) > 4000 then
        perform imagegen.invalid('prompt', 'prompt must be at most 4000 characters');
    end if;
    if p_negative_prompt is not null and length(p_negative_prompt) > 4000 then
        perform imagegen.invalid('negative_prompt', 'negative_prompt must be at most 4000 characters');
    end if;
    if p_style is not null and length(p_style) > 100 then
        perform imagegen.invalid('style', 'style must be at most 100 characters');
    end if;
    if p_model_id is null or length(btrim(p_model_id)) = 0 then
        perform imagegen.invalid('model_id', 'model_id is required');
    end if;

    -- The row's id (the web app sends models.id) or its Replicate id; operators' rows may
    -- share a replicate_id, so the active, default, first-sorted one wins.
    select * into m
    from models
    where id::text = lower(p_model_id) or replicate_id = p_model_id
    order by id::text = lower(p_model_id) desc, is_active desc nulls last,
             is_default desc nulls last, sort_order nulls last, created_at
    limit 1;
    if not found then
        perform imagegen.invalid('model_id', format('Unknown model: %s', p_model_id));
    end if;
    if not coalesce(m.is_active, true) then
        perform imagegen.invalid('model_id', format('Model %s is not available', p_model_id));
    end if;
    -- A version names the exact Replicate model that runs (and its price): only the
    -- model's own.
    if p_model_version is not null and p_model_version is distinct from m.version then
        perform imagegen.invalid('model_version',
            format('model_version must be empty or %s''s own version', m.name));
    end if;

    -- The operators' rows may leave limits empty: CONTRACT §1's defaults stand in.
    m.min_width := coalesce(m.min_width, 256);
    m.max_width := coalesce(m.max_width, 2048);
    m.min_height := coalesce(m.min_height, 256);
    m.max_height := coalesce(m.max_height, 2048);
    m.max_steps := coalesce(m.max_steps, 50);
    m.strength_min := coalesce(m.strength_min, 0);
    m.strength_max := coalesce(m.strength_max, 1);
    v_width := coalesce(p_width, m.default_width, 1024);
    v_height := coalesce(p_height, m.default_height, 1024);
    v_steps := coalesce(p_num_inference_steps, m.default_steps, 30);
    v_guidance := coalesce(p_guidance_scale, m.default_guidance_scale, 7.5);

    if v_width not between m.min_width and m.max_width then
        perform imagegen.invalid('width', format('width must be between %s and %s for %s',
                                         m.min_width, m.max_width, m.name));
    end if;
    if v_height not between m.min_height and m.max_height then
        perform imagegen.invalid('height', format('height must be between %s and %s for %s',
                                          m.min_height, m.max_height, m.name));
    end if;
    if v_steps not between 1 and m.max_steps then
        perform imagegen.invalid('num_inference_steps',
                         format('num_inference_steps must be between 1 and %s for %s',
                                m.max_steps, m.name));
    end if;
    if v_guidance not between 0 and 50 then
        perform imagegen.invalid('guidance_scale', 'guidance_scale must be between 0 and 50');
    end if;
    if p_seed is not null and p_seed not between 0 and 4294967295 then
        perform imagegen.invalid('seed', 'seed must be between 0 and 4294967295');
    end if;

    if p_source_image_url is not null then
        if not coalesce(m.supports_img2img, false) then
            perform imagegen.invalid('source_image_url',
                             format('%s does not support image-to-image', m.name));
        end if;
        if p_source_image_url !~* '^https?://[^\s]+$' or length(p_source_image_url) > 2048 then
            perform imagegen.invalid('source_image_url', 'source_image_url must be an http(s) URL');
        end if;
        v_strength := coalesce(p_strength, m.default_strength, 0.8);
        if v_strength not between m.strength_min and m.strength_max then
            perform imagegen.invalid('strength', format('strength must be between %s and %s for %s',
                                                m.strength_min, m.strength_max, m.name));
        end if;
    elsif p_strength is not null then
        perform imagegen.invalid('strength', 'strength needs a source_image_url');
    end if;

    return jsonb_build_object(
        'prompt', p_prompt,
        'negative_prompt', p_negative_prompt,
        'model_id', m.replicate_id,
        'model_name', m.name,
        'model_row_id', m.id,
        'model_version', m.version,
        'style', p_style,
        'width', v_width,
        'height', v_height,
        'num_inference_steps', v_steps,
        'guidance_scale', v_guidance,
        'seed', p_seed,
        'source_image_url', p_source_image_url,
        'strength', v_strength
    );
end
$$;

create or replace function public.start_generation(
    p_user_id uuid,
    p_prompt text,
    p_model_id text,
    p_model_version text default null,
    p_width integer default null,
    p_height integer default null,
    p_num_inference_steps integer default null,
    p_guidance_scale numeric default null,
    p_seed bigint default null,
    p_negative_prompt text default null,
    p_source_image_url text default null,
    p_strength numeric default null,
    p_style text default null,
    p_priority integer default 0
) returns table (generation_id uuid, job_id uuid)
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    p jsonb;
    v_generation_id uuid;
    v_job_id uuid;
begin
    if p_user_id is null or not exists (select from auth.users where id = p_user_id) then
        perform imagegen.invalid('user_id', 'Unknown user');
    end if;
    p := generation_parameters(
        p_prompt, p_model_id, p_model_version, p_width, p_height, p_num_inference_steps,
        p_guidance_scale, p_seed, p_negative_prompt, p_source_image_url, p_strength, p_style
    );
    -- Too much active work (this user's, or everyone's): refused with nothing written.
    perform imagegen.admit_generation(p_user_id);  -- section 7

    insert into image_generations (
        user_id, prompt, negative_prompt, model, model_id, style, width, height, steps,
        guidance_scale, seed, source_image_url, generation_strength, status, priority
    )
    values (
        p_user_id, p_prompt, p_negative_prompt, p ->> 'model_name',
        (p ->> 'model_row_id')::uuid, p_style,
        (p ->> 'width')::integer, (p ->> 'height')::integer,
        (p ->> 'num_inference_steps')::integer, (p ->> 'guidance_scale')::numeric, p_seed,
        p_source_image_url, (p ->> 'strength')::numeric, 'queued', coalesce(p_priority, 0)
    )
    returning id into v_generation_id;

    v_job_id := enqueue_job(
        p_job_type => 'generate-image',
        p_payload => p - 'model_name' - 'model_row_id' - 'style'
            || jsonb_build_object('generation_id', v_generation_id, 'user_id', p_user_id),
        p_priority => coalesce(p_priority, 0),
        p_created_by => p_user_id,
        p_dedupe_key => 'generate-image:' || v_generation_id
    );

    return query select v_generation_id, v_job_id;
end
$$;

-- The job's generation, when the job is still held by this worker.
create or replace function imagegen.held_generation(p_job_id uuid, p_worker_id text)
returns uuid
language sql
stable
set search_path = public, pg_temp
as $$
    select (payload ->> 'generation_id')::uuid
    from job_queue
    where id = p_job_id
      and status = 'processing'
      and (p_worker_id is null or locked_by = p_worker_id)
$$;

-- Start (or resume) work on the generation: returns it, with any saved prediction id,
-- or nothing when the job is no longer this worker's or the generation has ended.
create or replace function public.begin_generation(p_job_id uuid, p_worker_id text)
returns setof public.image_generations
language sql
security definer
set search_path = public, pg_temp
as $$
    update image_generations g
    set status = 'processing',
        retry_count = greatest(j.attempts - 1, 0),
        updated_at = now()
    from job_queue j
    where j.id = p_job_id
      and j.status = 'processing'
      and (p_worker_id is null or j.locked_by = p_worker_id)
      and g.id = (j.payload ->> 'generation_id')::uuid
      and g.status in ('pending', 'queued', 'processing')
    returning g.*
$$;

-- Never two predictions for one generation, even when a worker dies (kill -9) between
-- Replicate creating a prediction and our saving its id. Before creating, the worker
-- records its intent; a retry that finds an intent but no saved id looks the prediction
-- up in Replicate's list (same input, created since the intent) and adopts it.
-- One prediction belongs to one generation: two generations with identical input cannot
-- both adopt the same orphan.
create unique index if not exists image_generations_replicate_prediction_id_key
    on public.image_generations (replicate_prediction_id)
    where replicate_prediction_id is not null;

-- About to create a prediction: returns the earliest intent not yet followed by a saved
-- id (a retry looks for predictions from then on), or null when the job is no longer this
-- worker's, in which case nothing may be created.
create or replace function public.request_prediction(p_job_id uuid, p_worker_id text)
returns timestamptz
language sql
security definer
set search_path = public, pg_temp
as $$
    update image_generations
    set prediction_requested_at = coalesce(prediction_requested_at, now()), updated_at = now()
    where id = imagegen.held_generation(p_job_id, p_worker_id)
    returning prediction_requested_at
$$;

-- Saved before waiting on the prediction, so that a retry resumes it instead of paying
-- for a new one; saving fulfils the intent. False (not an error) when the job is no
-- longer this worker's or another generation already holds that prediction.
create or replace function public.record_prediction(
    p_job_id uuid,
    p_worker_id text,
    p_prediction_id text
) returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    update image_generations
    set replicate_prediction_id = p_prediction_id, prediction_requested_at = null,
        updated_at = now()
    where id = imagegen.held_generation(p_job_id, p_worker_id);
    return found;
exception when unique_violation then
    return false;
end
$$;

-- The prediction succeeded: complete the generate job, enqueue the download (priority 1:
-- the output URL expires) and mark the generation downloading, together.
create or replace function public.generation_downloading(
    p_job_id uuid,
    p_worker_id text,
    p_output_url text,
    p_format text,
    p_width integer,
    p_height integer,
    p_generation_time_seconds numeric
) returns uuid
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_job job_queue;
    v_result jsonb;
    v_download_id uuid;
begin
    select * into v_job from job_queue where id = p_job_id;
    v_result := jsonb_build_object('output_url', p_output_url, 'format', p_format,
                                   'width', p_width, 'height', p_height,
                                   'generation_time_seconds', p_generation_time_seconds);
    if not complete_job(p_job_id, p_result => v_result, p_worker_id => p_worker_id) then
        return null;
    end if;

    v_download_id := enqueue_job(
        p_job_type => 'download-image',
        p_payload => jsonb_build_object(
            'generation_id', v_job.payload -> 'generation_id',
            'user_id', v_job.payload -> 'user_id'
        ) || v_result,
        p_priority => 1,
        p_created_by => v_job.created_by,
        p_dedupe_key => 'download-image:' || (v_job.payload ->> 'generation_id')
    );

    update image_generations
    set status = 'downloading', generation_time_seconds = p_generation_time_seconds,
        updated_at = now()
    where id = (v_job.payload ->> 'generation_id')::uuid
      and status not in ('completed', 'failed');
    return v_download_id;
end
$$;

-- The file is stored: the images row, the generation completed and (for a job) the job
-- completed, together. With p_user_id (the legacy endpoint) the caller must own the
-- generation. Returns the images row, or nothing when the job was not this worker's.
create or replace function public.finish_generation(
    p_generation_id uuid,
    p_storage_path text,
    p_public_url text,
    p_file_size bigint,
    p_width integer,
    p_height integer,
    p_format text,
    p_job_id uuid default null,
    p_worker_id text default null,
    p_user_id uuid default null
) returns setof public.images
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    g image_generations;
begin
    select * into g from image_generations where id = p_generation_id for update;
    if not found or (p_user_id is not null and g.user_id <> p_user_id) then
        perform imagegen.invalid('generation_id', 'Unknown generation');
    end if;
    if p_job_id is not null and not complete_job(
        p_job_id,
        p_result => jsonb_build_object('storage_path', p_storage_path, 'public_url', p_public_url),
        p_worker_id => p_worker_id
    ) then
        return;
    end if;

    update image_generations
    set status = 'completed', error_message = null, completed_at = now(), updated_at = now(),
        width = p_width, height = p_height,
        generation_time_seconds = coalesce(
            generation_time_seconds, extract(epoch from now() - created_at))
    where id = p_generation_id;

    -- The generation row is locked: no other finish runs for it meanwhile. (No upsert: the
    -- old database's images.generation_id is not unique.)
    return query
    update images
    set storage_path = p_storage_path, public_url = p_public_url, file_size = p_file_size,
        width = p_width, height = p_height, format = p_format,
        filename = p_generation_id || '.' || p_format
    where generation_id = p_generation_id
    returning *;
    if not found then
        return query
        insert into images (generation_id, user_id, filename, storage_path, public_url,
                            file_size, width, height, format, prompt, negative_prompt, model,
                            style)
        values (p_generation_id, g.user_id, p_generation_id || '.' || p_format,
                p_storage_path, p_public_url, p_file_size, p_width, p_height, p_format,
                g.prompt, g.negative_prompt, g.model, g.style)
        returning *;
    end if;
end
$$;

-- A job attempt failed: the job retries (with backoff) or, with no attempts left or a
-- permanent error, fails, and then its generation fails too (section 8). Returns the
-- job's new status, or null when the job was not this worker's. Any job may be failed
-- this way, with or without a generation.
create or replace function public.fail_generation(
    p_job_id uuid,
    p_worker_id text,
    p_error_message text,
    p_error_details jsonb default null,
    p_retryable boolean default true
) returns text
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if not complete_job(p_job_id, p_error_message, p_error_details, null, p_worker_id,
                        p_retryable) then
        return null;
    end if;
    return (select status from job_queue where id = p_job_id);
end
$$;

-- The owner gives up on a generation that has not finished: it fails as cancelled and
-- its jobs stop.
create or replace function public.cancel_generation(p_generation_id uuid)
returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    update image_generations
    set status = 'failed', error_message = 'Cancelled by the user', updated_at = now()
    where id = p_generation_id
      and user_id = auth.uid()
      and status in ('pending', 'queued', 'processing', 'downloading');
    if not found then
        return false;
    end if;
    update job_queue
    set status = 'cancelled', completed_at = now(), updated_at = now(),
        error_message = 'Cancelled by the user', locked_by = null, locked_until = null
    where payload ->> 'generation_id' = p_generation_id::text
      and status in ('pending', 'processing');
    return true;
end
$$;

-- Wake workers, read queue depth for /metrics, read one generation for its owner (the
-- CLI follows a generation this way).
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


-- 7. Admission ---------------------------------------------------------------------------
-- Admission control: start_generation (section 6) refuses what the service should not
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

create or replace function imagegen.active_generations(p_user_id uuid) returns integer
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
create or replace function imagegen.queue_full(p_limit integer) returns boolean
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
create or replace function imagegen.admit_generation(p_user_id uuid) returns void
language plpgsql
security definer
set search_path = public, pg_temp
as $$
declare
    v_user_limit integer := imagegen.integer_setting('max_active_generations_per_user', 50);
    v_queue_limit integer := imagegen.integer_setting('max_queue_depth', 10000);
begin
    if v_queue_limit > 0 and imagegen.queue_full(v_queue_limit) then
        raise exception using errcode = 'PT503',
            message = 'The service is busy with too many waiting generations. '
                      'Please try again in a minute.';
    end if;
    if v_user_limit <= 0 then
        return;
    end if;
    -- At the limit already: refused at once, without queueing behind this user's lock
    -- (a burst is answered in parallel). Else take the lock and count again.
    if imagegen.active_generations(p_user_id) < v_user_limit then
        perform pg_advisory_xact_lock(hashtextextended('imagegen.admission:' || p_user_id, 0));
        if imagegen.active_generations(p_user_id) < v_user_limit then
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

-- 8. A generation fails when its job finally fails or is cancelled ------------------------
-- Written once, on the job: whoever ends it (complete_job with no attempts left or a
-- permanent error, an exhausted lease in claim_jobs, cancel_job, an operator's UPDATE), a
-- generation still active fails with the job's message, and admission stops counting it.

create or replace function imagegen.fail_generation_of_ended_job() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if new.payload ->> 'generation_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' then
        update image_generations
        set status = 'failed', updated_at = now(),
            error_message = coalesce(new.error_message, 'Image generation failed'),
            retry_count = greatest(new.attempts - 1, 0)
        where id = (new.payload ->> 'generation_id')::uuid
          and status in ('pending', 'queued', 'processing', 'downloading');
    end if;
    return null;
end
$$;

drop trigger if exists job_ended_fails_generation on public.job_queue;
create trigger job_ended_fails_generation
    after update of status on public.job_queue
    for each row
    when (new.status in ('failed', 'cancelled') and old.status not in ('failed', 'cancelled'))
    execute function imagegen.fail_generation_of_ended_job();

-- 9. Views --------------------------------------------------------------------------------
-- What operators and the apps read (CONTRACT §3). security_invoker: a signed-in user sees
-- only their own jobs through these, as RLS on job_queue allows; operators see all. The
-- old database has the first three with other columns, which `create or replace` cannot
-- change: they are dropped and made again (their grants are given in section 10).

drop view if exists public.queue_health, public.failed_jobs_recent, public.stuck_jobs,
    public.queue_throughput;

create view public.queue_health with (security_invoker = true) as
select
    job_type,
    status,
    count(*) as count,
    min(created_at) as oldest_job,
    max(created_at) as newest_job,
    avg(extract(epoch from completed_at - started_at))
        filter (where completed_at is not null and started_at is not null)
        as avg_duration_seconds,
    avg(attempts) as avg_attempts
from public.job_queue
group by job_type, status;

create view public.failed_jobs_recent with (security_invoker = true) as
select
    id, job_type, payload, attempts, max_attempts, error_message, error_details,
    created_by, created_at, started_at, completed_at, updated_at
from public.job_queue
where status = 'failed' and updated_at > now() - interval '24 hours'
order by updated_at desc;

create view public.stuck_jobs with (security_invoker = true) as
select
    id, job_type, payload, attempts, max_attempts, locked_by, locked_until,
    started_at, updated_at, created_by,
    round(extract(epoch from now() - started_at) / 60.0, 1) as minutes_processing,
    -- The old view's name for it, so the operators' old queries keep running.
    extract(epoch from now() - started_at) / 60 as minutes_stuck
from public.job_queue
where status = 'processing' and started_at < now() - interval '10 minutes'
order by started_at;

-- Throughput and latency over the last hour, per job type: what a dashboard plots.
create view public.queue_throughput with (security_invoker = true) as
select
    job_type,
    count(*) filter (where status = 'completed') as completed,
    count(*) filter (where status = 'failed') as failed,
    round(count(*) filter (where status = 'completed') / 60.0, 2) as completed_per_minute,
    percentile_cont(0.5) within group (order by extract(epoch from started_at - created_at))
        as p50_wait_seconds,
    percentile_cont(0.95) within group (order by extract(epoch from started_at - created_at))
        as p95_wait_seconds,
    percentile_cont(0.5) within group (order by extract(epoch from completed_at - started_at))
        as p50_run_seconds,
    percentile_cont(0.95) within group (order by extract(epoch from completed_at - started_at))
        as p95_run_seconds
from public.job_queue
where completed_at > now() - interval '1 hour'
  and status in ('completed', 'failed')
group by job_type;

-- 10. Row level security and table grants -------------------------------------------------
-- Users read their own rows (the apps read them directly); every write goes through the
-- SECURITY DEFINER functions, which only service_role may call (section 13), but for what
-- a signed-in user may do to their own rows. Grants are revoked first, so the old
-- database's are gone too.

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

-- The old platform's two policies on job_queue: the first is ours below, for the signed-in
-- role only; the second gave the service role nothing it lacks (it bypasses RLS).
drop policy if exists "Users can view their own jobs" on public.job_queue;
drop policy if exists "Service role has full access" on public.job_queue;
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

-- 11. Cron --------------------------------------------------------------------------------
-- The worker trigger: pg_cron job `process-jobs-worker` POSTs to
-- <worker url>/functions/v1/process-jobs with the worker secret as bearer token. URL and
-- secret are read when the job runs, from Supabase Vault where it exists, else from
-- imagegen.settings (section 2), so neither appears in cron.job.

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
    v_old record;
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
    -- The old platform's schedule (setup-cron-job.sql named it process-job-queue; any job
    -- that posts to process-jobs is one) goes, so two schedules never race for the queue.
    for v_old in
        execute $q$select jobid, jobname from cron.job
                   where jobname = 'process-job-queue'
                      or command like '%/functions/v1/process-jobs%'$q$
    loop
        execute 'select cron.unschedule($1)' using v_old.jobid;
        raise notice 'unscheduled cron job % (%), which also posted to process-jobs',
            v_old.jobid, v_old.jobname;
    end loop;
    execute 'select cron.schedule($1, $2, $3)' into v_job_id
        using 'process-jobs-worker', v_schedule, 'select public.invoke_worker()';
    execute 'select cron.schedule($1, $2, $3)'
        using 'imagegen-retention', '17 3 * * *', 'select public.prune_finished_jobs()';
    return v_job_id;
end
$$;

-- 12. Storage -----------------------------------------------------------------------------
-- On Supabase (the storage schema exists): the bucket the apps read (public, the four
-- image types, 50 MiB) and the policies they rely on: anyone reads, a signed-in user
-- deletes objects under their own `<user_id>/` prefix (the gallery's delete). A bucket
-- that exists already is left as its operators set it. On plain PostgreSQL: nothing.

do $storage$
begin
    if to_regclass('storage.buckets') is null or to_regclass('storage.objects') is null then
        return;
    end if;
    execute $sql$
        insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types)
        values ('generated-images', 'generated-images', true, 52428800,
                array['image/webp', 'image/png', 'image/jpeg', 'image/svg+xml'])
        on conflict (id) do nothing
    $sql$;
    execute $sql$
        drop policy if exists "Anyone reads generated images" on storage.objects
    $sql$;
    execute $sql$
        create policy "Anyone reads generated images" on storage.objects
            for select to public using (bucket_id = 'generated-images')
    $sql$;
    execute $sql$
        drop policy if exists "Owners delete their generated images" on storage.objects
    $sql$;
    execute $sql$
        create policy "Owners delete their generated images" on storage.objects
            for delete to authenticated
            using (bucket_id = 'generated-images'
                   and split_part(name, '/', 1) = (select auth.uid())::text)
    $sql$;
end
$storage$;

-- 13. Function grants: one idiom ----------------------------------------------------------
-- Every function this file created is private: nobody may call it (Supabase grants anon
-- and authenticated EXECUTE on new functions by default; PostgreSQL grants PUBLIC), the
-- service role may call those in public (what the service calls, through PostgREST or
-- directly), and a signed-in user exactly what is granted by name below (README, "API").
-- The old platform's functions that this file did not replace keep their grants.

do $grants$
declare
    f record;
begin
    for f in
        select p.oid::regprocedure as signature, n.nspname
        from pg_proc p
        join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in ('public', 'imagegen')
          and p.oid not in (select oid from baseline_functions_before)
    loop
        execute format('revoke all on function %s from public, anon, authenticated',
                       f.signature);
        if f.nspname = 'public' then
            execute format('grant execute on function %s to service_role', f.signature);
        end if;
    end loop;
end
$grants$;

-- What a signed-in user may call.
grant execute on function public.cancel_generation(uuid) to authenticated;

drop table pg_temp.baseline_functions_before;
