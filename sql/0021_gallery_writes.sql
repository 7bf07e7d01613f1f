-- The gallery's own writes to images (issue 12, point 1; CLIENTS.md flow 6:
-- apps/mobile/hooks/useImageFetching.ts, services/archiveService.ts, app/image/[id].tsx,
-- apps/web/src/lib/api/images.ts), and the shape in which PostgREST embeds them
-- (point 6).

-- Writes ----------------------------------------------------------------------------------
-- Users favourite, rate, publish and archive their own images, fill in a missing
-- public_url (the image screen derives it from storage_path), and delete them (the apps
-- remove the file from Storage themselves; the bucket policy lets them, baseline section 12).
grant update (archived_at, public_url) on public.images to authenticated;
grant delete on public.images to authenticated;

drop policy if exists "Users delete their own images" on public.images;
create policy "Users delete their own images" on public.images
    for delete to authenticated using (user_id = auth.uid());

-- Own rows only, whatever permissive policies an old database carries besides ours.
drop policy if exists "Only own images are changed" on public.images;
create policy "Only own images are changed" on public.images
    as restrictive for update to authenticated
    using (user_id = auth.uid()) with check (user_id = auth.uid());

drop policy if exists "Only own images are deleted" on public.images;
create policy "Only own images are deleted" on public.images
    as restrictive for delete to authenticated
    using (user_id = auth.uid());

-- public_url is the server's, except where it is missing: then only the URL the app
-- derives, Storage's public URL of the image's own file (getPublicUrl(storage_path)).
create or replace function imagegen.check_client_image_change() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
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
$$;

drop trigger if exists client_changes_image on public.images;
create trigger client_changes_image
    before update on public.images
    for each row
    when (current_user = 'authenticated')
    execute function imagegen.check_client_image_change();

revoke all on function imagegen.check_client_image_change() from public, anon, authenticated;

-- One image per generation, embedded as an array ----------------------------------------
-- The apps read `select('*, images(*)')` as `generation.images[0]`. PostgREST embeds an
-- object instead of an array when it sees a one-to-one relationship: a foreign key whose
-- columns are also a primary key or a UNIQUE constraint. It reads that from pg_constraint
-- (contype 'p' or 'u'; PostgREST's SchemaCache.hs, allM2OandO2ORels), never pg_index. So
-- the guarantee stays but as a unique INDEX, not a constraint: the database still refuses
-- a second image for a generation (and `on conflict (generation_id)` still infers it),
-- while PostgREST sees images -> image_generations as many-to-one, the embed as an array.
-- finish_generation (update, else insert, under the generation's row lock) is unchanged.
do $one_image$
declare
    v_constraint text;
    v_duplicates bigint;
begin
    -- A fresh install has images_generation_id_key (the baseline's `unique`); an old
    -- database none, or one of its own name.
    for v_constraint in
        select c.conname
        from pg_constraint c
        where c.conrelid = 'public.images'::regclass and c.contype = 'u'
          and c.conkey = array[(select attnum from pg_attribute
                                where attrelid = 'public.images'::regclass
                                  and attname = 'generation_id')]
    loop
        execute format('alter table public.images drop constraint %I', v_constraint);
    end loop;

    -- The old platform never made it unique: its rows may hold two images of one
    -- generation, which no rule here can choose between.
    select count(*) into v_duplicates
    from (select from public.images where generation_id is not null
          group by generation_id having count(*) > 1) twice;
    if v_duplicates > 0 then
        raise exception 'images has % generations with more than one image: at most one is '
                        'allowed; find them with select generation_id, array_agg(id) from '
                        'images group by generation_id having count(*) > 1, delete (or set '
                        'generation_id to null on) all but one of each, then migrate again',
                        v_duplicates;
    end if;
end
$one_image$;

create unique index if not exists images_one_per_generation_idx
    on public.images (generation_id);
