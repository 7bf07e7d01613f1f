-- Never two predictions for one generation, even when a worker dies (kill -9) between
-- Replicate creating a prediction and our saving its id. Before creating, the worker
-- records its intent; a retry that finds an intent but no saved id looks the prediction
-- up in Replicate's list (same input, created since the intent) and adopts it.

alter table public.image_generations
    add column if not exists prediction_requested_at timestamptz;

-- One prediction belongs to one generation: two generations with identical input cannot
-- both adopt the same orphan.
create unique index if not exists image_generations_replicate_prediction_id_key
    on public.image_generations (replicate_prediction_id)
    where replicate_prediction_id is not null;

-- About to create a prediction: returns the earliest intent not yet followed by a saved
-- id (a retry looks for predictions from then on), or null when the job is no longer this
-- worker's, in which case nothing may be created.
create or replace function public.request_prediction(p_job_id uuid, p_worker_id text)
returns timestamptz
language sql
security definer
set search_path = public, pg_temp
as $$
    update image_generations
    set prediction_requested_at = coalesce(prediction_requested_at, now()), updated_at = now()
    where id = _held_generation(p_job_id, p_worker_id)
    returning prediction_requested_at
$$;

-- As before, plus: saving an id fulfils the intent, and false (not an error) when another
-- generation already holds that prediction.
create or replace function public.record_prediction(
    p_job_id uuid,
    p_worker_id text,
    p_prediction_id text
) returns boolean
language plpgsql
security definer
set search_path = public, pg_temp
as $$
begin
    update image_generations
    set replicate_prediction_id = p_prediction_id, prediction_requested_at = null,
        updated_at = now()
    where id = _held_generation(p_job_id, p_worker_id);
    return found;
exception when unique_violation then
    return false;
end
$$;

revoke all on function public.request_prediction(uuid, text),
    public.record_prediction(uuid, text, text) from public, anon, authenticated;
grant execute on function public.request_prediction(uuid, text),
    public.record_prediction(uuid, text, text) to service_role;
