-- Retention of Storage (the `cleanup-storage` job, worker/jobs/cleanup_storage.py): find
-- objects of the bucket that no row points at and rows whose object is gone. The worker
-- lists the bucket; these functions judge what it listed, so the rule of what may go is
-- here, in one place:
--
--   referenced  an images row points at it: its storage_path, or the path of its
--               public_url (the gallery may rewrite public_url). Never deleted.
--   in_use      a generation could still be writing it: the file is named after a
--               generation (<user_id>/<generation_id>.<format>, CONTRACT.md "Storage")
--               that is in progress or changed within the grace period (a retry), or an
--               active generation reads it as its source image. Never deleted.
--   recent      younger than the grace period (or its age unknown). Never deleted.
--   orphan      none of those: reported, deleted only when the job is told to.
--
-- The worker asks again right before it deletes (a row written since the listing wins).

-- The path inside its bucket of a Storage URL (public, authenticated or signed), decoded;
-- null for any other URL. The bucket is not compared: a false match only keeps a file.
create or replace function imagegen.storage_url_object(p_url text) returns text
language plpgsql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
declare
    v_path text := substring(
        p_url from '/storage/v1/object/(?:public|authenticated|sign)/[^/?#]+/([^?#]+)');
    v_bytes bytea := ''::bytea;
    v_i integer := 1;
begin
    if v_path is null or position('%' in v_path) = 0 then
        return v_path;
    end if;
    while v_i <= length(v_path) loop
        if substr(v_path, v_i, 1) = '%' and substr(v_path, v_i + 1, 2) ~ '^[0-9A-Fa-f]{2}$' then
            v_bytes := v_bytes || decode(substr(v_path, v_i + 1, 2), 'hex');
            v_i := v_i + 3;
        else
            v_bytes := v_bytes || convert_to(substr(v_path, v_i, 1), 'UTF8');
            v_i := v_i + 1;
        end if;
    end loop;
    return convert_from(v_bytes, 'UTF8');
exception when others then
    return v_path;  -- not valid UTF-8 once decoded: compared as written
end
$$;

-- The generation a file is named after (<generation_id>.<format> as the last segment).
create or replace function imagegen.storage_object_generation(p_path text) returns uuid
language sql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
    select substring(lower(p_path)
                     from '(?:^|/)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'
                          '\.[a-z0-9]+$')::uuid
$$;

-- The lookups of a listed page: by path, by the (still encoded) path of the public URL,
-- by folder. Built-in expressions only: an index expression runs with the privileges of
-- whoever writes the row (the apps update images), and the helpers above are private.
create index if not exists images_storage_path_idx on public.images (storage_path);
create index if not exists images_public_url_path_idx on public.images
    ((substring(public_url from '/storage/v1/object/(?:public|authenticated|sign)/[^/?#]+/([^?#]+)')));
-- The few public URLs whose path is percent-encoded: decoded when compared.
create index if not exists images_public_url_escaped_idx on public.images (id)
    where substring(public_url from '/storage/v1/object/(?:public|authenticated|sign)/[^/?#]+/([^?#]+)')
          like '%\%%';
create index if not exists images_storage_folder_idx
    on public.images ((regexp_replace(storage_path, '/?[^/]*$', '')), created_at);

-- One verdict per listed object: names are full paths in the bucket, updated_at the
-- listing's last change of each (ISO 8601 text: an array of nulls has no type of its own
-- over either gateway; null when Storage gave none), the grace period in seconds.
create or replace function public.storage_object_verdicts(
    p_names text[],
    p_updated_at text[],
    p_grace_seconds integer default 86400
) returns table (name text, verdict text)
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    with listed as (
        select o.name, o.updated_at::timestamptz as updated_at,
               imagegen.storage_object_generation(o.name) as generation_id
        from unnest(p_names, p_updated_at) as o(name, updated_at)
        where o.name is not null
    ),
    escaped as materialized (
        select imagegen.storage_url_object(public_url) as name
        from images
        where substring(public_url from '/storage/v1/object/(?:public|authenticated|sign)/[^/?#]+/([^?#]+)')
              like '%\%%'
    ),
    sources as materialized (
        -- What in-progress generations will still fetch: few rows (admission bounds them).
        select imagegen.storage_url_object(source_image_url) as name
        from image_generations
        where imagegen.is_active(status)
          and source_image_url is not null
    )
    select l.name,
           case
               when exists (select from images i where i.storage_path = l.name)
                 or exists (select from images i
                            where substring(i.public_url from '/storage/v1/object/(?:public|authenticated|sign)/[^/?#]+/([^?#]+)')
                                  = l.name)
                 or l.name in (select e.name from escaped e where e.name is not null)
                   then 'referenced'
               when exists (select from image_generations g
                            where g.id = l.generation_id
                              and (imagegen.is_active(g.status)
                                   or g.updated_at > now() - make_interval(secs => p_grace_seconds)))
                 or l.name in (select s.name from sources s where s.name is not null)
                   then 'in_use'
               when l.updated_at is null or l.updated_at > now() - make_interval(secs => p_grace_seconds)
                   then 'recent'
               else 'orphan'
           end
    from listed l
$$;

-- Rows of `p_folder` whose object is not among `p_names` (that folder's listed files),
-- written before the listing began: {count, sample}.
create or replace function public.storage_missing_objects(
    p_folder text,
    p_names text[],
    p_before timestamptz,
    p_sample integer default 20
) returns jsonb
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    with missing as (
        select i.storage_path
        from images i
        where regexp_replace(i.storage_path, '/?[^/]*$', '') = p_folder
          and i.created_at < p_before
          and not i.storage_path = any (coalesce(p_names, '{}'))
    )
    select jsonb_build_object(
        'count', (select count(*) from missing),
        'sample', coalesce((select jsonb_agg(storage_path order by storage_path)
                            from (select storage_path from missing
                                  order by storage_path limit greatest(p_sample, 0)) s),
                           '[]'::jsonb))
$$;

-- Rows whose folder was not listed at all (it has no object left): {count, sample}.
create or replace function public.storage_missing_folders(
    p_folders text[],
    p_before timestamptz,
    p_sample integer default 20
) returns jsonb
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    with missing as (
        select i.storage_path
        from images i
        where i.created_at < p_before
          and not exists (select from unnest(p_folders) f(folder)
                          where f.folder = regexp_replace(i.storage_path, '/?[^/]*$', ''))
    )
    select jsonb_build_object(
        'count', (select count(*) from missing),
        'sample', coalesce((select jsonb_agg(storage_path order by storage_path)
                            from (select storage_path from missing
                                  order by storage_path limit greatest(p_sample, 0)) s),
                           '[]'::jsonb))
$$;

-- What the nightly cron job runs: one cleanup-storage job, never two active at once.
create or replace function public.enqueue_storage_cleanup() returns uuid
language sql
security definer
set search_path = public, pg_temp
as $$
    select enqueue_job('cleanup-storage', '{}'::jsonb, p_dedupe_key => 'cleanup-storage')
$$;

-- The baseline's configure_worker_cron (section 11), with one job more:
-- `imagegen-storage-cleanup` enqueues the cleanup every night at 03:43 (pg_cron 1.4 has
-- minute schedules only; the worker runs it like any job).
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
    execute 'select cron.schedule($1, $2, $3)'
        using 'imagegen-storage-cleanup', '43 3 * * *', 'select public.enqueue_storage_cleanup()';
    return v_job_id;
end
$$;

revoke all on function imagegen.storage_url_object(text) from public, anon, authenticated;
revoke all on function imagegen.storage_object_generation(text) from public, anon, authenticated;
revoke all on function public.storage_object_verdicts(text[], text[], integer)
    from public, anon, authenticated;
revoke all on function public.storage_missing_objects(text, text[], timestamptz, integer)
    from public, anon, authenticated;
revoke all on function public.storage_missing_folders(text[], timestamptz, integer)
    from public, anon, authenticated;
revoke all on function public.enqueue_storage_cleanup() from public, anon, authenticated;
revoke all on function public.configure_worker_cron(text, text, text, interval)
    from public, anon, authenticated;
grant execute on function public.storage_object_verdicts(text[], text[], integer),
    public.storage_missing_objects(text, text[], timestamptz, integer),
    public.storage_missing_folders(text[], timestamptz, integer),
    public.enqueue_storage_cleanup(),
    public.configure_worker_cron(text, text, text, interval)
    to service_role;
