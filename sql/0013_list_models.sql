-- The models a signed-in user may choose from, in the apps' order (what `imagegen models`
-- lists and how `imagegen generate --model flux-schnell` finds the full id).

create or replace function public.list_models()
returns setof public.models
language sql
stable
security definer
set search_path = public, pg_temp
as $$
    select * from models where is_active order by sort_order, name
$$;

revoke all on function public.list_models() from public, anon, authenticated;
grant execute on function public.list_models() to service_role;
