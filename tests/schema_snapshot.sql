CREATE SCHEMA auth;

CREATE SCHEMA imagegen;

CREATE SCHEMA net;

CREATE EXTENSION IF NOT EXISTS plpython3u WITH SCHEMA pg_catalog;

COMMENT ON EXTENSION plpython3u IS 'PL/Python3U untrusted procedural language';

CREATE FUNCTION auth.jwt() RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
            select coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
        $$;

CREATE FUNCTION auth.role() RETURNS text
    LANGUAGE sql STABLE
    AS $$ select auth.jwt() ->> 'role' $$;

CREATE FUNCTION auth.uid() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$
            select nullif(
                coalesce(
                    nullif(current_setting('request.jwt.claim.sub', true), ''),
                    auth.jwt() ->> 'sub'
                ),
                ''
            )::uuid
        $$;

CREATE FUNCTION imagegen.active_generations(p_user_id uuid) RETURNS integer
    LANGUAGE sql STABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select count(*)::integer
    from image_generations
    where user_id = p_user_id and status in ('queued', 'processing', 'downloading')
$$;

CREATE FUNCTION imagegen.active_job(p_generation_id uuid) RETURNS uuid
    LANGUAGE sql STABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select id from job_queue
    where payload ? 'generation_id' and payload ->> 'generation_id' = p_generation_id::text
      and status in ('pending', 'processing')
    order by created_at desc
    limit 1
$$;

CREATE FUNCTION imagegen.active_statuses() RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    select array['pending', 'queued', 'processing', 'downloading']
$$;

CREATE FUNCTION imagegen.admit_generation(p_user_id uuid, p_count integer DEFAULT 1, p_counted boolean DEFAULT false) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION imagegen.announce_ended_batches() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    perform imagegen.publish_events(array(
        select jsonb_build_object(
            'event', 'batch.' || n.status,
            'batch_id', n.id,
            'user_id', n.user_id,
            'status', n.status,
            'total_count', n.total_count,
            'completed_count', n.completed_count,
            'failed_count', n.failed_count,
            'occurred_at', now())
        from new_rows n
        join old_rows o on o.id = n.id
        where n.status in ('completed', 'partial', 'failed')
          and n.status is distinct from o.status
        order by n.id));
    return null;
end
$$;

CREATE FUNCTION imagegen.announce_ended_generations() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    perform imagegen.publish_events(array(
        select jsonb_build_object(
            'event', 'generation.' || n.status,
            'generation_id', n.id,
            'user_id', n.user_id,
            'batch_id', n.batch_id,
            'status', n.status,
            'error_message', n.error_message,
            'occurred_at', now())
        from new_rows n
        join old_rows o on o.id = n.id
        where n.status in ('completed', 'failed') and n.status is distinct from o.status
        order by n.id));
    return null;
end
$$;

CREATE FUNCTION imagegen.assign_turn() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_owner text := coalesce(new.created_by::text, new.payload ->> 'user_id');
    v_round bigint;
    v_last bigint;
begin
    select turn into v_round
    from job_queue
    where status = 'pending' and scheduled_at <= created_at and priority = new.priority
    order by turn
    limit 1;
    if v_owner is not null then
        select turn into v_last
        from job_queue
        where status = 'pending' and priority = new.priority
          and coalesce(created_by::text, payload ->> 'user_id') = v_owner
        order by turn desc
        limit 1;
    end if;
    new.turn := greatest(coalesce(v_round, 0), coalesce(v_last + 1, 0));
    return new;
end
$$;

CREATE FUNCTION imagegen.batch_status(p_total integer, p_completed integer, p_failed integer) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    select case
        when p_completed + p_failed < p_total then 'processing'
        when p_failed = 0 then 'completed'
        when p_completed = 0 then 'failed'
        else 'partial' end
$$;

CREATE FUNCTION imagegen.cancel_generation(p_generation_id uuid, p_user_id uuid) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    g image_generations;
begin
    select * into g
    from image_generations
    where id = p_generation_id and user_id = p_user_id
    for update;
    if not found then
        return 'unknown';
    end if;
    if not imagegen.is_active(g.status) then
        return g.status;
    end if;

    update image_generations
    set status = 'failed', error_message = 'Cancelled by user', completed_at = now(),
        updated_at = now()
    where id = g.id;
    -- The trigger cancels the prediction of a job it stopped; the owner's cancel also
    -- stops one with no active job (the API's call carries no auth.uid() for the trigger
    -- to recognise the owner by). The dedupe key makes the second enqueue a no-op.
    if g.replicate_prediction_id is not null
       and g.status in ('pending', 'queued', 'processing') then
        perform imagegen.cancel_prediction_later(g.replicate_prediction_id, g.id, g.user_id);
    end if;
    return 'cancelled';
end
$$;

CREATE FUNCTION imagegen.cancel_prediction_later(p_prediction_id text, p_generation_id uuid, p_user_id uuid) RETURNS uuid
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select enqueue_job(
        p_job_type => 'cancel-prediction',
        -- Not `generation_id`: this job is not the generation's work (a retry need not
        -- wait for it, and its failure must not fail the retried generation).
        p_payload => jsonb_build_object('prediction_id', p_prediction_id,
                                        'cancelled_generation_id', p_generation_id,
                                        'user_id', p_user_id),
        p_priority => 1,  -- a running prediction costs money until it stops
        p_created_by => p_user_id,
        p_dedupe_key => 'cancel-prediction:' || p_prediction_id
    )
$$;

CREATE FUNCTION imagegen.check_client_generation() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    m models;
    p jsonb;
    v_source boolean;
begin
    if new.status is distinct from 'pending' then
        perform imagegen.invalid('status', 'a new generation starts as pending');
    end if;
    -- The apps name the model by models.name; the API's names (id, Replicate id) work too.
    select * into m
    from models
    where name = new.model or id::text = lower(new.model) or replicate_id = new.model
    order by name = new.model desc, is_active desc nulls last, is_default desc nulls last,
             sort_order nulls last, created_at
    limit 1;
    if not found then
        perform imagegen.invalid('model', format('Unknown model: %s', new.model));
    end if;
    if new.source_image_url is not null then
        perform imagegen.check_source_image_url(new.source_image_url);
    end if;
    v_source := new.source_image_url is not null and coalesce(m.supports_img2img, false);
    p := generation_parameters(
        p_prompt => new.prompt, p_model_id => m.id::text, p_width => new.width,
        p_height => new.height, p_num_inference_steps => new.steps,
        p_guidance_scale => new.guidance_scale, p_negative_prompt => new.negative_prompt,
        p_source_image_url => case when v_source then new.source_image_url end,
        p_strength => case when v_source then new.generation_strength end,
        p_style => new.style
    );
    perform imagegen.admit_generation(new.user_id);

    new.model := p ->> 'model_name';
    new.model_id := (p ->> 'model_row_id')::uuid;
    new.width := (p ->> 'width')::integer;
    new.height := (p ->> 'height')::integer;
    new.steps := (p ->> 'num_inference_steps')::integer;
    new.guidance_scale := (p ->> 'guidance_scale')::numeric;
    new.source_image_url := case when v_source then new.source_image_url end;
    new.generation_strength := (p ->> 'strength')::numeric;
    return new;
end
$$;

CREATE FUNCTION imagegen.check_client_generation_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    new.completed_at := old.completed_at;  -- the server's, even where a client sends one
    if new.retry_count is distinct from old.retry_count and new.retry_count <> 0 then
        perform imagegen.invalid('retry_count', 'retry_count can only be reset to 0');
    end if;

    if imagegen.is_active(old.status)
       and new.status = 'failed' then
        new.error_message := left(coalesce(new.error_message, 'Cancelled by user'), 1000);
        new.retry_count := old.retry_count;
        new.completed_at := now();
    elsif old.status = 'failed' and new.status = 'pending' then
        if exists (select from job_queue
                   where payload ? 'generation_id' and payload ->> 'generation_id' = old.id::text
                     and status in ('pending', 'processing')) then
            perform imagegen.invalid('status',
                'this generation is still being worked on; retry it when it has ended');
        end if;
        new.error_message := null;
        new.retry_count := 0;
        new.completed_at := null;
        new.generation_time_seconds := null;
        new.replicate_prediction_id := null;
        new.prediction_requested_at := null;
    elsif old.status = 'failed' and new.status = 'failed' then
        new.error_message := left(coalesce(new.error_message, old.error_message), 1000);
        new.retry_count := old.retry_count;
    elsif new is not distinct from old then
        return new;  -- nothing changes
    else
        perform imagegen.invalid('status', format(
            'a generation cannot be moved from %s to %s', old.status, new.status));
    end if;
    new.updated_at := now();
    return new;
end
$$;

CREATE FUNCTION imagegen.check_client_image_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
declare
    v_file text := '/storage/v1/object/public/generated-images/' || old.storage_path;
begin
    if new.public_url is distinct from old.public_url then
        if coalesce(old.public_url, '') <> '' then
            perform imagegen.invalid('public_url', 'public_url is set and cannot be changed');
        end if;
        if new.public_url !~* '^https?://[^/?#@\s]+/[^?#@\s]*$'
           or right(new.public_url, length(v_file)) is distinct from v_file then
            perform imagegen.invalid('public_url',
                'public_url must be the public Storage URL of the image''s own storage_path');
        end if;
    end if;
    return new;
end
$_$;

CREATE FUNCTION imagegen.check_source_image_url(p_url text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
declare
    v_authority text := substring(p_url from '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)');
    v_host text;
    v_address inet;
begin
    if p_url !~* '^https?://[^\s]+$' or length(p_url) > 2048 then
        perform imagegen.invalid('source_image_url', 'source_image_url must be an http(s) URL');
    end if;
    if position('@' in v_authority) > 0 then
        perform imagegen.invalid('source_image_url',
                                 'source_image_url must not contain credentials');
    end if;
    v_host := lower(case when v_authority like '[%'
                         then substring(v_authority from '^\[([^\]]*)\]')
                         else split_part(v_authority, ':', 1) end);
    begin
        v_address := v_host::inet;
    exception when invalid_text_representation then
        v_address := null;
    end;
    if v_address is null then
        if v_host !~ '^[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z][a-z0-9-]*\.?$'
           or v_host ~ '(^|\.)(localhost|local|internal|localdomain|home|lan|arpa)\.?$' then
            perform imagegen.invalid('source_image_url',
                'source_image_url must name a public host');
        end if;
    elsif v_address <<= any (array[
            -- worker/source_image.py's _FORBIDDEN_V4 and _FORBIDDEN_V6, and every IPv6
            -- form that embeds an IPv4 address (mapped, compatible, NAT64, 6to4).
            '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16',
            '172.16.0.0/12', '192.0.0.0/24', '192.0.2.0/24', '192.88.99.0/24',
            '192.168.0.0/16', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24',
            '224.0.0.0/4', '240.0.0.0/4',
            '::/96', '::ffff:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48', '100::/64',
            '2001::/23', '2001:db8::/32', '2002::/16', 'fc00::/7', 'fe80::/10', 'fec0::/10',
            'ff00::/8']::inet[]) then
        perform imagegen.invalid('source_image_url',
            'source_image_url points to a private or reserved address');
    end if;
end
$_$;

CREATE FUNCTION imagegen.count_batch_items() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    if not exists (select from new_rows n join old_rows o on o.id = n.id
                   where n.batch_id is not null and n.status is distinct from o.status) then
        return null;
    end if;
    -- The new counts are written in terms of the row being updated (b), never of a value
    -- read before: when two finishes meet, the second re-reads the row the first wrote.
    with changes as (
        select n.batch_id,
               sum((n.status = 'completed')::integer - (o.status = 'completed')::integer)::integer
                   as completed,
               sum((n.status = 'failed')::integer - (o.status = 'failed')::integer)::integer
                   as failed
        from new_rows n
        join old_rows o on o.id = n.id
        where n.batch_id is not null and n.status is distinct from o.status
        group by n.batch_id
    )
    update batch_generations b
    set completed_count = greatest(coalesce(b.completed_count, 0) + c.completed, 0),
        failed_count = greatest(coalesce(b.failed_count, 0) + c.failed, 0),
        status = imagegen.batch_status(
            b.total_count, greatest(coalesce(b.completed_count, 0) + c.completed, 0),
            greatest(coalesce(b.failed_count, 0) + c.failed, 0)),
        completed_at = case
            when imagegen.batch_status(
                     b.total_count, greatest(coalesce(b.completed_count, 0) + c.completed, 0),
                     greatest(coalesce(b.failed_count, 0) + c.failed, 0)) = 'processing'
                then null
            else coalesce(b.completed_at, now()) end
    from changes c
    where b.id = c.batch_id;
    return null;
end
$$;

CREATE FUNCTION imagegen.cron_version_at_least(p_major integer, p_minor integer) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    select coalesce(
        (select (string_to_array(split_part(extversion, '-', 1), '.'))[1]::integer > p_major
             or ((string_to_array(split_part(extversion, '-', 1), '.'))[1]::integer = p_major
                 and coalesce((string_to_array(split_part(extversion, '-', 1), '.'))[2]::integer,
                              0) >= p_minor)
         from pg_extension where extname = 'pg_cron'),
        false)
$$;

CREATE FUNCTION imagegen.fail_generation_of_ended_job() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
begin
    if new.payload ->> 'generation_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' then
        update image_generations
        set status = 'failed', updated_at = now(),
            error_message = case
                when new.error_details ->> 'error_type' = 'lease_expired' then
                    'Image generation failed: the worker stopped responding during the '
                    'final attempt. Please try again.'
                else coalesce(new.error_message, 'Image generation failed')
            end,
            retry_count = greatest(new.attempts - 1, 0)
        where id = (new.payload ->> 'generation_id')::uuid
          and imagegen.is_active(status);
    end if;
    return null;
end
$_$;

CREATE FUNCTION imagegen.generation_status(p_generation_id uuid, p_user_id uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    g image_generations;
    j job_queue;
    v_ahead bigint;
    v_busy bigint;
    v_samples integer;
    v_median numeric;
    v_basis text;
    v_estimate numeric;
    v_limit integer := greatest(imagegen.integer_setting('queue_position_limit', 1000), 1);
begin
    select * into g from image_generations where id = p_generation_id and user_id = p_user_id;
    if not found then
        perform imagegen.invalid('generation_id', 'Unknown generation');
    end if;

    select count(*), percentile_cont(0.5) within group (order by seconds)
    into v_samples, v_median
    from (select generation_time_seconds as seconds
          from image_generations
          where model = g.model and status = 'completed'
            and completed_at > now() - interval '1 hour'
            and generation_time_seconds is not null
          order by completed_at desc
          limit 100) recent;
    if v_samples > 0 then
        v_basis := 'recent';
    else
        select estimated_time_seconds into v_median
        from models where id = g.model_id or (g.model_id is null and name = g.model)
        limit 1;
        v_basis := case when v_median is not null then 'model' end;
    end if;

    select * into j
    from job_queue
    where payload ? 'generation_id' and payload ->> 'generation_id' = g.id::text
      and status in ('pending', 'processing')
    order by created_at desc
    limit 1;
    select count(*) into v_busy from job_queue where status = 'processing';

    if j.status = 'pending' then
        -- The ready jobs ahead in the claim's order, then the deferred ones that are due.
        select count(*) into v_ahead
        from (select from job_queue
              where status = 'pending' and scheduled_at <= created_at
                and priority > j.priority
              union all
              select from job_queue
              where status = 'pending' and scheduled_at <= created_at
                and priority = j.priority and (turn, created_at) < (j.turn, j.created_at)
              union all
              select from job_queue
              where status = 'pending' and scheduled_at > created_at and scheduled_at <= now()
                and (priority > j.priority
                     or (priority = j.priority
                         and (turn, created_at) < (j.turn, j.created_at)))
              limit v_limit) ahead;
        v_estimate := (floor(v_ahead / greatest(v_busy, 1)) + 1) * v_median;
    elsif j.status = 'processing' then
        v_estimate := greatest(v_median - extract(epoch from now() - j.started_at), 0);
    end if;

    return jsonb_build_object(
        'generation_id', g.id,
        'status', g.status,
        'job_status', j.status,
        'position', v_ahead + 1,
        'position_exact', case when v_ahead is not null then v_ahead < v_limit end,
        'workers_busy', v_busy,
        'median_seconds', round(v_median, 1),
        'estimate_basis', v_basis,
        'samples', v_samples,
        'estimated_seconds', round(v_estimate)
    );
end
$$;

CREATE FUNCTION imagegen.get_setting(p_key text) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'imagegen', 'pg_temp'
    AS $_$
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
$_$;

CREATE FUNCTION imagegen.held_generation(p_job_id uuid, p_worker_id text) RETURNS uuid
    LANGUAGE sql STABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select (payload ->> 'generation_id')::uuid
    from job_queue
    where id = p_job_id
      and status = 'processing'
      and (p_worker_id is null or locked_by = p_worker_id)
$$;

CREATE FUNCTION imagegen.idempotency_window() RETURNS interval
    LANGUAGE sql IMMUTABLE
    AS $$ select interval '24 hours' $$;

CREATE FUNCTION imagegen.integer_setting(p_key text, p_default integer) RETURNS integer
    LANGUAGE sql STABLE
    SET search_path TO 'imagegen', 'pg_temp'
    AS $$
    select coalesce((select value::integer from imagegen.settings where key = p_key), p_default)
$$;

CREATE FUNCTION imagegen.invalid(p_field text, p_message text) RETURNS void
    LANGUAGE plpgsql
    AS $$
begin
    raise exception using errcode = 'invalid_parameter_value', column = p_field,
        message = case when starts_with(p_message, p_field) then p_message
                       else p_field || ': ' || p_message end;
end
$$;

CREATE FUNCTION imagegen.is_active(p_status text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    select p_status = any (imagegen.active_statuses())
$$;

CREATE FUNCTION imagegen.is_blank(p_text text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    select p_text !~ ('[^[:space:][:cntrl:]\u0080-\u00a0\u00ad\u061c\u1680\u180e'
                      '\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ue000-\uf8ff'
                      '\ufeff\ufff0-\ufffb]')
$$;

CREATE FUNCTION imagegen.keep_batch_counts() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    new.completed_count := old.completed_count;
    new.failed_count := old.failed_count;
    return new;
end
$$;

CREATE TABLE public.job_queue (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    job_type text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 3 NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    scheduled_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    error_message text,
    error_details jsonb,
    created_by uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    locked_by text,
    locked_until timestamp with time zone,
    result jsonb,
    dedupe_key text,
    turn bigint DEFAULT 0 NOT NULL,
    attempt_history jsonb DEFAULT '[]'::jsonb NOT NULL,
    CONSTRAINT job_queue_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT job_queue_job_type_check CHECK ((job_type ~ '^[a-z][a-z0-9-]{0,62}$'::text)),
    CONSTRAINT job_queue_max_attempts_check CHECK ((max_attempts > 0)),
    CONSTRAINT job_queue_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'failed'::text, 'cancelled'::text])))
);

CREATE FUNCTION imagegen.monitor_jobs(p_since timestamp with time zone) RETURNS SETOF public.job_queue
    LANGUAGE sql STABLE
    AS $$
    select * from public.job_queue where status = 'pending'
    union all
    select * from public.job_queue where status = 'processing'
    union all
    select * from public.job_queue
    where status in ('completed', 'failed', 'cancelled') and completed_at > p_since
$$;

CREATE FUNCTION imagegen.monitor_series(p_start timestamp with time zone, p_buckets integer) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
    -- Sample i (0..p_buckets) is taken at p_start + i minutes. An interval [enter, leave)
    -- counts at the samples from ceil(enter) to before ceil(leave): +1 and -1 events,
    -- summed per sample, then a running sum (linear in the rows, whatever the queue's size).
    with jobs as (
        select id, job_type, status, created_at, started_at, completed_at, attempt_history
        from imagegen.monitor_jobs(p_start)
    ),
    alive as (
        select job_type, created_at as enter,
               case when status in ('pending', 'processing') then null else completed_at end
                   as leave
        from jobs
    ),
    attempts as (
        select j.job_type, (a ->> 'started_at')::timestamptz as enter,
               (a ->> 'finished_at')::timestamptz as leave
        from jobs j, jsonb_array_elements(j.attempt_history) a
        where a ? 'started_at'
        union all
        select job_type, started_at, null from jobs
        where status = 'processing' and started_at is not null
    ),
    events as (
        select job_type, 'alive' as kind, enter, leave from alive
        union all
        select job_type, 'processing', enter, leave from attempts
    ),
    indexed as (
        select job_type, kind,
               -- date_part: double precision; extract's numeric is several times slower here.
               greatest(0, ceil(date_part('epoch', enter - p_start) / 60))::integer as first,
               case when leave is null then p_buckets + 1
                    else greatest(0, ceil(date_part('epoch', leave - p_start) / 60))::integer
               end as stop
        from events
    ),
    deltas as (
        select job_type, kind, first as i, 1 as d from indexed
        where first < stop and first <= p_buckets
        union all
        select job_type, kind, stop, -1 from indexed
        where first < stop and stop <= p_buckets
    ),
    types as (select distinct job_type from deltas),
    grid as (
        select t.job_type, k.kind, i
        from types t, (values ('alive'), ('processing')) k (kind),
             generate_series(0, p_buckets) i
    ),
    counts as (
        select g.job_type, g.kind, g.i,
               sum(coalesce(d.total, 0)) over (
                   partition by g.job_type, g.kind order by g.i) as n
        from grid g
        left join (select job_type, kind, i, sum(d) as total from deltas
                   group by job_type, kind, i) d using (job_type, kind, i)
    ),
    per_type as (
        select a.job_type, a.i, a.n - p.n as pending, p.n as processing
        from counts a
        join counts p on p.job_type = a.job_type and p.i = a.i and p.kind = 'processing'
        where a.kind = 'alive'
    )
    select coalesce(jsonb_agg(jsonb_build_object(
               'job_type', job_type,
               'pending', pending_list,
               'processing', processing_list) order by job_type), '[]'::jsonb)
    from (
        select job_type,
               jsonb_agg(greatest(pending, 0) order by i) as pending_list,
               jsonb_agg(processing order by i) as processing_list
        from per_type
        group by job_type
    ) s
$$;

CREATE FUNCTION imagegen.price_completed_generation() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    new.estimated_cost := (
        select cost_per_generation
        from models
        where id = new.model_id or (new.model_id is null and name = new.model)
        order by id = new.model_id desc nulls last
        limit 1);
    return new;
end
$$;

CREATE FUNCTION imagegen.publish_events(p_messages jsonb[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    if cardinality(p_messages) > 0 and to_regclass('pgmq.q_generation_events') is not null then
        perform pgmq.send_batch('generation_events', p_messages);
    end if;
end
$$;

CREATE FUNCTION imagegen.put_setting(p_key text, p_value text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'imagegen', 'pg_temp'
    AS $_$
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
$_$;

CREATE FUNCTION imagegen.queue_full(p_limit integer) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION imagegen.queue_generation(p_generation_id uuid, p jsonb) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    g image_generations;
begin
    update image_generations
    set status = 'queued', error_message = null, updated_at = now(),
        model_id = coalesce((p ->> 'model_row_id')::uuid, model_id),
        model = coalesce(model, p ->> 'model_name'),
        width = (p ->> 'width')::integer, height = (p ->> 'height')::integer,
        steps = (p ->> 'num_inference_steps')::integer,
        guidance_scale = (p ->> 'guidance_scale')::numeric
    where id = p_generation_id
    returning * into g;
    return enqueue_job(
        p_job_type => 'generate-image',
        p_payload => p - 'model_name' - 'model_row_id' - 'style'
            || jsonb_build_object('generation_id', g.id, 'user_id', g.user_id),
        p_priority => coalesce(g.priority, 0),
        p_created_by => g.user_id,
        p_dedupe_key => 'generate-image:' || g.id
    );
end
$$;

CREATE FUNCTION imagegen.ran_before(p_generation_id uuid) RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select exists (
        select from job_queue
        where payload ? 'generation_id' and payload ->> 'generation_id' = p_generation_id::text
          and job_type = 'generate-image')
$$;

CREATE FUNCTION imagegen.rate_limits(p_user_id uuid, p_count integer DEFAULT 1) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION imagegen.record_attempt() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    c_kept constant integer := 10;
    c_message_chars constant integer := 500;
    v_outcome text;
    v_kind text := new.error_details ->> 'error_type';
    v_error text;
begin
    if new.status = 'processing' then
        -- A new attempt began while this one held the job: its lease ran out.
        v_outcome := 'lost';
        v_kind := 'lease_expired';
        v_error := 'The worker stopped renewing its lease';
    elsif v_kind = 'lease_expired' then
        v_outcome := 'lost';
        v_error := new.error_message;
    elsif new.status = 'pending' then
        v_outcome := 'retry';
        v_error := new.error_message;
    elsif new.status = 'failed' then
        v_outcome := 'failed';
        v_error := new.error_message;
    else
        -- completed, or cancelled (error_details is then an earlier attempt's)
        v_outcome := new.status;
        v_error := case when new.status = 'cancelled' then new.error_message end;
        v_kind := null;
    end if;

    new.attempt_history := old.attempt_history || jsonb_build_array(jsonb_strip_nulls(
        jsonb_build_object(
            'attempt', old.attempts,
            'worker', old.locked_by,
            'started_at', old.started_at,
            'finished_at', now(),
            'outcome', v_outcome,
            'error', left(v_error, c_message_chars),
            'error_kind', v_kind
        )));
    while jsonb_array_length(new.attempt_history) > c_kept loop
        new.attempt_history := new.attempt_history - 0;
    end loop;
    return new;
end
$$;

CREATE FUNCTION imagegen.refuse_reopening_generation() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    perform imagegen.invalid('status', format(
        'generation %s is %s and cannot become %s', old.id, old.status, new.status));
    return null;
end
$$;

CREATE TABLE public.image_generations (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    user_id uuid NOT NULL,
    prompt text NOT NULL,
    negative_prompt text,
    model text,
    model_id uuid,
    style text,
    width integer,
    height integer,
    steps integer,
    guidance_scale numeric,
    seed bigint,
    source_image_url text,
    generation_strength numeric,
    status text DEFAULT 'pending'::text NOT NULL,
    error_message text,
    generation_time_seconds numeric,
    replicate_prediction_id text,
    retry_count integer DEFAULT 0 NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    batch_id uuid,
    batch_index integer,
    multi_group_id uuid,
    multi_index integer,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    completed_at timestamp with time zone,
    prediction_requested_at timestamp with time zone,
    provider_metrics jsonb,
    predict_time numeric,
    estimated_cost numeric,
    CONSTRAINT image_generations_generation_strength_check CHECK (((generation_strength >= (0)::numeric) AND (generation_strength <= (1)::numeric))),
    CONSTRAINT image_generations_generation_time_seconds_check CHECK ((generation_time_seconds >= (0)::numeric)),
    CONSTRAINT image_generations_guidance_scale_check CHECK ((guidance_scale >= (0)::numeric)),
    CONSTRAINT image_generations_height_check CHECK ((height > 0)),
    CONSTRAINT image_generations_prompt_check CHECK (((length(prompt) >= 1) AND (length(prompt) <= 4000))),
    CONSTRAINT image_generations_retry_count_check CHECK ((retry_count >= 0)),
    CONSTRAINT image_generations_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'queued'::text, 'processing'::text, 'downloading'::text, 'completed'::text, 'failed'::text]))),
    CONSTRAINT image_generations_steps_check CHECK ((steps > 0)),
    CONSTRAINT image_generations_width_check CHECK ((width > 0))
);

CREATE FUNCTION imagegen.row_parameters(g public.image_generations) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    m models;
begin
    select * into m from models
    where id = g.model_id or name = g.model or replicate_id = g.model
    order by id = g.model_id desc nulls last, is_active desc nulls last, sort_order nulls last
    limit 1;
    return generation_parameters(
        g.prompt, coalesce(m.replicate_id, g.model_id::text, g.model), null, g.width, g.height,
        least(g.steps, coalesce(m.max_steps, 50)), least(g.guidance_scale, 50), g.seed,
        g.negative_prompt, g.source_image_url,
        case when g.source_image_url is not null then g.generation_strength end, g.style
    );
end
$$;

CREATE FUNCTION imagegen.stamp_ended_generation() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    new.completed_at := coalesce(new.completed_at, now());
    return new;
end
$$;

CREATE FUNCTION imagegen.stop_failed_generation() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_stopped integer;
begin
    with stopped as (
        update job_queue
        set status = 'cancelled', completed_at = now(), updated_at = now(),
            error_message = coalesce(new.error_message, 'Cancelled'),
            locked_by = null, locked_until = null
        where payload ? 'generation_id' and payload ->> 'generation_id' = new.id::text
          and status in ('pending', 'processing')
        returning id
    )
    select count(*) into v_stopped from stopped;

    if new.replicate_prediction_id is not null
       and old.status in ('pending', 'queued', 'processing')
       and (v_stopped > 0 or new.user_id = auth.uid()) then
        perform imagegen.cancel_prediction_later(new.replicate_prediction_id, new.id,
                                                 new.user_id);
    end if;
    return null;
end
$$;

CREATE FUNCTION imagegen.storage_object_generation(p_path text) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
    select substring(lower(p_path)
                     from '(?:^|/)([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'
                          '\.[a-z0-9]+$')::uuid
$_$;

CREATE FUNCTION imagegen.storage_url_object(p_url text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
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
$_$;

CREATE FUNCTION imagegen.turn_grace() RETURNS interval
    LANGUAGE sql IMMUTABLE
    AS $$ select interval '10 minutes' $$;

CREATE FUNCTION imagegen.webhook_dedupe_floor() RETURNS interval
    LANGUAGE sql IMMUTABLE
    AS $$ select interval '1 hour' $$;

CREATE FUNCTION imagegen.worker_lock_key(p_worker_id text) RETURNS bigint
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    select hashtextextended('imagegen.worker:' || p_worker_id, 0)
$$;

CREATE FUNCTION net.http_post(url text, body jsonb DEFAULT '{}'::jsonb, params jsonb DEFAULT '{}'::jsonb, headers jsonb DEFAULT '{"Content-Type": "application/json"}'::jsonb, timeout_milliseconds integer DEFAULT 5000) RETURNS bigint
    LANGUAGE plpython3u
    AS $_$
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
        $_$;

CREATE FUNCTION public.accept_webhook(p_webhook_id text, p_payload jsonb) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_prediction text := p_payload ->> 'id';
    v_status text := p_payload ->> 'status';
begin
    if p_webhook_id is null or length(p_webhook_id) not between 1 and 200 then
        perform imagegen.invalid('webhook-id', 'webhook-id must be 1 to 200 characters');
    end if;
    if jsonb_typeof(p_payload -> 'id') is distinct from 'string'
       or length(v_prediction) not between 1 and 200 then
        perform imagegen.invalid('id', 'the delivery names no prediction');
    end if;

    insert into imagegen.webhook_deliveries (webhook_id, prediction_id, status)
    values (p_webhook_id, v_prediction, left(v_status, 40))
    on conflict (webhook_id) do nothing;
    if not found then
        return false;
    end if;

    if v_status in ('succeeded', 'failed', 'canceled', 'aborted')
       and exists (select from image_generations where replicate_prediction_id = v_prediction)
    then
        perform enqueue_job(
            p_job_type => 'process-webhook',
            p_payload => jsonb_build_object('prediction_id', v_prediction, 'status', v_status),
            p_priority => 1,
            p_max_attempts => 5,
            p_dedupe_key => 'process-webhook:' || v_prediction || ':' || v_status
        );
    end if;
    return true;
end
$$;

CREATE FUNCTION public.await_webhook(p_job_id uuid, p_worker_id text, p_grace_seconds numeric, p_delay_seconds numeric DEFAULT NULL::numeric) RETURNS timestamp with time zone
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_estimate numeric;
    v_until timestamptz;
begin
    if p_delay_seconds is null then
        select max(m.estimated_time_seconds) into v_estimate
        from job_queue j
        join models m on m.replicate_id = j.payload ->> 'model_id'
        where j.id = p_job_id;
    end if;
    v_until := now() + make_interval(secs => greatest(0, coalesce(
        p_delay_seconds, coalesce(v_estimate, 0) + coalesce(p_grace_seconds, 0))));
    if not snooze_job(p_job_id, p_worker_id, v_until) then
        return null;
    end if;
    return v_until;
end
$$;

CREATE FUNCTION public.begin_generation(p_job_id uuid, p_worker_id text) RETURNS SETOF public.image_generations
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.cancel_generation(p_generation_id uuid) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select imagegen.cancel_generation(p_generation_id, auth.uid()) = 'cancelled'
$$;

CREATE FUNCTION public.cancel_job(p_job_id uuid, p_reason text DEFAULT 'Cancelled'::text) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with cancelled as (
        update job_queue
        set status = 'cancelled', completed_at = now(), updated_at = now(),
            error_message = p_reason, locked_by = null, locked_until = null
        where id = p_job_id and status in ('pending', 'processing')
        returning id
    )
    select exists (select from cancelled)
$$;

CREATE FUNCTION public.cancel_owned_generation(p_generation_id uuid, p_user_id uuid) RETURNS text
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select imagegen.cancel_generation(p_generation_id, p_user_id)
$$;

CREATE FUNCTION public.check_rate_limit(p_user_id uuid, p_count integer DEFAULT 1) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.claim_generation_job(p_generation_id uuid, p_worker_id text, p_lease_seconds integer DEFAULT 300) RETURNS SETOF public.job_queue
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with due as (
        select id
        from job_queue
        where payload ? 'generation_id'
          and payload ->> 'generation_id' = p_generation_id::text
          and status = 'pending'
          and scheduled_at <= now()
        order by priority desc, created_at
        limit 1
        for update skip locked
    )
    update job_queue j
    set status = 'processing',
        attempts = j.attempts + 1,
        locked_by = p_worker_id,
        locked_until = now() + make_interval(secs => coalesce(p_lease_seconds, 300)),
        started_at = now(),
        updated_at = now()
    from due
    where j.id = due.id
    returning j.*
$$;

CREATE FUNCTION public.claim_jobs(p_worker_id text, p_limit integer DEFAULT 1, p_job_types text[] DEFAULT NULL::text[], p_lease_seconds integer DEFAULT 300) RETURNS SETOF public.job_queue
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with exhausted as (
        -- A lease that ran out on the final attempt: the job fails (and its generation
        -- with it, worded for the user by fail_generation_of_ended_job) instead of running
        -- forever a job that keeps killing its workers. error_type marks the attempt lost.
        update job_queue
        set status = 'failed', completed_at = now(), updated_at = now(),
            error_message = 'The worker stopped responding during the final attempt',
            error_details = jsonb_build_object('error_type', 'lease_expired',
                                               'worker_id', locked_by, 'attempt', attempts),
            locked_by = null, locked_until = null
        where status = 'processing' and locked_until < now() and attempts >= max_attempts
          and (p_job_types is null or job_type = any (p_job_types))
    ),
    ready as (
        select id, priority, turn, created_at
        from job_queue
        where status = 'pending'
          and scheduled_at <= created_at
          and scheduled_at <= now()
          and (p_job_types is null or job_type = any (p_job_types))
        order by priority desc, turn, created_at
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    deferred as (
        select id, priority, turn, created_at
        from job_queue
        where status = 'pending'
          and scheduled_at > created_at
          and scheduled_at <= now()
          and (p_job_types is null or job_type = any (p_job_types))
        order by priority desc, turn, created_at
        limit coalesce(p_limit, 1)
        for update skip locked
    ),
    expired as (
        -- A lease that ran out means its worker vanished: the job is taken over.
        select id, priority, turn, created_at
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
        select id from (select * from ready union all select * from deferred
                        union all select * from expired) candidates
        order by priority desc, turn, created_at
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

CREATE FUNCTION public.claim_next_job(p_job_types text[] DEFAULT NULL::text[]) RETURNS SETOF public.job_queue
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select * from claim_jobs('sql:' || pg_backend_pid(), 1, p_job_types, 600)
$$;

CREATE FUNCTION public.complete_job(p_job_id uuid, p_error_message text DEFAULT NULL::text, p_error_details jsonb DEFAULT NULL::jsonb, p_result jsonb DEFAULT NULL::jsonb, p_worker_id text DEFAULT NULL::text, p_retryable boolean DEFAULT true) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.complete_jobs(p_worker_id text, p_job_ids uuid[], p_results jsonb[] DEFAULT NULL::jsonb[]) RETURNS SETOF uuid
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.configure_admission(p_max_active_per_user integer DEFAULT NULL::integer, p_max_queue_depth integer DEFAULT NULL::integer, p_daily_limit integer DEFAULT NULL::integer, p_hourly_limit integer DEFAULT NULL::integer, p_max_batch_size integer DEFAULT NULL::integer) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.configure_provider_limit(p_provider text, p_creates_per_minute integer DEFAULT NULL::integer, p_burst numeric DEFAULT NULL::numeric) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.configure_worker_cron(p_url text, p_secret text, p_schedule text DEFAULT NULL::text, p_retention interval DEFAULT '7 days'::interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
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
$_$;

CREATE FUNCTION public.enqueue_job(p_job_type text, p_payload jsonb DEFAULT '{}'::jsonb, p_priority integer DEFAULT 0, p_scheduled_at timestamp with time zone DEFAULT now(), p_max_attempts integer DEFAULT 3, p_created_by uuid DEFAULT NULL::uuid, p_dedupe_key text DEFAULT NULL::text) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.enqueue_storage_cleanup() RETURNS uuid
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select enqueue_job('cleanup-storage', '{}'::jsonb, p_dedupe_key => 'cleanup-storage')
$$;

CREATE FUNCTION public.fail_generation(p_job_id uuid, p_worker_id text, p_error_message text, p_error_details jsonb DEFAULT NULL::jsonb, p_retryable boolean DEFAULT true) RETURNS text
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select fail_job(p_job_id, p_worker_id, p_error_message, p_error_details, p_retryable)
$$;

CREATE FUNCTION public.fail_job(p_job_id uuid, p_worker_id text, p_error_message text, p_error_details jsonb DEFAULT NULL::jsonb, p_retryable boolean DEFAULT true) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    if not complete_job(p_job_id, p_error_message, p_error_details, null, p_worker_id,
                        p_retryable) then
        return null;
    end if;
    return (select status from job_queue where id = p_job_id);
end
$$;

CREATE TABLE public.images (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    generation_id uuid,
    user_id uuid NOT NULL,
    filename text NOT NULL,
    storage_path text NOT NULL,
    public_url text NOT NULL,
    file_size bigint,
    width integer,
    height integer,
    format text,
    prompt text,
    negative_prompt text,
    model text,
    style text,
    is_public boolean DEFAULT false NOT NULL,
    is_favorite boolean DEFAULT false NOT NULL,
    rating integer,
    blurhash text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    archived_at timestamp with time zone,
    download_count integer DEFAULT 0,
    source_image_id uuid,
    generation_strength numeric,
    CONSTRAINT images_file_size_check CHECK ((file_size > 0)),
    CONSTRAINT images_format_check CHECK ((format = ANY (ARRAY['webp'::text, 'png'::text, 'jpeg'::text, 'svg'::text]))),
    CONSTRAINT images_height_check CHECK ((height > 0)),
    CONSTRAINT images_rating_check CHECK (((rating >= 1) AND (rating <= 5))),
    CONSTRAINT images_width_check CHECK ((width > 0))
);

CREATE FUNCTION public.finish_generation(p_generation_id uuid, p_storage_path text, p_public_url text, p_file_size bigint, p_width integer, p_height integer, p_format text, p_job_id uuid DEFAULT NULL::uuid, p_worker_id text DEFAULT NULL::text, p_user_id uuid DEFAULT NULL::uuid, p_blurhash text DEFAULT NULL::text) RETURNS SETOF public.images
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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
        width = p_width, height = p_height, format = p_format, blurhash = p_blurhash,
        filename = p_generation_id || '.' || p_format
    where generation_id = p_generation_id
    returning *;
    if not found then
        return query
        insert into images (generation_id, user_id, filename, storage_path, public_url,
                            file_size, width, height, format, blurhash, prompt,
                            negative_prompt, model, style)
        values (p_generation_id, g.user_id, p_generation_id || '.' || p_format,
                p_storage_path, p_public_url, p_file_size, p_width, p_height, p_format,
                p_blurhash, g.prompt, g.negative_prompt, g.model, g.style)
        returning *;
    end if;
end
$$;

CREATE FUNCTION public.function_result_columns() RETURNS TABLE(function_name text, column_name text, type_name text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    -- OUT, INOUT and TABLE parameters.
    select p.proname::text, a.name, format_type(a.typ, null)
    from pg_proc p
    cross join lateral unnest(p.proallargtypes, p.proargmodes::text[], p.proargnames)
        as a(typ, mode, name)
    where p.pronamespace = 'public'::regnamespace and a.mode in ('o', 'b', 't')
    union
    -- A table's rows (`returns setof job_queue`).
    select p.proname::text, att.attname::text, format_type(att.atttypid, att.atttypmod)
    from pg_proc p
    join pg_type t on t.oid = p.prorettype
    join pg_attribute att on att.attrelid = t.typrelid and att.attnum > 0 and not att.attisdropped
    where p.pronamespace = 'public'::regnamespace and t.typtype = 'c'
    union
    -- One value.
    select p.proname::text, p.proname::text, format_type(p.prorettype, null)
    from pg_proc p
    join pg_type t on t.oid = p.prorettype
    where p.pronamespace = 'public'::regnamespace and t.typtype in ('b', 'd', 'e')
      and p.proallargtypes is null
$$;

CREATE FUNCTION public.generation_downloading(p_job_id uuid, p_worker_id text, p_output_url text, p_format text, p_width integer, p_height integer, p_generation_time_seconds numeric, p_provider_metrics jsonb DEFAULT NULL::jsonb) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_job job_queue;
    v_result jsonb;
    v_download_id uuid;
    v_predict_time jsonb := p_provider_metrics -> 'metrics' -> 'predict_time';
begin
    select * into v_job from job_queue where id = p_job_id;
    perform from image_generations
    where id = (v_job.payload ->> 'generation_id')::uuid
    for update;
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
        provider_metrics = coalesce(p_provider_metrics, provider_metrics),
        predict_time = case when jsonb_typeof(v_predict_time) = 'number'
                            then (v_predict_time #>> '{}')::numeric
                            when p_provider_metrics is null then predict_time end,
        updated_at = now()
    where id = (v_job.payload ->> 'generation_id')::uuid
      and status not in ('completed', 'failed');
    return v_download_id;
end
$$;

CREATE FUNCTION public.generation_parameters(p_prompt text, p_model_id text, p_model_version text DEFAULT NULL::text, p_width integer DEFAULT NULL::integer, p_height integer DEFAULT NULL::integer, p_num_inference_steps integer DEFAULT NULL::integer, p_guidance_scale numeric DEFAULT NULL::numeric, p_seed bigint DEFAULT NULL::bigint, p_negative_prompt text DEFAULT NULL::text, p_source_image_url text DEFAULT NULL::text, p_strength numeric DEFAULT NULL::numeric, p_style text DEFAULT NULL::text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
declare
    m models;
    v_width integer;
    v_height integer;
    v_steps integer;
    v_guidance numeric;
    v_strength numeric;
    v_scale numeric;
begin
    if p_prompt is null or imagegen.is_blank(p_prompt) then
        perform imagegen.invalid('prompt', 'prompt is required (it has no visible character)');
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
    -- Names and ids are short; the answer below quotes the value.
    if length(p_model_id) > 200 then
        perform imagegen.invalid('model_id', 'model_id must be at most 200 characters');
    end if;
    if length(p_model_version) > 200 then
        perform imagegen.invalid('model_version', 'model_version must be at most 200 characters');
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

    -- Any size the apps offer fits any model: beyond these bounds it is no image size.
    if v_width not between 128 and 8192 then
        perform imagegen.invalid('width', 'width must be between 128 and 8192');
    end if;
    if v_height not between 128 and 8192 then
        perform imagegen.invalid('height', 'height must be between 128 and 8192');
    end if;
    -- Within them, a size the model does not take is scaled, keeping its shape, until it
    -- does (then clamped where no scale fits both sides), on a multiple of 8.
    if v_width not between m.min_width and m.max_width
       or v_height not between m.min_height and m.max_height then
        v_scale := least(1.0, m.max_width::numeric / v_width, m.max_height::numeric / v_height);
        v_scale := greatest(v_scale, m.min_width::numeric / v_width,
                            m.min_height::numeric / v_height);
        v_width := least(greatest(round(v_width * v_scale / 8) * 8, m.min_width), m.max_width);
        v_height := least(greatest(round(v_height * v_scale / 8) * 8, m.min_height),
                          m.max_height);
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
$_$;

CREATE FUNCTION public.generation_queue_status(p_generation_id uuid, p_user_id uuid) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select imagegen.generation_status(p_generation_id, p_user_id)
$$;

CREATE FUNCTION public.generation_status(p_generation_id uuid) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select imagegen.generation_status(p_generation_id, auth.uid())
$$;

CREATE FUNCTION public.get_generation(p_generation_id uuid, p_user_id uuid) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select to_jsonb(g) || jsonb_build_object(
        'images', coalesce((select jsonb_agg(to_jsonb(i)) from images i
                            where i.generation_id = g.id), '[]'::jsonb))
    from image_generations g
    where g.id = p_generation_id and g.user_id = p_user_id
$$;

CREATE FUNCTION public.get_user_limits(p_user_id uuid) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select imagegen.rate_limits(p_user_id) - 'max_batch_size' - 'retry_at'
    where p_user_id = auth.uid() or auth.role() = 'service_role'
$$;

CREATE FUNCTION public.heartbeat_jobs(p_worker_id text, p_job_ids uuid[], p_lease_seconds integer DEFAULT 300) RETURNS SETOF uuid
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.invoke_worker() RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE TABLE public.models (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    display_name text NOT NULL,
    replicate_id text NOT NULL,
    version text,
    description text,
    default_width integer DEFAULT 1024 NOT NULL,
    default_height integer DEFAULT 1024 NOT NULL,
    default_steps integer DEFAULT 30 NOT NULL,
    default_guidance_scale numeric DEFAULT 7.5 NOT NULL,
    default_strength numeric,
    min_width integer DEFAULT 256 NOT NULL,
    max_width integer DEFAULT 2048 NOT NULL,
    min_height integer DEFAULT 256 NOT NULL,
    max_height integer DEFAULT 2048 NOT NULL,
    max_steps integer DEFAULT 50 NOT NULL,
    supports_img2img boolean DEFAULT false NOT NULL,
    supports_negative_prompt boolean DEFAULT false NOT NULL,
    supports_seed boolean DEFAULT true NOT NULL,
    supported_aspect_ratios jsonb,
    strength_min numeric DEFAULT 0 NOT NULL,
    strength_max numeric DEFAULT 1 NOT NULL,
    estimated_time_seconds integer,
    cost_per_generation numeric,
    is_active boolean DEFAULT true NOT NULL,
    is_default boolean DEFAULT false NOT NULL,
    sort_order integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT models_check CHECK (((min_width <= max_width) AND (min_height <= max_height))),
    CONSTRAINT models_check1 CHECK ((strength_min <= strength_max)),
    CONSTRAINT models_default_guidance_scale_check CHECK ((default_guidance_scale >= (0)::numeric)),
    CONSTRAINT models_default_height_check CHECK ((default_height > 0)),
    CONSTRAINT models_default_steps_check CHECK ((default_steps > 0)),
    CONSTRAINT models_default_strength_check CHECK (((default_strength >= (0)::numeric) AND (default_strength <= (1)::numeric))),
    CONSTRAINT models_default_width_check CHECK ((default_width > 0)),
    CONSTRAINT models_max_steps_check CHECK ((max_steps > 0)),
    CONSTRAINT models_min_height_check CHECK ((min_height > 0)),
    CONSTRAINT models_min_width_check CHECK ((min_width > 0)),
    CONSTRAINT models_strength_max_check CHECK ((strength_max <= (1)::numeric)),
    CONSTRAINT models_strength_min_check CHECK ((strength_min >= (0)::numeric))
);

CREATE FUNCTION public.list_models() RETURNS SETOF public.models
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select * from models where is_active order by sort_order, name
$$;

CREATE FUNCTION public.monitor_snapshot() RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
declare
    c_buckets constant integer := 60;  -- minutes shown
    c_failures constant integer := 10;  -- latest failure messages
    c_jobs_listed constant integer := 20;  -- held jobs listed per worker
    v_now timestamptz := now();
    -- Minute buckets [v_start + i, v_start + i + 1), i < c_buckets: the last ends now.
    v_start timestamptz := now() - make_interval(mins => c_buckets);
    v_provider jsonb;
    v_limit jsonb;
begin
    select jsonb_build_object(
        'provider', 'replicate',
        -- An attempt begun in the last minute has ended since (it is in attempt_history)
        -- or is running (started_at).
        'creates_last_minute', (
            select count(*) filter (where j.status = 'processing'
                                      and j.started_at > v_now - interval '1 minute')
                   + coalesce(sum((
                       select count(*) from jsonb_array_elements(j.attempt_history) a
                       where (a ->> 'started_at')::timestamptz > v_now - interval '1 minute')),
                       0)
            from imagegen.monitor_jobs(v_now - interval '1 minute') j
            where j.job_type = 'generate-image' and j.attempts > 0
        ),
        'predictions_running', (
            select count(*) from image_generations
            where status = 'processing' and replicate_prediction_id is not null
        ),
        'limit_per_minute', null,
        'paused_until', null
    ) into v_provider;

    if to_regclass('imagegen.provider_limits') is not null then
        execute $q$
            select jsonb_build_object(
                'limit_per_minute', nullif(creates_per_minute, 0),
                'paused_until', case when paused_until > now() then paused_until end)
            from imagegen.provider_limits where provider = 'replicate'
        $q$ into v_limit;
        v_provider := v_provider || coalesce(v_limit, '{}'::jsonb);
    end if;

    return jsonb_build_object(
        'generated_at', v_now,
        'window', jsonb_build_object(
            'start', v_start, 'minutes', c_buckets, 'bucket_seconds', 60),
        'queue', jsonb_build_object(
            'now', (select coalesce(jsonb_agg(to_jsonb(d) order by d.job_type, d.status),
                                    '[]'::jsonb)
                    from queue_depth() d),
            'pending', (select coalesce(sum(d.count), 0) from queue_depth() d
                        where d.status = 'pending'),
            'processing', (select coalesce(sum(d.count), 0) from queue_depth() d
                           where d.status = 'processing'),
            -- Depth sampled at the end of each bucket: the last sample is now.
            'series', imagegen.monitor_series(v_start + interval '1 minute', c_buckets - 1)),
        'throughput', (
            select jsonb_build_object(
                'completed', count(*) filter (where status = 'completed'),
                'failed', count(*) filter (where status = 'failed'),
                'failure_rate', round(count(*) filter (where status = 'failed')::numeric
                                      / nullif(count(*), 0), 4),
                'per_minute', (
                    select jsonb_agg(jsonb_build_object('completed', b.completed,
                                                        'failed', b.failed) order by b.i)
                    from (
                        select i,
                               count(j.id) filter (where j.status = 'completed') as completed,
                               count(j.id) filter (where j.status = 'failed') as failed
                        from generate_series(0, c_buckets - 1) i
                        left join job_queue j
                            on j.status in ('completed', 'failed')
                           and j.completed_at >= v_start + make_interval(mins => i)
                           and j.completed_at < v_start + make_interval(mins => i + 1)
                        group by i
                    ) b),
                'by_type', (
                    select coalesce(jsonb_agg(jsonb_build_object(
                               'job_type', t.job_type, 'completed', t.completed,
                               'failed', t.failed,
                               'failure_rate', round(t.failed::numeric
                                                     / nullif(t.completed + t.failed, 0), 4))
                           order by t.job_type), '[]'::jsonb)
                    from queue_throughput t))
            from job_queue
            where status in ('completed', 'failed') and completed_at >= v_start),
        'failures', (
            select coalesce(jsonb_agg(f order by f ->> 'finished_at' desc), '[]'::jsonb)
            from (
                select jsonb_build_object(
                           'job_id', j.id, 'job_type', j.job_type,
                           'attempt', a -> 'attempt', 'worker', a -> 'worker',
                           'outcome', a -> 'outcome', 'error', a -> 'error',
                           'error_kind', a -> 'error_kind', 'finished_at', a -> 'finished_at'
                       ) as f
                from imagegen.monitor_jobs(v_start) j, jsonb_array_elements(j.attempt_history) a
                where a ->> 'outcome' in ('retry', 'failed', 'lost')
                  and (a ->> 'finished_at')::timestamptz >= v_start
                order by (a ->> 'finished_at')::timestamptz desc
                limit c_failures
            ) latest),
        'durations', (
            select coalesce(jsonb_agg(jsonb_build_object(
                       'model', model, 'count', n,
                       'p50_seconds', round(p50::numeric, 2),
                       'p95_seconds', round(p95::numeric, 2)) order by model), '[]'::jsonb)
            from (
                select coalesce(model, '(unknown)') as model, count(*) as n,
                       percentile_cont(0.5) within group (order by generation_time_seconds)
                           as p50,
                       percentile_cont(0.95) within group (order by generation_time_seconds)
                           as p95
                from image_generations
                where status = 'completed' and completed_at >= v_start
                  and generation_time_seconds is not null
                group by coalesce(model, '(unknown)')
            ) m),
        'workers', (
            with held as (
                select locked_by as worker_id, count(*) as n, max(locked_until) as lease_until,
                       jsonb_agg(jsonb_build_object(
                                     'job_id', id, 'job_type', job_type, 'attempt', attempts,
                                     'started_at', started_at)
                                 order by started_at) filter (where rank <= c_jobs_listed)
                           as jobs
                from (select *, row_number() over (partition by locked_by order by started_at)
                                    as rank
                      from job_queue
                      where status = 'processing' and locked_by is not null) p
                group by locked_by
            ),
            registered as (
                select s.worker_id, s.registered_at,
                       exists (select from pg_locks l
                               where l.locktype = 'advisory' and l.granted
                                 and l.objsubid = 1
                                 and l.classid = ((s.lock_key >> 32) & 4294967295)::oid
                                 and l.objid = (s.lock_key & 4294967295)::oid) as alive
                from imagegen.worker_sessions s
            )
            -- A worker holding jobs without registering (the PostgREST gateway, the old
            -- worker): alive unknown (null).
            select coalesce(jsonb_agg(jsonb_build_object(
                       'worker_id', worker_id,
                       'registered_at', r.registered_at,
                       'alive', r.alive,
                       'holding', coalesce(h.n, 0),
                       'lease_until', h.lease_until,
                       'jobs', coalesce(h.jobs, '[]'::jsonb))
                   order by worker_id), '[]'::jsonb)
            from registered r full join held h using (worker_id)),
        'provider', v_provider
    );
end
$_$;

CREATE FUNCTION public.nudge_workers() RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select pg_notify('job_queue', 'nudge')
$$;

CREATE FUNCTION public.pause_provider(p_provider text, p_seconds double precision) RETURNS double precision
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.process_queue(p_user_id uuid) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    g image_generations;
    p jsonb;
    v_started integer := 0;
begin
    for g in
        select * from image_generations i
        where i.user_id = p_user_id and i.status = 'pending'
        order by i.priority desc, i.created_at
        for update skip locked
    loop
        continue when imagegen.active_job(g.id) is not null;
        begin
            p := imagegen.row_parameters(g);
        exception when invalid_parameter_value then
            update image_generations
            set status = 'failed', error_message = sqlerrm, updated_at = now()
            where id = g.id;
            continue;
        end;
        begin
            perform imagegen.admit_generation(p_user_id,
                                              p_counted => not imagegen.ran_before(g.id));
        exception when sqlstate 'PT429' or sqlstate 'PT503' then
            exit;
        end;
        perform imagegen.queue_generation(g.id, p);
        v_started := v_started + 1;
    end loop;
    return v_started;
end
$$;

CREATE FUNCTION public.prune_finished_jobs(p_older_than interval DEFAULT NULL::interval) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
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
    delete from imagegen.webhook_deliveries
    where received_at < now() - greatest(v_age, imagegen.webhook_dedupe_floor());
    -- Expired as start_once reads it (created_at <= now() - window).
    delete from imagegen.idempotent_requests
    where created_at <= now() - imagegen.idempotency_window();
    return v_deleted;
end
$_$;

CREATE FUNCTION public.queue_depth() RETURNS TABLE(job_type text, status text, count bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select job_type, status, count(*)
    from job_queue
    where status in ('pending', 'processing')
    group by job_type, status
$$;

CREATE FUNCTION public.reclaim_dead_workers() RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.record_prediction(p_job_id uuid, p_worker_id text, p_prediction_id text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_job job_queue;
begin
    update image_generations
    set replicate_prediction_id = p_prediction_id, prediction_requested_at = null,
        updated_at = now()
    where id = imagegen.held_generation(p_job_id, p_worker_id);
    if found then
        return true;
    end if;
    select * into v_job from job_queue where id = p_job_id;
    if v_job.status = 'cancelled'
       and not exists (select from image_generations
                       where replicate_prediction_id = p_prediction_id) then
        perform imagegen.cancel_prediction_later(
            p_prediction_id, (v_job.payload ->> 'generation_id')::uuid, v_job.created_by);
    end if;
    return false;
exception when unique_violation then
    return false;
end
$$;

CREATE FUNCTION public.register_worker(p_worker_id text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.release_jobs(p_worker_id text, p_job_ids uuid[]) RETURNS integer
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with released as (
        update job_queue
        set status = 'pending', attempts = greatest(attempts - 1, 0), scheduled_at = now(),
            locked_by = null, locked_until = null, updated_at = now()
        where id = any (p_job_ids) and status = 'processing' and locked_by = p_worker_id
        returning id
    )
    select count(*)::integer from released
$$;

CREATE FUNCTION public.release_prediction(p_job_id uuid, p_worker_id text, p_prediction_id text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    update image_generations
    set replicate_prediction_id = null, updated_at = now()
    where id = imagegen.held_generation(p_job_id, p_worker_id)
      and replicate_prediction_id = p_prediction_id;
    return found;
end
$$;

CREATE FUNCTION public.request_prediction(p_job_id uuid, p_worker_id text) RETURNS timestamp with time zone
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    update image_generations
    set prediction_requested_at = coalesce(prediction_requested_at, now()), updated_at = now()
    where id = imagegen.held_generation(p_job_id, p_worker_id)
    returning prediction_requested_at
$$;

CREATE FUNCTION public.snooze_job(p_job_id uuid, p_worker_id text, p_until timestamp with time zone) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with snoozed as (
        update job_queue
        set status = 'pending', attempts = greatest(attempts - 1, 0),
            scheduled_at = greatest(coalesce(p_until, now()), now()),
            locked_by = null, locked_until = null, updated_at = now()
        where id = p_job_id and status = 'processing' and locked_by = p_worker_id
        returning id
    )
    select exists (select from snoozed)
$$;

CREATE FUNCTION public.start_batch(p_user_id uuid, p_request jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_prompts jsonb := p_request -> 'prompts';
    v_settings jsonb := coalesce(nullif(p_request -> 'shared_settings', 'null'), '{}'::jsonb);
    v_name text := nullif(p_request ->> 'batch_name', '');
    v_count integer;
    v_max integer;
    v_params jsonb[] := '{}';
    v_prompt jsonb;
    v_max_steps integer;
    p jsonb;
    v_batch_id uuid;
    v_generation_id uuid;
    v_generations jsonb := '[]'::jsonb;
    v_index integer := 0;
begin
    if p_user_id is null or not exists (select from auth.users where id = p_user_id) then
        perform imagegen.invalid('user_id', 'Unknown user');
    end if;
    if jsonb_typeof(p_request) is distinct from 'object' then
        perform imagegen.invalid('body', 'the request must be a JSON object');
    end if;
    if jsonb_typeof(v_prompts) is distinct from 'array' or jsonb_array_length(v_prompts) = 0 then
        perform imagegen.invalid('prompts', 'prompts must be a non-empty list');
    end if;
    if jsonb_typeof(v_settings) <> 'object' then
        perform imagegen.invalid('shared_settings', 'shared_settings must be an object');
    end if;
    v_count := jsonb_array_length(v_prompts);
    v_max := (imagegen.rate_limits(p_user_id, v_count) ->> 'max_batch_size')::integer;
    if v_max > 0 and v_count > v_max then
        perform imagegen.invalid('prompts', format('a batch holds at most %s prompts', v_max));
    end if;
    if v_name is not null and length(v_name) > 200 then
        perform imagegen.invalid('batch_name', 'batch_name must be at most 200 characters');
    end if;

    select max_steps into v_max_steps from models
    where id::text = lower(v_settings ->> 'model_id') or replicate_id = v_settings ->> 'model_id'
    limit 1;
    for v_prompt in select value from jsonb_array_elements(v_prompts) loop
        if jsonb_typeof(v_prompt) <> 'object' then
            perform imagegen.invalid('prompts', 'each prompt must be an object with text');
        end if;
        begin
            v_params := v_params || generation_parameters(
                p_prompt => v_prompt ->> 'text',
                p_model_id => v_settings ->> 'model_id',
                p_model_version => nullif(v_settings ->> 'model_version', ''),
                p_width => (v_settings ->> 'width')::integer,
                p_height => (v_settings ->> 'height')::integer,
                p_num_inference_steps => least((v_settings ->> 'steps')::integer,
                                               coalesce(v_max_steps, 50)),
                p_guidance_scale => least((v_settings ->> 'guidance_scale')::numeric, 50),
                p_seed => (v_prompt ->> 'seed')::bigint,
                p_negative_prompt => nullif(v_prompt ->> 'negative_prompt', '')
            );
        exception when invalid_text_representation or numeric_value_out_of_range then
            perform imagegen.invalid('shared_settings', 'shared_settings: ' || sqlerrm);
        end;
    end loop;

    perform imagegen.admit_generation(p_user_id, v_count);

    p := v_params[1];
    insert into batch_generations (user_id, name, total_count, completed_count, failed_count,
                                   status, model_id, model_version, width, height, steps,
                                   guidance_scale)
    values (p_user_id, coalesce(v_name, 'Batch ' || to_char(now(), 'YYYY-MM-DD HH24:MI')),
            v_count, 0, 0, 'processing', p ->> 'model_row_id', p ->> 'model_version',
            (p ->> 'width')::integer, (p ->> 'height')::integer,
            (p ->> 'num_inference_steps')::integer, (p ->> 'guidance_scale')::numeric)
    returning id into v_batch_id;

    foreach p in array v_params loop
        insert into image_generations (
            user_id, prompt, negative_prompt, model, model_id, width, height, steps,
            guidance_scale, seed, status, batch_id, batch_index
        )
        values (
            p_user_id, p ->> 'prompt', p ->> 'negative_prompt', p ->> 'model_name',
            (p ->> 'model_row_id')::uuid, (p ->> 'width')::integer, (p ->> 'height')::integer,
            (p ->> 'num_inference_steps')::integer, (p ->> 'guidance_scale')::numeric,
            (p ->> 'seed')::bigint, 'pending', v_batch_id, v_index
        )
        returning id into v_generation_id;
        perform imagegen.queue_generation(v_generation_id, p);
        v_generations := v_generations || jsonb_build_object(
            'id', v_generation_id, 'index', v_index, 'prompt', p ->> 'prompt',
            'status', 'queued');
        v_index := v_index + 1;
    end loop;

    return jsonb_build_object(
        'id', v_batch_id,
        'name', (select name from batch_generations where id = v_batch_id),
        'total_count', v_count,
        'generations', v_generations
    );
end
$$;

CREATE FUNCTION public.start_generation(p_user_id uuid, p_prompt text, p_model_id text, p_model_version text DEFAULT NULL::text, p_width integer DEFAULT NULL::integer, p_height integer DEFAULT NULL::integer, p_num_inference_steps integer DEFAULT NULL::integer, p_guidance_scale numeric DEFAULT NULL::numeric, p_seed bigint DEFAULT NULL::bigint, p_negative_prompt text DEFAULT NULL::text, p_source_image_url text DEFAULT NULL::text, p_strength numeric DEFAULT NULL::numeric, p_style text DEFAULT NULL::text, p_priority integer DEFAULT 0) RETURNS TABLE(generation_id uuid, job_id uuid)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.start_legacy_generation(p_user_id uuid, p_prompt text, p_model_id text, p_generation_id uuid DEFAULT NULL::uuid, p_model_version text DEFAULT NULL::text, p_width integer DEFAULT NULL::integer, p_height integer DEFAULT NULL::integer, p_num_inference_steps integer DEFAULT NULL::integer, p_guidance_scale numeric DEFAULT NULL::numeric, p_seed bigint DEFAULT NULL::bigint, p_negative_prompt text DEFAULT NULL::text, p_source_image_url text DEFAULT NULL::text, p_strength numeric DEFAULT NULL::numeric, p_style text DEFAULT NULL::text) RETURNS TABLE(generation_id uuid, job_id uuid, status text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    g image_generations;
    p jsonb;
    v_job_id uuid;
begin
    if p_generation_id is null then
        return query
        select s.generation_id, s.job_id, 'queued'::text
        from start_generation(p_user_id, p_prompt, p_model_id, p_model_version, p_width,
                              p_height, p_num_inference_steps, p_guidance_scale, p_seed,
                              p_negative_prompt, p_source_image_url, p_strength, p_style) s;
        return;
    end if;

    -- Locked: a second call for this row waits here, then finds it queued.
    select * into g from image_generations i
    where i.id = p_generation_id and i.user_id = p_user_id
    for update;
    if not found then
        perform imagegen.invalid('generation_id', 'Unknown generation');
    end if;
    v_job_id := imagegen.active_job(g.id);
    -- Not ended and nothing working on it (the app's new row; an orphan): start it.
    if imagegen.is_active(g.status) and v_job_id is null then
        p := generation_parameters(
            p_prompt, p_model_id, p_model_version, p_width, p_height, p_num_inference_steps,
            p_guidance_scale, p_seed, p_negative_prompt, p_source_image_url, p_strength, p_style
        );
        perform imagegen.admit_generation(p_user_id,
                                          p_counted => not imagegen.ran_before(g.id));
        v_job_id := imagegen.queue_generation(g.id, p);
        return query select g.id, v_job_id, 'queued'::text;
        return;
    end if;
    return query select g.id, v_job_id, g.status;
end
$$;

CREATE FUNCTION public.start_once(p_user_id uuid, p_key text, p_endpoint text, p_request jsonb) RETURNS TABLE(response jsonb, replayed boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
declare
    v_hash bytea;
    v_response jsonb;
    v_stored imagegen.idempotent_requests;
begin
    if p_key is null or length(p_key) not between 1 and 255 or p_key !~ '^[\x20-\x7e]+$' then
        perform imagegen.invalid('Idempotency-Key',
            'must be 1 to 255 printable ASCII characters');
    end if;
    if p_endpoint is null or p_endpoint not in ('start-generation', 'batch-generate') then
        perform imagegen.invalid('endpoint', 'must be start-generation or batch-generate');
    end if;
    if jsonb_typeof(p_request) is distinct from 'object' then
        perform imagegen.invalid('body', 'the request must be a JSON object');
    end if;
    if p_user_id is null or not exists (select from auth.users where id = p_user_id) then
        perform imagegen.invalid('user_id', 'Unknown user');
    end if;
    v_hash := sha256(convert_to(p_endpoint || ' ' || p_request::text, 'UTF8'));

    -- An expired key is forgotten (it starts anew), and each new key takes a few of
    -- everyone's expired ones with it, so the table holds about a day of keys.
    delete from imagegen.idempotent_requests r
    where r.user_id = p_user_id and r.key = p_key
      and r.created_at <= now() - imagegen.idempotency_window();
    delete from imagegen.idempotent_requests r
    where (r.user_id, r.key) in (
        select o.user_id, o.key from imagegen.idempotent_requests o
        where o.created_at <= now() - imagegen.idempotency_window()
        order by o.created_at
        limit 8
        for update skip locked);

    for attempt in 1..2 loop
        insert into imagegen.idempotent_requests (user_id, key, request_hash)
        values (p_user_id, p_key, v_hash)
        on conflict do nothing;
        if found then
            if p_endpoint = 'start-generation' then
                select to_jsonb(s) into v_response
                from start_generation(
                    p_user_id => p_user_id,
                    p_prompt => p_request ->> 'prompt',
                    p_model_id => p_request ->> 'model_id',
                    p_model_version => p_request ->> 'model_version',
                    p_width => (p_request ->> 'width')::integer,
                    p_height => (p_request ->> 'height')::integer,
                    p_num_inference_steps => (p_request ->> 'num_inference_steps')::integer,
                    p_guidance_scale => (p_request ->> 'guidance_scale')::numeric,
                    p_seed => (p_request ->> 'seed')::bigint,
                    p_negative_prompt => p_request ->> 'negative_prompt',
                    p_source_image_url => p_request ->> 'source_image_url',
                    p_strength => (p_request ->> 'strength')::numeric,
                    p_style => p_request ->> 'style'
                ) s;
            else
                v_response := start_batch(p_user_id, p_request);
            end if;
            update imagegen.idempotent_requests r set response = v_response
            where r.user_id = p_user_id and r.key = p_key;
            return query select v_response, false;
            return;
        end if;
        -- Taken: by a committed request (the insert waited for it to end).
        select * into v_stored from imagegen.idempotent_requests r
        where r.user_id = p_user_id and r.key = p_key;
        if found then
            if v_stored.request_hash <> v_hash then
                raise exception using errcode = 'PT422',
                    message = 'Idempotency-Key was already used with a different request',
                    hint = 'use a new key for a new request';
            end if;
            return query select v_stored.response, true;
            return;
        end if;
        -- Gone meanwhile (expired and cleaned by another request): take it again.
    end loop;
    raise exception 'Idempotency-Key could not be claimed; retry';
end
$_$;

CREATE FUNCTION public.storage_missing_folders(p_folders text[], p_before timestamp with time zone, p_sample integer DEFAULT 20) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
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
$_$;

CREATE FUNCTION public.storage_missing_objects(p_folder text, p_names text[], p_before timestamp with time zone, p_sample integer DEFAULT 20) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
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
$_$;

CREATE FUNCTION public.storage_object_verdicts(p_names text[], p_updated_at text[], p_grace_seconds integer DEFAULT 86400) RETURNS TABLE(name text, verdict text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.take_provider_token(p_provider text, p_job_id uuid DEFAULT NULL::uuid) RETURNS double precision
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.wake_prediction_job(p_prediction_id text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
declare
    v_job job_queue;
begin
    select j.* into v_job
    from image_generations g
    join job_queue j on j.dedupe_key = 'generate-image:' || g.id
                    and j.status in ('pending', 'processing')
    where g.replicate_prediction_id = p_prediction_id
    for update of j;
    if not found then
        return 'none';
    end if;
    if v_job.status = 'processing' then
        return 'busy';
    end if;
    update job_queue
    set scheduled_at = least(scheduled_at, now()), updated_at = now()
    where id = v_job.id;
    perform pg_notify('job_queue', 'generate-image');
    return 'woken';
end
$$;

CREATE FUNCTION public.withdraw_prediction_request(p_job_id uuid, p_worker_id text, p_requested_at timestamp with time zone) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    with withdrawn as (
        update image_generations g
        set prediction_requested_at = null, updated_at = now()
        from job_queue j
        where j.id = p_job_id and j.status = 'processing' and j.locked_by = p_worker_id
          and g.id = (j.payload ->> 'generation_id')::uuid
          and g.prediction_requested_at = p_requested_at
          and g.prediction_requested_at >= j.started_at
        returning g.id
    )
    select exists (select from withdrawn)
$$;

CREATE TABLE auth.users (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    email text,
    raw_user_meta_data jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE imagegen.idempotent_requests (
    user_id uuid NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    response jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE imagegen.migrations (
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE imagegen.provider_limits (
    provider text NOT NULL,
    creates_per_minute integer NOT NULL,
    burst numeric NOT NULL,
    tokens numeric NOT NULL,
    refilled_at timestamp with time zone DEFAULT now() NOT NULL,
    paused_until timestamp with time zone,
    CONSTRAINT provider_limits_burst_check CHECK ((burst >= (1)::numeric)),
    CONSTRAINT provider_limits_creates_per_minute_check CHECK ((creates_per_minute >= 0))
);

CREATE TABLE imagegen.provider_turns (
    job_id uuid NOT NULL,
    provider text NOT NULL,
    turn_at timestamp with time zone NOT NULL
);

CREATE TABLE imagegen.queue_depth_sample (
    id boolean DEFAULT true NOT NULL,
    depth integer NOT NULL,
    counted_at timestamp with time zone NOT NULL,
    CONSTRAINT queue_depth_sample_id_check CHECK (id)
);

CREATE TABLE imagegen.settings (
    key text NOT NULL,
    value text NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE imagegen.webhook_deliveries (
    webhook_id text NOT NULL,
    prediction_id text NOT NULL,
    status text,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT webhook_deliveries_webhook_id_check CHECK (((length(webhook_id) >= 1) AND (length(webhook_id) <= 200)))
);

CREATE TABLE imagegen.worker_sessions (
    worker_id text NOT NULL,
    lock_key bigint NOT NULL,
    registered_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE net._http_response (
    id bigint NOT NULL,
    status_code integer,
    content_type text,
    content text,
    timed_out boolean DEFAULT false NOT NULL,
    error_msg text,
    created timestamp with time zone DEFAULT now() NOT NULL
);

CREATE SEQUENCE net.http_request_queue_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE public.batch_generations (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    user_id uuid,
    name text,
    total_count integer NOT NULL,
    completed_count integer DEFAULT 0,
    failed_count integer DEFAULT 0,
    status text DEFAULT 'pending'::text,
    model_id text,
    model_version text,
    width integer,
    height integer,
    steps integer,
    guidance_scale numeric,
    is_multi_generation boolean DEFAULT false,
    multi_count integer,
    created_at timestamp with time zone DEFAULT now(),
    completed_at timestamp with time zone
);

CREATE VIEW public.batch_progress AS
SELECT
    NULL::uuid AS id,
    NULL::uuid AS user_id,
    NULL::text AS name,
    NULL::integer AS total_count,
    NULL::integer AS completed_count,
    NULL::integer AS failed_count,
    NULL::bigint AS processing_count,
    NULL::bigint AS pending_count,
    NULL::text AS status,
    NULL::timestamp with time zone AS created_at,
    NULL::timestamp with time zone AS completed_at,
    NULL::jsonb AS items;

CREATE VIEW public.failed_jobs_recent WITH (security_invoker='true') AS
 SELECT job_queue.id,
    job_queue.job_type,
    job_queue.payload,
    job_queue.attempts,
    job_queue.max_attempts,
    job_queue.error_message,
    job_queue.error_details,
    job_queue.created_by,
    job_queue.created_at,
    job_queue.started_at,
    job_queue.completed_at,
    job_queue.updated_at
   FROM public.job_queue
  WHERE ((job_queue.status = 'failed'::text) AND (job_queue.updated_at > (now() - '24:00:00'::interval)))
  ORDER BY job_queue.updated_at DESC;

CREATE VIEW public.generation_costs WITH (security_invoker='true') AS
 SELECT image_generations.user_id,
    image_generations.model,
    ((image_generations.created_at AT TIME ZONE 'UTC'::text))::date AS day,
    count(*) AS generations,
    count(*) FILTER (WHERE (image_generations.status = 'completed'::text)) AS succeeded,
    count(*) FILTER (WHERE (image_generations.status = 'failed'::text)) AS failed,
    COALESCE(sum(image_generations.predict_time), (0)::numeric) AS predict_seconds,
    COALESCE(sum(image_generations.estimated_cost), (0)::numeric) AS estimated_cost
   FROM public.image_generations
  GROUP BY image_generations.user_id, image_generations.model, (((image_generations.created_at AT TIME ZONE 'UTC'::text))::date);

CREATE VIEW public.provider_limit_status WITH (security_invoker='true') AS
 SELECT l.provider,
    l.creates_per_minute,
    l.burst,
        CASE
            WHEN (l.creates_per_minute = 0) THEN NULL::numeric
            ELSE round(LEAST(l.burst, (l.tokens + (((l.creates_per_minute)::numeric / 60.0) * GREATEST(EXTRACT(epoch FROM (now() - l.refilled_at)), (0)::numeric)))), 2)
        END AS tokens,
        CASE
            WHEN (l.paused_until > now()) THEN l.paused_until
            ELSE NULL::timestamp with time zone
        END AS paused_until,
    ( SELECT count(*) AS count
           FROM imagegen.provider_turns t
          WHERE ((t.provider = l.provider) AND (t.turn_at > now()))) AS turns_waiting,
    ( SELECT max(t.turn_at) AS max
           FROM imagegen.provider_turns t
          WHERE (t.provider = l.provider)) AS last_turn_at
   FROM imagegen.provider_limits l;

CREATE VIEW public.queue_health WITH (security_invoker='true') AS
 SELECT job_queue.job_type,
    job_queue.status,
    count(*) AS count,
    min(job_queue.created_at) AS oldest_job,
    max(job_queue.created_at) AS newest_job,
    avg(EXTRACT(epoch FROM (job_queue.completed_at - job_queue.started_at))) FILTER (WHERE ((job_queue.completed_at IS NOT NULL) AND (job_queue.started_at IS NOT NULL))) AS avg_duration_seconds,
    avg(job_queue.attempts) AS avg_attempts
   FROM public.job_queue
  GROUP BY job_queue.job_type, job_queue.status;

CREATE VIEW public.queue_throughput WITH (security_invoker='true') AS
 SELECT job_queue.job_type,
    count(*) FILTER (WHERE (job_queue.status = 'completed'::text)) AS completed,
    count(*) FILTER (WHERE (job_queue.status = 'failed'::text)) AS failed,
    round(((count(*) FILTER (WHERE (job_queue.status = 'completed'::text)))::numeric / 60.0), 2) AS completed_per_minute,
    percentile_cont((0.5)::double precision) WITHIN GROUP (ORDER BY ((EXTRACT(epoch FROM (job_queue.started_at - job_queue.created_at)))::double precision)) AS p50_wait_seconds,
    percentile_cont((0.95)::double precision) WITHIN GROUP (ORDER BY ((EXTRACT(epoch FROM (job_queue.started_at - job_queue.created_at)))::double precision)) AS p95_wait_seconds,
    percentile_cont((0.5)::double precision) WITHIN GROUP (ORDER BY ((EXTRACT(epoch FROM (job_queue.completed_at - job_queue.started_at)))::double precision)) AS p50_run_seconds,
    percentile_cont((0.95)::double precision) WITHIN GROUP (ORDER BY ((EXTRACT(epoch FROM (job_queue.completed_at - job_queue.started_at)))::double precision)) AS p95_run_seconds
   FROM public.job_queue
  WHERE ((job_queue.completed_at > (now() - '01:00:00'::interval)) AND (job_queue.status = ANY (ARRAY['completed'::text, 'failed'::text])))
  GROUP BY job_queue.job_type;

CREATE VIEW public.stuck_jobs WITH (security_invoker='true') AS
 SELECT job_queue.id,
    job_queue.job_type,
    job_queue.payload,
    job_queue.attempts,
    job_queue.max_attempts,
    job_queue.locked_by,
    job_queue.locked_until,
    job_queue.started_at,
    job_queue.updated_at,
    job_queue.created_by,
    round((EXTRACT(epoch FROM (now() - job_queue.started_at)) / 60.0), 1) AS minutes_processing,
    (EXTRACT(epoch FROM (now() - job_queue.started_at)) / (60)::numeric) AS minutes_stuck
   FROM public.job_queue
  WHERE ((job_queue.status = 'processing'::text) AND (job_queue.started_at < (now() - '00:10:00'::interval)))
  ORDER BY job_queue.started_at;

CREATE TABLE public.user_rate_limits (
    user_id uuid NOT NULL,
    daily_generations_count integer DEFAULT 0,
    daily_generations_limit integer,
    daily_reset_at timestamp with time zone,
    hourly_generations_count integer DEFAULT 0,
    hourly_generations_limit integer,
    hourly_reset_at timestamp with time zone,
    last_generation_at timestamp with time zone,
    max_batch_size integer,
    max_concurrent_generations integer,
    total_generations_all_time integer DEFAULT 0,
    updated_at timestamp with time zone DEFAULT now()
);

ALTER TABLE ONLY auth.users
    ADD CONSTRAINT users_email_key UNIQUE (email);

ALTER TABLE ONLY auth.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

ALTER TABLE ONLY imagegen.idempotent_requests
    ADD CONSTRAINT idempotent_requests_pkey PRIMARY KEY (user_id, key);

ALTER TABLE ONLY imagegen.migrations
    ADD CONSTRAINT migrations_pkey PRIMARY KEY (name);

ALTER TABLE ONLY imagegen.provider_limits
    ADD CONSTRAINT provider_limits_pkey PRIMARY KEY (provider);

ALTER TABLE ONLY imagegen.provider_turns
    ADD CONSTRAINT provider_turns_pkey PRIMARY KEY (job_id);

ALTER TABLE ONLY imagegen.queue_depth_sample
    ADD CONSTRAINT queue_depth_sample_pkey PRIMARY KEY (id);

ALTER TABLE ONLY imagegen.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (key);

ALTER TABLE ONLY imagegen.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (webhook_id);

ALTER TABLE ONLY imagegen.worker_sessions
    ADD CONSTRAINT worker_sessions_pkey PRIMARY KEY (worker_id);

ALTER TABLE ONLY net._http_response
    ADD CONSTRAINT _http_response_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.batch_generations
    ADD CONSTRAINT batch_generations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.image_generations
    ADD CONSTRAINT image_generations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.job_queue
    ADD CONSTRAINT job_queue_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.models
    ADD CONSTRAINT models_name_key UNIQUE (name);

ALTER TABLE ONLY public.models
    ADD CONSTRAINT models_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.models
    ADD CONSTRAINT models_replicate_id_key UNIQUE (replicate_id);

ALTER TABLE ONLY public.user_rate_limits
    ADD CONSTRAINT user_rate_limits_pkey PRIMARY KEY (user_id);

CREATE INDEX idempotent_requests_created_at_idx ON imagegen.idempotent_requests USING btree (created_at);

CREATE INDEX provider_turns_turn_at_idx ON imagegen.provider_turns USING btree (turn_at);

CREATE INDEX webhook_deliveries_received_idx ON imagegen.webhook_deliveries USING btree (received_at);

CREATE INDEX batch_generations_user_created_idx ON public.batch_generations USING btree (user_id, created_at DESC);

CREATE INDEX image_generations_active_idx ON public.image_generations USING btree (status, updated_at) WHERE (status = ANY (ARRAY['pending'::text, 'queued'::text, 'processing'::text, 'downloading'::text]));

CREATE INDEX image_generations_batch_idx ON public.image_generations USING btree (batch_id, batch_index) WHERE (batch_id IS NOT NULL);

CREATE INDEX image_generations_model_completed_idx ON public.image_generations USING btree (model, completed_at DESC) INCLUDE (generation_time_seconds) WHERE (status = 'completed'::text);

CREATE UNIQUE INDEX image_generations_replicate_prediction_id_key ON public.image_generations USING btree (replicate_prediction_id) WHERE (replicate_prediction_id IS NOT NULL);

CREATE INDEX image_generations_user_active_idx ON public.image_generations USING btree (user_id) WHERE (status = ANY (ARRAY['pending'::text, 'queued'::text, 'processing'::text, 'downloading'::text]));

CREATE INDEX image_generations_user_created_idx ON public.image_generations USING btree (user_id, created_at DESC);

CREATE UNIQUE INDEX images_one_per_generation_idx ON public.images USING btree (generation_id);

CREATE INDEX images_public_url_escaped_idx ON public.images USING btree (id) WHERE ("substring"(public_url, '/storage/v1/object/(?:public|authenticated|sign)/[^/?#]+/([^?#]+)'::text) ~~ '%\%%'::text);

CREATE INDEX images_public_url_path_idx ON public.images USING btree ("substring"(public_url, '/storage/v1/object/(?:public|authenticated|sign)/[^/?#]+/([^?#]+)'::text));

CREATE INDEX images_storage_folder_idx ON public.images USING btree (regexp_replace(storage_path, '/?[^/]*$'::text, ''::text), created_at);

CREATE INDEX images_storage_path_idx ON public.images USING btree (storage_path);

CREATE INDEX images_user_created_idx ON public.images USING btree (user_id, created_at DESC);

CREATE INDEX job_queue_created_by_idx ON public.job_queue USING btree (created_by, created_at DESC) WHERE (created_by IS NOT NULL);

CREATE UNIQUE INDEX job_queue_dedupe_idx ON public.job_queue USING btree (dedupe_key) WHERE ((dedupe_key IS NOT NULL) AND (status = ANY (ARRAY['pending'::text, 'processing'::text])));

CREATE INDEX job_queue_deferred_idx ON public.job_queue USING btree (scheduled_at) INCLUDE (priority, turn, created_at) WHERE ((status = 'pending'::text) AND (scheduled_at > created_at));

CREATE INDEX job_queue_finished_idx ON public.job_queue USING btree (completed_at) WHERE (status = ANY (ARRAY['completed'::text, 'failed'::text, 'cancelled'::text]));

CREATE INDEX job_queue_generation_idx ON public.job_queue USING btree (((payload ->> 'generation_id'::text))) WHERE (payload ? 'generation_id'::text);

CREATE INDEX job_queue_lease_idx ON public.job_queue USING btree (locked_until) WHERE (status = 'processing'::text);

CREATE INDEX job_queue_owner_turn_idx ON public.job_queue USING btree (COALESCE((created_by)::text, (payload ->> 'user_id'::text)), priority, turn) WHERE (status = 'pending'::text);

CREATE INDEX job_queue_ready_idx ON public.job_queue USING btree (priority DESC, turn, created_at) WHERE ((status = 'pending'::text) AND (scheduled_at <= created_at));

CREATE UNIQUE INDEX models_one_default_idx ON public.models USING btree (is_default) WHERE is_default;

CREATE OR REPLACE VIEW public.batch_progress WITH (security_invoker='true') AS
 SELECT b.id,
    b.user_id,
    b.name,
    b.total_count,
    b.completed_count,
    b.failed_count,
    count(g.id) FILTER (WHERE (g.status = ANY (ARRAY['queued'::text, 'processing'::text, 'downloading'::text]))) AS processing_count,
    count(g.id) FILTER (WHERE (g.status = 'pending'::text)) AS pending_count,
    b.status,
    b.created_at,
    b.completed_at,
    COALESCE(jsonb_agg(jsonb_build_object('id', g.id, 'index', g.batch_index, 'prompt', g.prompt, 'status', g.status, 'error_message', g.error_message, 'retry_count', g.retry_count, 'image_url', ( SELECT i.public_url
           FROM public.images i
          WHERE (i.generation_id = g.id)
          ORDER BY i.created_at
         LIMIT 1)) ORDER BY g.batch_index) FILTER (WHERE (g.id IS NOT NULL)), '[]'::jsonb) AS items
   FROM (public.batch_generations b
     LEFT JOIN public.image_generations g ON ((g.batch_id = b.id)))
  GROUP BY b.id;

CREATE TRIGGER announce_ended_batches AFTER UPDATE ON public.batch_generations REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION imagegen.announce_ended_batches();

CREATE TRIGGER announce_ended_generations AFTER UPDATE ON public.image_generations REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION imagegen.announce_ended_generations();

CREATE TRIGGER batch_counts_kept BEFORE UPDATE ON public.batch_generations FOR EACH ROW WHEN ((CURRENT_USER = 'authenticated'::name)) EXECUTE FUNCTION imagegen.keep_batch_counts();

CREATE TRIGGER batch_items_counted AFTER UPDATE ON public.image_generations REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION imagegen.count_batch_items();

CREATE TRIGGER client_changes_generation BEFORE UPDATE ON public.image_generations FOR EACH ROW WHEN ((CURRENT_USER = 'authenticated'::name)) EXECUTE FUNCTION imagegen.check_client_generation_change();

CREATE TRIGGER client_changes_image BEFORE UPDATE ON public.images FOR EACH ROW WHEN ((CURRENT_USER = 'authenticated'::name)) EXECUTE FUNCTION imagegen.check_client_image_change();

CREATE TRIGGER client_inserts_generation BEFORE INSERT ON public.image_generations FOR EACH ROW WHEN ((CURRENT_USER = 'authenticated'::name)) EXECUTE FUNCTION imagegen.check_client_generation();

CREATE TRIGGER completed_generation_is_priced BEFORE UPDATE OF status ON public.image_generations FOR EACH ROW WHEN (((new.status = 'completed'::text) AND (old.status IS DISTINCT FROM 'completed'::text))) EXECUTE FUNCTION imagegen.price_completed_generation();

CREATE TRIGGER ended_generation_stays_ended BEFORE UPDATE OF status ON public.image_generations FOR EACH ROW WHEN (((old.status = ANY (ARRAY['completed'::text, 'failed'::text])) AND (new.status IS DISTINCT FROM old.status) AND (NOT ((old.status = 'failed'::text) AND (new.status = 'pending'::text))))) EXECUTE FUNCTION imagegen.refuse_reopening_generation();

CREATE TRIGGER failed_generation_stops_its_work AFTER UPDATE OF status ON public.image_generations FOR EACH ROW WHEN (((new.status = 'failed'::text) AND (old.status = ANY (ARRAY['pending'::text, 'queued'::text, 'processing'::text, 'downloading'::text])))) EXECUTE FUNCTION imagegen.stop_failed_generation();

CREATE TRIGGER generation_failed_stamps_completed_at BEFORE UPDATE OF status ON public.image_generations FOR EACH ROW WHEN (((new.status = 'failed'::text) AND (old.status IS DISTINCT FROM 'failed'::text))) EXECUTE FUNCTION imagegen.stamp_ended_generation();

CREATE TRIGGER job_attempt_recorded BEFORE UPDATE ON public.job_queue FOR EACH ROW WHEN (((old.status = 'processing'::text) AND ((new.status <> 'processing'::text) OR (new.attempts > old.attempts)) AND (NOT ((new.status = 'pending'::text) AND (new.attempts < old.attempts))))) EXECUTE FUNCTION imagegen.record_attempt();

CREATE TRIGGER job_ended_fails_generation AFTER UPDATE OF status ON public.job_queue FOR EACH ROW WHEN (((new.status = ANY (ARRAY['failed'::text, 'cancelled'::text])) AND (old.status <> ALL (ARRAY['failed'::text, 'cancelled'::text])))) EXECUTE FUNCTION imagegen.fail_generation_of_ended_job();

CREATE TRIGGER job_takes_its_turn BEFORE INSERT ON public.job_queue FOR EACH ROW WHEN ((new.status = 'pending'::text)) EXECUTE FUNCTION imagegen.assign_turn();

ALTER TABLE ONLY imagegen.idempotent_requests
    ADD CONSTRAINT idempotent_requests_user_id_fkey FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY imagegen.provider_turns
    ADD CONSTRAINT provider_turns_provider_fkey FOREIGN KEY (provider) REFERENCES imagegen.provider_limits(provider) ON DELETE CASCADE;

ALTER TABLE ONLY public.batch_generations
    ADD CONSTRAINT batch_generations_user_id_fkey FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.image_generations
    ADD CONSTRAINT image_generations_batch_id_fkey FOREIGN KEY (batch_id) REFERENCES public.batch_generations(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.image_generations
    ADD CONSTRAINT image_generations_model_id_fkey FOREIGN KEY (model_id) REFERENCES public.models(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.image_generations
    ADD CONSTRAINT image_generations_user_id_fkey FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_generation_id_fkey FOREIGN KEY (generation_id) REFERENCES public.image_generations(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_source_image_id_fkey FOREIGN KEY (source_image_id) REFERENCES public.images(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.images
    ADD CONSTRAINT images_user_id_fkey FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.user_rate_limits
    ADD CONSTRAINT user_rate_limits_user_id_fkey FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE;

CREATE POLICY "Anyone reads active models" ON public.models FOR SELECT TO anon, authenticated USING (is_active);

CREATE POLICY "Only own generations are added" ON public.image_generations AS RESTRICTIVE FOR INSERT TO authenticated WITH CHECK ((user_id = auth.uid()));

CREATE POLICY "Only own generations are changed" ON public.image_generations AS RESTRICTIVE FOR UPDATE TO authenticated USING ((user_id = auth.uid())) WITH CHECK ((user_id = auth.uid()));

CREATE POLICY "Only own images are changed" ON public.images AS RESTRICTIVE FOR UPDATE TO authenticated USING ((user_id = auth.uid())) WITH CHECK ((user_id = auth.uid()));

CREATE POLICY "Only own images are deleted" ON public.images AS RESTRICTIVE FOR DELETE TO authenticated USING ((user_id = auth.uid()));

CREATE POLICY "Users add their own pending generations" ON public.image_generations FOR INSERT TO authenticated WITH CHECK (((user_id = auth.uid()) AND (status = 'pending'::text)));

CREATE POLICY "Users cancel and retry their own generations" ON public.image_generations FOR UPDATE TO authenticated USING ((user_id = auth.uid())) WITH CHECK ((user_id = auth.uid()));

CREATE POLICY "Users delete their own batches" ON public.batch_generations FOR DELETE TO authenticated USING ((user_id = auth.uid()));

CREATE POLICY "Users delete their own images" ON public.images FOR DELETE TO authenticated USING ((user_id = auth.uid()));

CREATE POLICY "Users mark their own images" ON public.images FOR UPDATE TO authenticated USING ((user_id = auth.uid())) WITH CHECK ((user_id = auth.uid()));

CREATE POLICY "Users read their own batches" ON public.batch_generations FOR SELECT TO authenticated USING ((user_id = auth.uid()));

CREATE POLICY "Users read their own generations" ON public.image_generations FOR SELECT TO authenticated USING ((user_id = auth.uid()));

CREATE POLICY "Users read their own images" ON public.images FOR SELECT TO authenticated USING ((user_id = auth.uid()));

CREATE POLICY "Users read their own jobs" ON public.job_queue FOR SELECT TO authenticated USING ((created_by = auth.uid()));

CREATE POLICY "Users read their own limits" ON public.user_rate_limits FOR SELECT TO authenticated USING ((user_id = auth.uid()));

CREATE POLICY "Users update their own batches" ON public.batch_generations FOR UPDATE TO authenticated USING ((user_id = auth.uid())) WITH CHECK (((user_id = auth.uid()) AND (status = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'partial'::text, 'failed'::text]))));

ALTER TABLE public.batch_generations ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.image_generations ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.images ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.job_queue ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.models ENABLE ROW LEVEL SECURITY;

ALTER TABLE public.user_rate_limits ENABLE ROW LEVEL SECURITY;

CREATE PUBLICATION supabase_realtime WITH (publish = 'insert, update, delete, truncate');

ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.batch_generations;

ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.image_generations;

ALTER PUBLICATION supabase_realtime ADD TABLE ONLY public.job_queue;

GRANT USAGE ON SCHEMA auth TO anon;
GRANT USAGE ON SCHEMA auth TO authenticated;
GRANT USAGE ON SCHEMA auth TO service_role;

GRANT USAGE ON SCHEMA imagegen TO service_role;

REVOKE ALL ON FUNCTION imagegen.active_generations(p_user_id uuid) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.active_job(p_generation_id uuid) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.active_statuses() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.admit_generation(p_user_id uuid, p_count integer, p_counted boolean) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.announce_ended_batches() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.announce_ended_generations() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.assign_turn() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.batch_status(p_total integer, p_completed integer, p_failed integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.cancel_generation(p_generation_id uuid, p_user_id uuid) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.cancel_prediction_later(p_prediction_id text, p_generation_id uuid, p_user_id uuid) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.check_client_generation() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.check_client_generation_change() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.check_client_image_change() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.check_source_image_url(p_url text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.count_batch_items() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.cron_version_at_least(p_major integer, p_minor integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.fail_generation_of_ended_job() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.generation_status(p_generation_id uuid, p_user_id uuid) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.get_setting(p_key text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.held_generation(p_job_id uuid, p_worker_id text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.idempotency_window() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.integer_setting(p_key text, p_default integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.invalid(p_field text, p_message text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.is_active(p_status text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.is_blank(p_text text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.keep_batch_counts() FROM PUBLIC;

GRANT SELECT ON TABLE public.job_queue TO authenticated;
GRANT ALL ON TABLE public.job_queue TO service_role;

REVOKE ALL ON FUNCTION imagegen.monitor_jobs(p_since timestamp with time zone) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.monitor_series(p_start timestamp with time zone, p_buckets integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.price_completed_generation() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.publish_events(p_messages jsonb[]) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.put_setting(p_key text, p_value text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.queue_full(p_limit integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.queue_generation(p_generation_id uuid, p jsonb) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.ran_before(p_generation_id uuid) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.rate_limits(p_user_id uuid, p_count integer) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.record_attempt() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.refuse_reopening_generation() FROM PUBLIC;

GRANT SELECT ON TABLE public.image_generations TO authenticated;
GRANT ALL ON TABLE public.image_generations TO service_role;

GRANT INSERT(user_id) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(prompt) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(negative_prompt) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(model) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(style) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(width) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(height) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(steps) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(guidance_scale) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(source_image_url) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(generation_strength) ON TABLE public.image_generations TO authenticated;

GRANT INSERT(status),UPDATE(status) ON TABLE public.image_generations TO authenticated;

GRANT UPDATE(error_message) ON TABLE public.image_generations TO authenticated;

GRANT UPDATE(retry_count) ON TABLE public.image_generations TO authenticated;

GRANT UPDATE(completed_at) ON TABLE public.image_generations TO authenticated;

REVOKE ALL ON FUNCTION imagegen.row_parameters(g public.image_generations) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.stamp_ended_generation() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.stop_failed_generation() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.storage_object_generation(p_path text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.storage_url_object(p_url text) FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.turn_grace() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.webhook_dedupe_floor() FROM PUBLIC;

REVOKE ALL ON FUNCTION imagegen.worker_lock_key(p_worker_id text) FROM PUBLIC;

REVOKE ALL ON FUNCTION net.http_post(url text, body jsonb, params jsonb, headers jsonb, timeout_milliseconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION net.http_post(url text, body jsonb, params jsonb, headers jsonb, timeout_milliseconds integer) TO service_role;

REVOKE ALL ON FUNCTION public.accept_webhook(p_webhook_id text, p_payload jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION public.accept_webhook(p_webhook_id text, p_payload jsonb) TO service_role;

REVOKE ALL ON FUNCTION public.await_webhook(p_job_id uuid, p_worker_id text, p_grace_seconds numeric, p_delay_seconds numeric) FROM PUBLIC;
GRANT ALL ON FUNCTION public.await_webhook(p_job_id uuid, p_worker_id text, p_grace_seconds numeric, p_delay_seconds numeric) TO service_role;

REVOKE ALL ON FUNCTION public.begin_generation(p_job_id uuid, p_worker_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.begin_generation(p_job_id uuid, p_worker_id text) TO service_role;

REVOKE ALL ON FUNCTION public.cancel_generation(p_generation_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.cancel_generation(p_generation_id uuid) TO service_role;
GRANT ALL ON FUNCTION public.cancel_generation(p_generation_id uuid) TO authenticated;

REVOKE ALL ON FUNCTION public.cancel_job(p_job_id uuid, p_reason text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.cancel_job(p_job_id uuid, p_reason text) TO service_role;

REVOKE ALL ON FUNCTION public.cancel_owned_generation(p_generation_id uuid, p_user_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.cancel_owned_generation(p_generation_id uuid, p_user_id uuid) TO service_role;

REVOKE ALL ON FUNCTION public.check_rate_limit(p_user_id uuid, p_count integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.check_rate_limit(p_user_id uuid, p_count integer) TO authenticated;
GRANT ALL ON FUNCTION public.check_rate_limit(p_user_id uuid, p_count integer) TO service_role;

REVOKE ALL ON FUNCTION public.claim_generation_job(p_generation_id uuid, p_worker_id text, p_lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.claim_generation_job(p_generation_id uuid, p_worker_id text, p_lease_seconds integer) TO service_role;

REVOKE ALL ON FUNCTION public.claim_jobs(p_worker_id text, p_limit integer, p_job_types text[], p_lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.claim_jobs(p_worker_id text, p_limit integer, p_job_types text[], p_lease_seconds integer) TO service_role;

REVOKE ALL ON FUNCTION public.claim_next_job(p_job_types text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.claim_next_job(p_job_types text[]) TO service_role;

REVOKE ALL ON FUNCTION public.complete_job(p_job_id uuid, p_error_message text, p_error_details jsonb, p_result jsonb, p_worker_id text, p_retryable boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION public.complete_job(p_job_id uuid, p_error_message text, p_error_details jsonb, p_result jsonb, p_worker_id text, p_retryable boolean) TO service_role;

REVOKE ALL ON FUNCTION public.complete_jobs(p_worker_id text, p_job_ids uuid[], p_results jsonb[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.complete_jobs(p_worker_id text, p_job_ids uuid[], p_results jsonb[]) TO service_role;

REVOKE ALL ON FUNCTION public.configure_admission(p_max_active_per_user integer, p_max_queue_depth integer, p_daily_limit integer, p_hourly_limit integer, p_max_batch_size integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.configure_admission(p_max_active_per_user integer, p_max_queue_depth integer, p_daily_limit integer, p_hourly_limit integer, p_max_batch_size integer) TO service_role;

REVOKE ALL ON FUNCTION public.configure_provider_limit(p_provider text, p_creates_per_minute integer, p_burst numeric) FROM PUBLIC;
GRANT ALL ON FUNCTION public.configure_provider_limit(p_provider text, p_creates_per_minute integer, p_burst numeric) TO service_role;

REVOKE ALL ON FUNCTION public.configure_worker_cron(p_url text, p_secret text, p_schedule text, p_retention interval) FROM PUBLIC;
GRANT ALL ON FUNCTION public.configure_worker_cron(p_url text, p_secret text, p_schedule text, p_retention interval) TO service_role;

REVOKE ALL ON FUNCTION public.enqueue_job(p_job_type text, p_payload jsonb, p_priority integer, p_scheduled_at timestamp with time zone, p_max_attempts integer, p_created_by uuid, p_dedupe_key text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.enqueue_job(p_job_type text, p_payload jsonb, p_priority integer, p_scheduled_at timestamp with time zone, p_max_attempts integer, p_created_by uuid, p_dedupe_key text) TO service_role;

REVOKE ALL ON FUNCTION public.enqueue_storage_cleanup() FROM PUBLIC;
GRANT ALL ON FUNCTION public.enqueue_storage_cleanup() TO service_role;

REVOKE ALL ON FUNCTION public.fail_generation(p_job_id uuid, p_worker_id text, p_error_message text, p_error_details jsonb, p_retryable boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION public.fail_generation(p_job_id uuid, p_worker_id text, p_error_message text, p_error_details jsonb, p_retryable boolean) TO service_role;

REVOKE ALL ON FUNCTION public.fail_job(p_job_id uuid, p_worker_id text, p_error_message text, p_error_details jsonb, p_retryable boolean) FROM PUBLIC;
GRANT ALL ON FUNCTION public.fail_job(p_job_id uuid, p_worker_id text, p_error_message text, p_error_details jsonb, p_retryable boolean) TO service_role;

GRANT SELECT,DELETE ON TABLE public.images TO authenticated;
GRANT ALL ON TABLE public.images TO service_role;

GRANT UPDATE(public_url) ON TABLE public.images TO authenticated;

GRANT UPDATE(is_public) ON TABLE public.images TO authenticated;

GRANT UPDATE(is_favorite) ON TABLE public.images TO authenticated;

GRANT UPDATE(rating) ON TABLE public.images TO authenticated;

GRANT UPDATE(archived_at) ON TABLE public.images TO authenticated;

REVOKE ALL ON FUNCTION public.finish_generation(p_generation_id uuid, p_storage_path text, p_public_url text, p_file_size bigint, p_width integer, p_height integer, p_format text, p_job_id uuid, p_worker_id text, p_user_id uuid, p_blurhash text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.finish_generation(p_generation_id uuid, p_storage_path text, p_public_url text, p_file_size bigint, p_width integer, p_height integer, p_format text, p_job_id uuid, p_worker_id text, p_user_id uuid, p_blurhash text) TO service_role;

REVOKE ALL ON FUNCTION public.function_result_columns() FROM PUBLIC;
GRANT ALL ON FUNCTION public.function_result_columns() TO service_role;

REVOKE ALL ON FUNCTION public.generation_downloading(p_job_id uuid, p_worker_id text, p_output_url text, p_format text, p_width integer, p_height integer, p_generation_time_seconds numeric, p_provider_metrics jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION public.generation_downloading(p_job_id uuid, p_worker_id text, p_output_url text, p_format text, p_width integer, p_height integer, p_generation_time_seconds numeric, p_provider_metrics jsonb) TO service_role;

REVOKE ALL ON FUNCTION public.generation_parameters(p_prompt text, p_model_id text, p_model_version text, p_width integer, p_height integer, p_num_inference_steps integer, p_guidance_scale numeric, p_seed bigint, p_negative_prompt text, p_source_image_url text, p_strength numeric, p_style text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.generation_parameters(p_prompt text, p_model_id text, p_model_version text, p_width integer, p_height integer, p_num_inference_steps integer, p_guidance_scale numeric, p_seed bigint, p_negative_prompt text, p_source_image_url text, p_strength numeric, p_style text) TO service_role;

REVOKE ALL ON FUNCTION public.generation_queue_status(p_generation_id uuid, p_user_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.generation_queue_status(p_generation_id uuid, p_user_id uuid) TO service_role;

REVOKE ALL ON FUNCTION public.generation_status(p_generation_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.generation_status(p_generation_id uuid) TO authenticated;
GRANT ALL ON FUNCTION public.generation_status(p_generation_id uuid) TO service_role;

REVOKE ALL ON FUNCTION public.get_generation(p_generation_id uuid, p_user_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.get_generation(p_generation_id uuid, p_user_id uuid) TO service_role;

REVOKE ALL ON FUNCTION public.get_user_limits(p_user_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.get_user_limits(p_user_id uuid) TO authenticated;
GRANT ALL ON FUNCTION public.get_user_limits(p_user_id uuid) TO service_role;

REVOKE ALL ON FUNCTION public.heartbeat_jobs(p_worker_id text, p_job_ids uuid[], p_lease_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.heartbeat_jobs(p_worker_id text, p_job_ids uuid[], p_lease_seconds integer) TO service_role;

REVOKE ALL ON FUNCTION public.invoke_worker() FROM PUBLIC;
GRANT ALL ON FUNCTION public.invoke_worker() TO service_role;

GRANT SELECT ON TABLE public.models TO anon;
GRANT SELECT ON TABLE public.models TO authenticated;
GRANT ALL ON TABLE public.models TO service_role;

REVOKE ALL ON FUNCTION public.list_models() FROM PUBLIC;
GRANT ALL ON FUNCTION public.list_models() TO service_role;

REVOKE ALL ON FUNCTION public.monitor_snapshot() FROM PUBLIC;
GRANT ALL ON FUNCTION public.monitor_snapshot() TO service_role;

REVOKE ALL ON FUNCTION public.nudge_workers() FROM PUBLIC;
GRANT ALL ON FUNCTION public.nudge_workers() TO service_role;

REVOKE ALL ON FUNCTION public.pause_provider(p_provider text, p_seconds double precision) FROM PUBLIC;
GRANT ALL ON FUNCTION public.pause_provider(p_provider text, p_seconds double precision) TO service_role;

REVOKE ALL ON FUNCTION public.process_queue(p_user_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.process_queue(p_user_id uuid) TO service_role;

REVOKE ALL ON FUNCTION public.prune_finished_jobs(p_older_than interval) FROM PUBLIC;
GRANT ALL ON FUNCTION public.prune_finished_jobs(p_older_than interval) TO service_role;

REVOKE ALL ON FUNCTION public.queue_depth() FROM PUBLIC;
GRANT ALL ON FUNCTION public.queue_depth() TO service_role;

REVOKE ALL ON FUNCTION public.reclaim_dead_workers() FROM PUBLIC;
GRANT ALL ON FUNCTION public.reclaim_dead_workers() TO service_role;

REVOKE ALL ON FUNCTION public.record_prediction(p_job_id uuid, p_worker_id text, p_prediction_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.record_prediction(p_job_id uuid, p_worker_id text, p_prediction_id text) TO service_role;

REVOKE ALL ON FUNCTION public.register_worker(p_worker_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.register_worker(p_worker_id text) TO service_role;

REVOKE ALL ON FUNCTION public.release_jobs(p_worker_id text, p_job_ids uuid[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.release_jobs(p_worker_id text, p_job_ids uuid[]) TO service_role;

REVOKE ALL ON FUNCTION public.release_prediction(p_job_id uuid, p_worker_id text, p_prediction_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.release_prediction(p_job_id uuid, p_worker_id text, p_prediction_id text) TO service_role;

REVOKE ALL ON FUNCTION public.request_prediction(p_job_id uuid, p_worker_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.request_prediction(p_job_id uuid, p_worker_id text) TO service_role;

REVOKE ALL ON FUNCTION public.snooze_job(p_job_id uuid, p_worker_id text, p_until timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION public.snooze_job(p_job_id uuid, p_worker_id text, p_until timestamp with time zone) TO service_role;

REVOKE ALL ON FUNCTION public.start_batch(p_user_id uuid, p_request jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION public.start_batch(p_user_id uuid, p_request jsonb) TO service_role;

REVOKE ALL ON FUNCTION public.start_generation(p_user_id uuid, p_prompt text, p_model_id text, p_model_version text, p_width integer, p_height integer, p_num_inference_steps integer, p_guidance_scale numeric, p_seed bigint, p_negative_prompt text, p_source_image_url text, p_strength numeric, p_style text, p_priority integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.start_generation(p_user_id uuid, p_prompt text, p_model_id text, p_model_version text, p_width integer, p_height integer, p_num_inference_steps integer, p_guidance_scale numeric, p_seed bigint, p_negative_prompt text, p_source_image_url text, p_strength numeric, p_style text, p_priority integer) TO service_role;

REVOKE ALL ON FUNCTION public.start_legacy_generation(p_user_id uuid, p_prompt text, p_model_id text, p_generation_id uuid, p_model_version text, p_width integer, p_height integer, p_num_inference_steps integer, p_guidance_scale numeric, p_seed bigint, p_negative_prompt text, p_source_image_url text, p_strength numeric, p_style text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.start_legacy_generation(p_user_id uuid, p_prompt text, p_model_id text, p_generation_id uuid, p_model_version text, p_width integer, p_height integer, p_num_inference_steps integer, p_guidance_scale numeric, p_seed bigint, p_negative_prompt text, p_source_image_url text, p_strength numeric, p_style text) TO service_role;

REVOKE ALL ON FUNCTION public.start_once(p_user_id uuid, p_key text, p_endpoint text, p_request jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION public.start_once(p_user_id uuid, p_key text, p_endpoint text, p_request jsonb) TO service_role;

REVOKE ALL ON FUNCTION public.storage_missing_folders(p_folders text[], p_before timestamp with time zone, p_sample integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.storage_missing_folders(p_folders text[], p_before timestamp with time zone, p_sample integer) TO service_role;

REVOKE ALL ON FUNCTION public.storage_missing_objects(p_folder text, p_names text[], p_before timestamp with time zone, p_sample integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.storage_missing_objects(p_folder text, p_names text[], p_before timestamp with time zone, p_sample integer) TO service_role;

REVOKE ALL ON FUNCTION public.storage_object_verdicts(p_names text[], p_updated_at text[], p_grace_seconds integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.storage_object_verdicts(p_names text[], p_updated_at text[], p_grace_seconds integer) TO service_role;

REVOKE ALL ON FUNCTION public.take_provider_token(p_provider text, p_job_id uuid) FROM PUBLIC;
GRANT ALL ON FUNCTION public.take_provider_token(p_provider text, p_job_id uuid) TO service_role;

REVOKE ALL ON FUNCTION public.wake_prediction_job(p_prediction_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.wake_prediction_job(p_prediction_id text) TO service_role;

REVOKE ALL ON FUNCTION public.withdraw_prediction_request(p_job_id uuid, p_worker_id text, p_requested_at timestamp with time zone) FROM PUBLIC;
GRANT ALL ON FUNCTION public.withdraw_prediction_request(p_job_id uuid, p_worker_id text, p_requested_at timestamp with time zone) TO service_role;

GRANT SELECT ON TABLE imagegen.provider_limits TO service_role;

GRANT SELECT ON TABLE imagegen.provider_turns TO service_role;

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE imagegen.settings TO service_role;

GRANT SELECT,DELETE ON TABLE public.batch_generations TO authenticated;
GRANT ALL ON TABLE public.batch_generations TO service_role;

GRANT UPDATE(failed_count) ON TABLE public.batch_generations TO authenticated;

GRANT UPDATE(status) ON TABLE public.batch_generations TO authenticated;

GRANT UPDATE(completed_at) ON TABLE public.batch_generations TO authenticated;

GRANT SELECT ON TABLE public.batch_progress TO authenticated;
GRANT SELECT ON TABLE public.batch_progress TO service_role;

GRANT SELECT ON TABLE public.failed_jobs_recent TO authenticated;
GRANT SELECT ON TABLE public.failed_jobs_recent TO service_role;

GRANT SELECT ON TABLE public.generation_costs TO service_role;

GRANT SELECT ON TABLE public.provider_limit_status TO service_role;

GRANT SELECT ON TABLE public.queue_health TO authenticated;
GRANT SELECT ON TABLE public.queue_health TO service_role;

GRANT SELECT ON TABLE public.queue_throughput TO authenticated;
GRANT SELECT ON TABLE public.queue_throughput TO service_role;

GRANT SELECT ON TABLE public.stuck_jobs TO authenticated;
GRANT SELECT ON TABLE public.stuck_jobs TO service_role;

GRANT SELECT ON TABLE public.user_rate_limits TO authenticated;
GRANT ALL ON TABLE public.user_rate_limits TO service_role;
