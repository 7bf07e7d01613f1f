-- Retention for the two tables issue 16 added, in the nightly `imagegen-retention` job
-- (prune_finished_jobs, baseline section 11). Neither table was pruned before, so each
-- grew by a row per webhook delivery and per idempotent submit, forever.
--
--   webhook_deliveries   (sql/0130) a delivery id is kept only so that a resent delivery
--                        changes nothing. A delivery is refused before it reaches the
--                        table when its webhook-timestamp is more than
--                        TOLERANCE_SECONDS (300 s, worker/webhooks.py) from our clock, so
--                        an old id can never be needed again; a duplicate would only wake
--                        a job that reads the prediction anyway. Ids older than the
--                        retention age go, but never one younger than
--                        webhook_dedupe_floor(), even when an operator passes a tiny age.
--   idempotent_requests  (sql/0110) a key answers for idempotency_window() (24 hours);
--                        after that start_once forgets it anyway, so every expired key
--                        goes, whatever the retention age, and never one inside its window.
--
-- The function keeps its signature, its grants (create or replace keeps them; baseline
-- section 13 gave them) and its answer: the number of jobs deleted, nothing else.

-- The least age at which a delivery id may be forgotten: far above the timestamp
-- tolerance, so a delivery late by that much plus any clock skew between the API's host
-- and the database is still recognised.
create or replace function imagegen.webhook_dedupe_floor() returns interval
language sql
immutable
as $$ select interval '1 hour' $$;

-- Finished jobs older than the retention age go, and so do old cron run records, delivery
-- ids older than both the retention age and the floor, and expired idempotency keys.
-- Each delete is on its table's time index (received_at: sql/0130, created_at: sql/0110).
create or replace function public.prune_finished_jobs(p_older_than interval default null)
returns integer
language plpgsql
security definer
set search_path = public, pg_temp
as $$
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
$$;

revoke all on function imagegen.webhook_dedupe_floor() from public, anon, authenticated;
