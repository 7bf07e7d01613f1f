-- The tables the apps and operators read (CONTRACT §2-3). `if not exists` and
-- `add column if not exists` let this run on the old platform's database unchanged.

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

create table if not exists public.image_generations (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references auth.users (id) on delete cascade,
    prompt text not null check (length(prompt) between 1 and 4000),
    negative_prompt text,
    model text,
    model_id text,
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
    completed_at timestamptz
);
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
    created_at timestamptz not null default now()
);
create index if not exists images_user_created_idx on public.images (user_id, created_at desc);

create table if not exists public.job_queue (
    id uuid primary key default gen_random_uuid(),
    job_type text not null check (job_type ~ '^[a-z][a-z0-9-]{0,62}$'),
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
-- What a reliable queue adds (DESIGN.md): the lease, the result and a dedupe key.
alter table public.job_queue add column if not exists locked_by text;
alter table public.job_queue add column if not exists locked_until timestamptz;
alter table public.job_queue add column if not exists result jsonb;
alter table public.job_queue add column if not exists dedupe_key text;

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
