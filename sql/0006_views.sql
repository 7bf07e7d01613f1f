-- What operators and the apps read (CONTRACT §3). security_invoker: a signed-in user sees
-- only their own jobs through these, as RLS on job_queue allows; operators see all.

create or replace view public.queue_health with (security_invoker = true) as
select
    job_type,
    status,
    count(*) as count,
    min(created_at) as oldest_job,
    max(created_at) as newest_job,
    avg(extract(epoch from completed_at - started_at))
        filter (where completed_at is not null and started_at is not null)
        as avg_duration_seconds,
    avg(attempts) as avg_attempts
from public.job_queue
group by job_type, status;

create or replace view public.failed_jobs_recent with (security_invoker = true) as
select
    id, job_type, payload, attempts, max_attempts, error_message, error_details,
    created_by, created_at, started_at, completed_at, updated_at
from public.job_queue
where status = 'failed' and updated_at > now() - interval '24 hours'
order by updated_at desc;

create or replace view public.stuck_jobs with (security_invoker = true) as
select
    id, job_type, payload, attempts, max_attempts, locked_by, locked_until,
    started_at, updated_at, created_by,
    round(extract(epoch from now() - started_at) / 60.0, 1) as minutes_processing
from public.job_queue
where status = 'processing' and started_at < now() - interval '10 minutes'
order by started_at;

-- Throughput and latency over the last hour, per job type: what a dashboard plots.
create or replace view public.queue_throughput with (security_invoker = true) as
select
    job_type,
    count(*) filter (where status = 'completed') as completed,
    count(*) filter (where status = 'failed') as failed,
    round(count(*) filter (where status = 'completed') / 60.0, 2) as completed_per_minute,
    percentile_cont(0.5) within group (order by extract(epoch from started_at - created_at))
        as p50_wait_seconds,
    percentile_cont(0.95) within group (order by extract(epoch from started_at - created_at))
        as p95_wait_seconds,
    percentile_cont(0.5) within group (order by extract(epoch from completed_at - started_at))
        as p50_run_seconds,
    percentile_cont(0.95) within group (order by extract(epoch from completed_at - started_at))
        as p95_run_seconds
from public.job_queue
where completed_at > now() - interval '1 hour'
  and status in ('completed', 'failed')
group by job_type;
