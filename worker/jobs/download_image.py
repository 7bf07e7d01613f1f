from __future__ import annotations

import uuid

import structlog

from worker.database import Job
from worker.errors import PermanentJobError
from worker.generation import store_output
from worker.jobs.context import JobContext, LeaseLost

log = structlog.get_logger(__name__)


async def download_image(job: Job, ctx: JobContext) -> None:
    """Store the prediction's output at <user_id>/<generation_id>.<format>, then finish the
    generation (images row, status completed, job completed) in one transaction."""
    try:
        generation_id = uuid.UUID(str(job.payload["generation_id"]))
        user_id = uuid.UUID(str(job.payload["user_id"]))
        output_url = str(job.payload["output_url"])
        fmt = str(job.payload.get("format") or "webp")
    except (KeyError, ValueError) as exc:
        raise PermanentJobError(f"Malformed download job payload: {exc}") from exc

    async def still_held() -> None:
        # A cancel cancels the job: then nothing is uploaded (the heartbeat would notice
        # only at its next beat).
        held = await ctx.db.heartbeat_jobs(ctx.worker_id, [job.id], ctx.settings.lease_seconds)
        if job.id not in held:
            raise LeaseLost()

    stored = await store_output(
        output_url,
        f"{user_id}/{generation_id}.{fmt}",
        ctx.replicate,
        ctx.storage,
        ctx.settings,
        before_upload=still_held,
    )
    image = await ctx.db.finish_generation(
        generation_id,
        storage_path=stored.storage_path,
        public_url=stored.public_url,
        file_size=stored.file_size,
        width=stored.info.width,
        height=stored.info.height,
        format=stored.info.format,
        blurhash=stored.blurhash,
        job_id=job.id,
        worker_id=ctx.worker_id,
    )
    if image is None:
        await _remove_if_cancelled(generation_id, user_id, stored.storage_path, ctx)
        raise LeaseLost()
    # The one line a generation leaves at info level (failures log as warnings).
    log.info(
        "generation completed",
        generation_id=str(generation_id),
        model=image.get("model"),
        size=f"{stored.info.width}x{stored.info.height}",
        bytes=stored.file_size,
        url=stored.public_url,
    )


async def _remove_if_cancelled(
    generation_id: uuid.UUID, user_id: uuid.UUID, storage_path: str, ctx: JobContext
) -> None:
    """The generation was cancelled while its file was uploading: the file goes too. (A
    job taken over by another worker keeps it: that worker stores the same path.) A
    failed generation does not complete (sql/0020_client_writes.sql) until a retry,
    whose own download stores the file again."""
    generation = await ctx.db.get_generation(generation_id, user_id)
    if generation is not None and generation.get("status") == "failed":
        await ctx.storage.remove(storage_path)
        log.info("cancelled generation's file removed", generation_id=str(generation_id))
