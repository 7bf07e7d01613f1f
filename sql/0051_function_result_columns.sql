-- What each public function returns, column by column, for gateways that receive rows as
-- JSON (PostgREST): they turn uuid, timestamptz and numeric values back into the types
-- a direct PostgreSQL connection gives, so the code above them reads one kind of row.
-- A scalar function's one column is named after the function, as `select * from f()` names it.

create or replace function public.function_result_columns()
returns table (function_name text, column_name text, type_name text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
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

revoke all on function public.function_result_columns() from public, anon, authenticated;
grant execute on function public.function_result_columns() to service_role;
