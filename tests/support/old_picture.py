"""The old Picture platform's database, as the service finds it on the live Supabase project.

Built from facts, not copied code (see the repository's README, "Deploying onto the
existing Picture project"): the columns of `image_generations`, `images`, `models`,
`batch_generations`, `user_rate_limits` and `profiles` as the apps' generated database
types list them (no `updated_at` on generations, `model_id` a uuid referencing `models`,
no unique `images.generation_id` nor `models.replicate_id`); the old queue migration's
objects with their old shapes (the four-type job check, `complete_job` returning void, the
three views with their old columns, the `updated_at` trigger, both RLS policies and its
grants, `enqueue_job` open to every signed-in user); what Supabase itself provides (its
roles and default privileges, the `auth` schema, the `supabase_realtime` publication) and,
with `storage=True`, a minimal `storage` schema.

The rows are written as the old functions wrote them: finished generations with images,
a queued generation whose job has `created_by` null and a uuid `model_id` (the web app's),
failed jobs, a job the old worker left `processing` half an hour ago, and the operators'
own models: one default, two rows sharing a `replicate_id`, limits left empty.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

SUPABASE = """
do $roles$
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
end
$roles$;

-- Supabase opens every new object in public to its API roles; grants are then taken away.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;

create schema auth;
grant usage on schema auth to anon, authenticated, service_role;
create table auth.users (
    id uuid primary key default gen_random_uuid(),
    email text,
    aud text default 'authenticated',
    role text default 'authenticated',
    raw_user_meta_data jsonb default '{}'::jsonb,
    created_at timestamptz default now(),
    updated_at timestamptz default now()
);
create function auth.jwt() returns jsonb language sql stable as $$
    select coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;
create function auth.uid() returns uuid language sql stable as $$
    select nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                           auth.jwt() ->> 'sub'), '')::uuid
$$;
create function auth.role() returns text language sql stable as $$
    select coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                    auth.jwt() ->> 'role')
$$;

create publication supabase_realtime;
"""

STORAGE = """
create schema storage;
grant usage on schema storage to anon, authenticated, service_role;
create table storage.buckets (
    id text primary key,
    name text not null unique,
    owner uuid,
    public boolean default false,
    file_size_limit bigint,
    allowed_mime_types text[],
    created_at timestamptz default now(),
    updated_at timestamptz default now()
);
create table storage.objects (
    id uuid primary key default gen_random_uuid(),
    bucket_id text references storage.buckets (id),
    name text,
    owner uuid,
    metadata jsonb,
    created_at timestamptz default now(),
    updated_at timestamptz default now(),
    unique (bucket_id, name)
);
alter table storage.objects enable row level security;
grant all on storage.buckets, storage.objects to anon, authenticated, service_role;
"""

# The apps' tables (their generated types; the DDL is ours).
TABLES = """
create table public.profiles (
    id uuid primary key references auth.users (id) on delete cascade,
    email text, username text, avatar_url text,
    created_at timestamptz default now(), updated_at timestamptz default now()
);

create table public.models (
    id uuid primary key default gen_random_uuid(),
    name text not null,
    display_name text not null,
    replicate_id text not null,
    version text,
    description text,
    default_width integer, default_height integer, default_steps integer,
    default_guidance_scale numeric, default_strength numeric,
    min_width integer, max_width integer, min_height integer, max_height integer,
    max_steps integer,
    supports_img2img boolean, supports_image_to_image boolean,
    supports_negative_prompt boolean, supports_seed boolean,
    supported_aspect_ratios jsonb,
    strength_min numeric, strength_max numeric,
    estimated_time_seconds integer, cost_per_generation numeric,
    is_active boolean default true, is_default boolean default false,
    sort_order integer,
    created_at timestamptz default now(), updated_at timestamptz default now()
);

create table public.batch_generations (
    id uuid primary key default gen_random_uuid(),
    user_id uuid references public.profiles (id) on delete cascade,
    name text,
    total_count integer not null,
    completed_count integer default 0, failed_count integer default 0,
    status text default 'pending',
    model_id text, model_version text,
    width integer, height integer, steps integer, guidance_scale numeric,
    is_multi_generation boolean default false, multi_count integer,
    created_at timestamptz default now(), completed_at timestamptz
);

create table public.image_generations (
    id uuid primary key default gen_random_uuid(),
    user_id uuid references public.profiles (id) on delete cascade,
    prompt text not null,
    negative_prompt text,
    model text,
    model_id uuid references public.models (id),
    style text,
    width integer, height integer, steps integer, guidance_scale numeric, seed bigint,
    source_image_url text, generation_strength numeric,
    status text default 'pending',
    error_message text,
    generation_time_seconds numeric,
    replicate_prediction_id text,
    retry_count integer default 0,
    priority integer default 0,
    batch_id uuid references public.batch_generations (id) on delete cascade,
    batch_index integer,
    multi_group_id uuid, multi_index integer,
    created_at timestamptz default now(),
    completed_at timestamptz
);

create table public.images (
    id uuid primary key default gen_random_uuid(),
    generation_id uuid references public.image_generations (id) on delete cascade,
    user_id uuid references public.profiles (id) on delete cascade,
    filename text not null,
    storage_path text not null,
    public_url text,
    file_size bigint, width integer, height integer, format text,
    prompt text not null, negative_prompt text, model text, style text,
    is_public boolean default false, is_favorite boolean default false,
    rating integer, blurhash text,
    archived_at timestamptz, download_count integer default 0,
    source_image_id uuid references public.images (id),
    generation_strength numeric,
    created_at timestamptz default now()
);

create table public.user_rate_limits (
    user_id uuid primary key references auth.users (id) on delete cascade,
    daily_generations_count integer default 0, daily_generations_limit integer default 100,
    daily_reset_at timestamptz, hourly_generations_count integer default 0,
    hourly_generations_limit integer default 20, hourly_reset_at timestamptz,
    last_generation_at timestamptz, max_batch_size integer default 10,
    max_concurrent_generations integer default 3,
    total_generations_all_time integer default 0, updated_at timestamptz default now()
);

alter table public.image_generations enable row level security;
alter table public.images enable row level security;
alter table public.models enable row level security;
create policy "Users can view own generations" on public.image_generations
    for select using (auth.uid() = user_id);
create policy "Users can view own images" on public.images for select using (auth.uid() = user_id);
create policy "Models are viewable by everyone" on public.models for select using (true);
"""

# The old queue migration's objects, with their old shapes and grants (our own bodies).
OLD_QUEUE = """
create table public.job_queue (
    id uuid primary key default gen_random_uuid(),
    job_type text not null check (job_type in ('generate-image', 'download-image',
                                               'process-webhook', 'cleanup-storage')),
    payload jsonb not null,
    status text not null default 'pending'
        check (status in ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    attempts integer not null default 0,
    max_attempts integer not null default 3,
    scheduled_at timestamptz not null default now(),
    started_at timestamptz,
    completed_at timestamptz,
    error_message text,
    error_details jsonb,
    created_by uuid references auth.users (id) on delete set null,
    priority integer default 0,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index idx_job_queue_status_scheduled on public.job_queue (status, scheduled_at)
    where status in ('pending', 'processing');
create index idx_job_queue_type_status on public.job_queue (job_type, status);
create index idx_job_queue_created_by on public.job_queue (created_by);
create index idx_job_queue_priority on public.job_queue (priority desc, created_at)
    where status = 'pending';

create function public.claim_next_job(p_job_types text[] default null)
returns setof public.job_queue language plpgsql as $$
declare
    v_id uuid;
begin
    select id into v_id from public.job_queue
    where status = 'pending' and scheduled_at <= now()
      and (p_job_types is null or job_type = any (p_job_types))
    order by priority desc, created_at limit 1 for update skip locked;
    if v_id is null then
        return;
    end if;
    update public.job_queue set status = 'processing', started_at = now() where id = v_id;
    return query select * from public.job_queue where id = v_id;
end
$$;

create function public.enqueue_job(p_job_type text, p_payload jsonb,
    p_priority integer default 0, p_scheduled_at timestamptz default now(),
    p_max_attempts integer default 3) returns uuid
language plpgsql security definer as $$
declare
    v_id uuid;
begin
    insert into public.job_queue (job_type, payload, priority, scheduled_at, max_attempts,
                                  created_by)
    values (p_job_type, p_payload, p_priority, p_scheduled_at, p_max_attempts, auth.uid())
    returning id into v_id;
    return v_id;
end
$$;

create function public.complete_job(p_job_id uuid, p_error_message text default null,
    p_error_details jsonb default null) returns void
language plpgsql as $$
begin
    update public.job_queue
    set status = case when p_error_message is null then 'completed'
                      when attempts < max_attempts then 'pending' else 'failed' end,
        error_message = p_error_message, error_details = p_error_details,
        completed_at = case when p_error_message is null or attempts >= max_attempts
                            then now() end
    where id = p_job_id;
end
$$;

create view public.queue_health as
select job_type, status, count(*) as count, min(created_at) as oldest_job,
       max(created_at) as newest_job,
       avg(extract(epoch from coalesce(completed_at, now()) - created_at))
           as avg_duration_seconds,
       avg(attempts) as avg_attempts
from public.job_queue group by job_type, status;

create view public.failed_jobs_recent as
select id, job_type, payload, attempts, error_message, created_at, completed_at
from public.job_queue
where status = 'failed' and created_at > now() - interval '24 hours'
order by created_at desc;

create view public.stuck_jobs as
select id, job_type, payload, started_at,
       extract(epoch from now() - started_at) / 60 as minutes_stuck
from public.job_queue
where status = 'processing' and started_at < now() - interval '10 minutes'
order by started_at;

create function public.update_updated_at_column() returns trigger language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end
$$;
create trigger update_job_queue_updated_at before update on public.job_queue
    for each row execute function public.update_updated_at_column();

alter table public.job_queue enable row level security;
create policy "Users can view their own jobs" on public.job_queue
    for select using (created_by = auth.uid());
create policy "Service role has full access" on public.job_queue
    for all using (auth.jwt() ->> 'role' = 'service_role');

grant select on public.job_queue, public.queue_health, public.failed_jobs_recent,
    public.stuck_jobs to authenticated;
grant execute on function public.enqueue_job(text, jsonb, integer, timestamptz, integer)
    to authenticated;
grant execute on function public.claim_next_job(text[]) to service_role;
grant execute on function public.complete_job(uuid, text, jsonb) to service_role;
"""


@dataclass
class OldPicture:
    """What the fixture wrote, for the tests to find again after the upgrade."""

    alice: uuid.UUID
    bob: uuid.UUID
    default_model: uuid.UUID
    flux_dev: uuid.UUID
    completed: list[uuid.UUID] = field(default_factory=list)
    queued_generation: uuid.UUID | None = None
    queued_job: uuid.UUID | None = None
    stuck_generation: uuid.UUID | None = None
    stuck_job: uuid.UUID | None = None
    failed_jobs: list[uuid.UUID] = field(default_factory=list)


def _one(conn: psycopg.Connection[Any], sql: str, *args: Any) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def build_old_picture(database_url: str, *, storage: bool = False) -> OldPicture:
    """Create the old database in an empty one and fill it as the old functions did."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(SUPABASE.encode())
        if storage:
            conn.execute(STORAGE.encode())
        conn.execute(TABLES.encode())
        conn.execute(OLD_QUEUE.encode())
        with conn.transaction():
            return _fill(conn)


def _fill(conn: psycopg.Connection[Any]) -> OldPicture:
    users = []
    for name in ("alice", "bob"):
        user = _one(
            conn, "insert into auth.users (email) values (%s) returning id", f"{name}@x.test"
        )
        conn.execute("insert into public.profiles (id, email) values (%s, %s)", (user, name))
        users.append(user)
    alice, bob = users

    # The operators' models: their own names and order, one default, flux-dev twice (an
    # older row kept inactive), limits partly empty, none of the seed's descriptions.
    default_model = _one(
        conn,
        "insert into public.models (name, display_name, replicate_id, default_width,"
        " default_height, default_steps, default_guidance_scale, max_steps, is_active,"
        " is_default, sort_order) values ('flux-schnell', 'Flux Schnell ⚡',"
        " 'black-forest-labs/flux-schnell', 1024, 1024, 4, 0, 4, true, true, 1) returning id",
    )
    flux_dev = _one(
        conn,
        "insert into public.models (name, display_name, replicate_id, version, default_steps,"
        " supports_img2img, is_active, sort_order) values ('flux-dev', 'Flux Dev',"
        " 'black-forest-labs/flux-dev', null, 28, true, true, 2) returning id",
    )
    conn.execute(
        "insert into public.models (name, display_name, replicate_id, is_active, sort_order)"
        " values ('flux-dev-2024', 'Flux Dev (old)', 'black-forest-labs/flux-dev', false, 9),"
        " ('sdxl-custom', 'SDXL', 'stability-ai/sdxl', true, 3)"
    )
    conn.execute(
        "update public.models set version ="
        " '39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b'"
        " where name = 'sdxl-custom'"
    )
    old = OldPicture(alice=alice, bob=bob, default_model=default_model, flux_dev=flux_dev)

    # Finished generations with their images (the legacy and the async path).
    for user, prompt in ((alice, "a red fox"), (alice, "a lighthouse"), (bob, "a cat")):
        generation = _one(
            conn,
            "insert into public.image_generations (user_id, prompt, model, model_id, width,"
            " height, steps, guidance_scale, status, generation_time_seconds,"
            " replicate_prediction_id, created_at, completed_at) values (%s, %s,"
            " 'flux-schnell', %s, 1024, 1024, 4, 0, 'completed', 3.2, %s,"
            " now() - interval '2 days', now() - interval '2 days') returning id",
            user,
            prompt,
            default_model,
            f"pred-{uuid.uuid4().hex[:12]}",
        )
        conn.execute(
            "insert into public.images (generation_id, user_id, filename, storage_path,"
            " public_url, file_size, width, height, format, prompt, model, is_favorite)"
            " values (%s, %s, %s || '.webp', %s || '/' || %s || '.webp',"
            " 'https://old.supabase.co/storage/v1/object/public/generated-images/' || %s"
            " || '/' || %s || '.webp', 51234, 1024, 1024, 'webp', %s, 'flux-schnell', true)",
            (
                generation,
                user,
                str(generation),
                str(user),
                str(generation),
                str(user),
                str(generation),
                prompt,
            ),
        )
        old.completed.append(generation)

    # The web app's start: a uuid model_id; the old start-generation left created_by null.
    old.queued_generation = _one(
        conn,
        "insert into public.image_generations (user_id, prompt, model, model_id, width, height,"
        " steps, guidance_scale, status, created_at) values (%s, 'a queued dragon',"
        " 'flux-schnell', %s, 1024, 768, 4, 0, 'queued', now() - interval '3 minutes')"
        " returning id",
        alice,
        default_model,
    )
    old.queued_job = _one(
        conn,
        "insert into public.job_queue (job_type, payload, priority, created_at)"
        " values ('generate-image', jsonb_build_object('generation_id', %s::text,"
        " 'user_id', %s::text, 'prompt', 'a queued dragon', 'model_id', %s::text,"
        " 'model_version', null, 'width', 1024, 'height', 768, 'num_inference_steps', 4,"
        " 'guidance_scale', 0), 0, now() - interval '3 minutes') returning id",
        old.queued_generation,
        alice,
        default_model,
    )

    # A job the old worker took 30 minutes ago and never finished (no lease, attempts 0).
    old.stuck_generation = _one(
        conn,
        "insert into public.image_generations (user_id, prompt, model, model_id, width, height,"
        " status, created_at) values (%s, 'a stuck robot', 'flux-schnell', %s, 1024, 1024,"
        " 'processing', now() - interval '31 minutes') returning id",
        bob,
        default_model,
    )
    old.stuck_job = _one(
        conn,
        "insert into public.job_queue (job_type, payload, status, started_at, created_at)"
        " values ('generate-image', jsonb_build_object('generation_id', %s::text, 'user_id',"
        " %s::text, 'prompt', 'a stuck robot', 'model_id', 'black-forest-labs/flux-schnell',"
        " 'model_version', null, 'width', 1024, 'height', 1024, 'num_inference_steps', 4,"
        " 'guidance_scale', 0), 'processing', now() - interval '30 minutes',"
        " now() - interval '31 minutes') returning id",
        old.stuck_generation,
        bob,
    )

    # Failed jobs: bob's generation that exhausted its attempts, and a failed download.
    failed_generation = _one(
        conn,
        "insert into public.image_generations (user_id, prompt, model, status, error_message,"
        " retry_count) values (%s, 'a forbidden prompt', 'flux-schnell', 'failed',"
        " 'NSFW content detected', 2) returning id",
        bob,
    )
    for job_type, payload in (
        ("generate-image", {"generation_id": str(failed_generation), "prompt": "forbidden"}),
        ("download-image", {"generation_id": str(old.completed[2]), "output_url": "https://x"}),
    ):
        old.failed_jobs.append(
            _one(
                conn,
                "insert into public.job_queue (job_type, payload, status, attempts,"
                " error_message, started_at, completed_at, created_at) values (%s, %s, 'failed',"
                " 3, 'Replicate API error: 422', now() - interval '1 hour',"
                " now() - interval '1 hour', now() - interval '2 hours') returning id",
                job_type,
                Jsonb(payload),
            )
        )
    # Finished jobs of the completed generations.
    conn.execute(
        "insert into public.job_queue (job_type, payload, status, attempts, started_at,"
        " completed_at, created_at) select 'generate-image', jsonb_build_object("
        "'generation_id', id::text), 'completed', 0, created_at, completed_at, created_at"
        " from public.image_generations where status = 'completed'"
    )
    conn.execute(
        "insert into public.user_rate_limits (user_id, daily_generations_count,"
        " total_generations_all_time) values (%s, 3, 42)",
        (alice,),
    )
    return old


# The old columns of each table: what every old row must still hold after the upgrade.
OLD_COLUMNS = {
    "models": "id, name, display_name, replicate_id, version, default_width, max_steps,"
    " is_active, is_default, sort_order, created_at, updated_at",
    "image_generations": "id, user_id, prompt, model, model_id, width, height, status,"
    " error_message, generation_time_seconds, replicate_prediction_id, retry_count,"
    " created_at, completed_at",
    "images": "id, generation_id, user_id, filename, storage_path, public_url, file_size,"
    " format, is_favorite, archived_at, download_count, created_at",
    "job_queue": "id, job_type, attempts, max_attempts, scheduled_at, started_at,"
    " completed_at, error_message, created_by, created_at",
    "batch_generations": "id, user_id, total_count, status",
    "user_rate_limits": "user_id, daily_generations_count, total_generations_all_time",
    "profiles": "id, email",
}


def old_rows(
    conn: psycopg.Connection[Any], like: dict[str, list[Any]] | None = None
) -> dict[str, list[Any]]:
    """The old columns of every row; with `like`, only the rows (by key) that `like` has."""
    rows = {
        table: conn.execute(f"select {columns} from public.{table} order by 1").fetchall()
        for table, columns in OLD_COLUMNS.items()
    }
    if like is not None:
        for table, before in like.items():
            keys = {_key(row) for row in before}
            rows[table] = [row for row in rows[table] if _key(row) in keys]
    return rows


def _key(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, dict) else row[0]
