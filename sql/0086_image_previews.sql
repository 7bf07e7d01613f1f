-- Previews: the worker measures every stored image (format, true width and height) and
-- computes the BlurHash of a raster one from the bytes it stores (worker/images.py);
-- finish_generation now writes `images.blurhash` with the rest, in the same transaction.
-- An SVG's is null (no renderer). The new argument comes last, so positional calls keep
-- their meaning; the old signature goes, since with both a call would be ambiguous.

drop function if exists public.finish_generation(
    uuid, text, text, bigint, integer, integer, text, uuid, text, uuid);

-- The file is stored: the images row (with its preview hash), the generation completed
-- and (for a job) the job completed, together. With p_user_id (the legacy endpoint) the
-- caller must own the generation. Returns the images row, or nothing when the job was
-- not this worker's.
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
    p_user_id uuid default null,
    p_blurhash text default null
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

revoke all on function public.finish_generation(
    uuid, text, text, bigint, integer, integer, text, uuid, text, uuid, text)
    from public, anon, authenticated;
grant execute on function public.finish_generation(
    uuid, text, text, bigint, integer, integer, text, uuid, text, uuid, text) to service_role;
