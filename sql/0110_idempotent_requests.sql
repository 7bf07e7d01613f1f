-- Idempotent submits (issue 16, point 3): an `Idempotency-Key` header on start-generation
-- and batch-generate. The same key from the same user within 24 hours answers the first
-- answer again and writes nothing; the same key with another request is refused with
-- SQLSTATE PT422 (the API's 422). The primary key (user_id, key) decides, so this holds
-- across API processes: a request racing the first with the same key waits on the first
-- one's insert, then reads the answer it committed. The answer is stored in the
-- transaction that starts the work, so there is never a key without its work or work
-- without its key; a refused start (a limit, bad input) rolls the key back with it.

create table if not exists imagegen.idempotent_requests (
    user_id uuid not null references auth.users (id) on delete cascade,
    key text not null,
    request_hash bytea not null,  -- sha256 of the endpoint and the request as read
    response jsonb,  -- set in the inserting transaction: never null once committed
    created_at timestamptz not null default now(),
    primary key (user_id, key)
);

-- For the amortized cleanup below (the oldest keys first).
create index if not exists idempotent_requests_created_at_idx
    on imagegen.idempotent_requests (created_at);

revoke all on imagegen.idempotent_requests from public, anon, authenticated;

-- How long a key answers for.
create or replace function imagegen.idempotency_window() returns interval
language sql
immutable
as $$ select interval '24 hours' $$;

-- Start the request once per (user, key): `p_endpoint` is 'start-generation' (`p_request`:
-- start-generation's fields, as start_generation takes them without the p_) or
-- 'batch-generate' (`p_request`: start_batch's request). Returns what the start returned
-- ({generation_id, job_id}, or the batch) and whether it is a replay of an earlier
-- answer. The request's hash is of `p_request::text`: jsonb prints keys in one order and
-- without spaces, so two bodies that read the same hash the same.
create or replace function public.start_once(
    p_user_id uuid,
    p_key text,
    p_endpoint text,
    p_request jsonb
) returns table (response jsonb, replayed boolean)
language plpgsql
security definer
set search_path = public, pg_temp
as $$
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
$$;

revoke all on function imagegen.idempotency_window() from public, anon, authenticated;
revoke all on function public.start_once(uuid, text, text, jsonb)
    from public, anon, authenticated;
grant execute on function public.start_once(uuid, text, text, jsonb) to service_role;
