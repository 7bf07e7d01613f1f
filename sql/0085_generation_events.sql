-- Completion events: every terminal change of a generation (to completed or failed) or
-- of a batch (to completed, partial or failed) is one message in the pgmq queue
-- `generation_events`, sent by a trigger in the transaction of the change. A change that
-- rolls back publishes nothing; one that commits is never missed. `imagegen events`
-- (api/cli.py) is the example consumer.
--
-- Where pgmq comes from: Supabase's `pgmq` extension where the server has it (created
-- here, or by `imagegen migrate`); on plain PostgreSQL `imagegen migrate` installs the
-- SQL of the pgmq package first (worker/migrate.py). A database without pgmq (e.g.
-- `supabase db push` on a project without the extension) still migrates and its writes
-- still work: the triggers publish nothing there, and this file says so in a notice.

do $pgmq$
begin
    if to_regnamespace('pgmq') is null
       and exists (select from pg_available_extensions where name = 'pgmq') then
        create extension pgmq;
    end if;
    if to_regnamespace('pgmq') is null then
        raise notice 'pgmq is not installed: completion events are not published '
                     '(imagegen migrate installs it)';
    elsif not exists (select from pgmq.meta where queue_name = 'generation_events') then
        perform pgmq.create('generation_events');
    end if;
end
$pgmq$;

-- Sends the messages to generation_events in one call; nothing where the queue is absent.
create or replace function imagegen.publish_events(p_messages jsonb[]) returns void
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    if cardinality(p_messages) > 0 and to_regclass('pgmq.q_generation_events') is not null then
        perform pgmq.send_batch('generation_events', p_messages);
    end if;
end
$$;

create or replace function imagegen.announce_ended_generations() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
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

-- Once per statement (a bulk cancel is one send). Named to sort before
-- batch_items_counted, so a generation's event precedes the event of the batch it ends.
drop trigger if exists announce_ended_generations on public.image_generations;
create trigger announce_ended_generations
    after update on public.image_generations
    referencing old table as old_rows new table as new_rows
    for each statement
    execute function imagegen.announce_ended_generations();

create or replace function imagegen.announce_ended_batches() returns trigger
language plpgsql
security definer
set search_path = public, pg_temp
as $$
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

drop trigger if exists announce_ended_batches on public.batch_generations;
create trigger announce_ended_batches
    after update on public.batch_generations
    referencing old table as old_rows new table as new_rows
    for each statement
    execute function imagegen.announce_ended_batches();

revoke all on function imagegen.publish_events(jsonb[]),
    imagegen.announce_ended_generations(), imagegen.announce_ended_batches()
    from public, anon, authenticated;
