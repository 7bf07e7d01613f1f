-- Cancellation end to end (issue 16, point 2): one cancel for the owner, whichever way it
-- arrives (the apps' UPDATE, rpc('cancel_generation'), POST /functions/v1/cancel-generation).
-- The row ends as the old apps write it themselves (docs/CLIENTS.md §2 flows 2, 3 and 5):
-- `failed` with "Cancelled by user"; sql/0020_client_writes.sql's trigger
-- failed_generation_stops_its_work then cancels its jobs and a running prediction.
--
-- Redefines public.cancel_generation(uuid) (sql/0020), same signature and grants: it wrote
-- "Cancelled by the user", which no app writes, and it could not tell the API why it
-- cancelled nothing.

-- The owner's cancel: 'cancelled', or why not: 'unknown' (no such generation of this user),
-- 'completed' or 'failed' (already ended). The row is locked first, so a finish running at
-- the same moment (finish_generation locks it too) ends either before (-> 'completed') or
-- after (it then finds its job cancelled and stores nothing): one end state, never both.
create or replace function imagegen.cancel_generation(p_generation_id uuid, p_user_id uuid)
returns text
language plpgsql
security definer
set search_path = public, pg_temp
as $$
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

-- The apps' rpc, as PostgREST runs it: the signed-in user's own generations only.
create or replace function public.cancel_generation(p_generation_id uuid)
returns boolean
language sql
security definer
set search_path = public, pg_temp
as $$
    select imagegen.cancel_generation(p_generation_id, auth.uid()) = 'cancelled'
$$;

-- The API's, for the user it has authenticated (cancel-generation).
create or replace function public.cancel_owned_generation(
    p_generation_id uuid,
    p_user_id uuid
) returns text
language sql
security definer
set search_path = public, pg_temp
as $$
    select imagegen.cancel_generation(p_generation_id, p_user_id)
$$;

revoke all on function imagegen.cancel_generation(uuid, uuid) from public, anon, authenticated;
revoke all on function public.cancel_owned_generation(uuid, uuid)
    from public, anon, authenticated;
grant execute on function public.cancel_owned_generation(uuid, uuid) to service_role;
