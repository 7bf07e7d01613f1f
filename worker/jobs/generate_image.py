from __future__ import annotations

import structlog

from worker.database import Job
from worker.errors import PermanentJobError
from worker.generation import run_prediction
from worker.jobs.context import JobContext, LeaseLost
from worker.models import GenerationParams

log = structlog.get_logger(__name__)


async def generate_image(job: Job, ctx: JobContext) -> None:
    """Run (or resume) the prediction, then hand over to a download job atomically."""
    generation = await ctx.db.begin_generation(job.id, ctx.worker_id)
    if generation is None:
        raise PermanentJobError("The generation is no longer active")
    params = GenerationParams.from_payload(job.payload)

    async def save_prediction(prediction_id: str) -> None:
        if not await ctx.db.record_prediction(job.id, ctx.worker_id, prediction_id):
            raise LeaseLost()

    result = await run_prediction(
        params,
        ctx.replicate,
        ctx.settings,
        resume_id=generation.get("replicate_prediction_id"),
        on_created=save_prediction,
    )
    download_job = await ctx.db.generation_downloading(
        job.id,
        ctx.worker_id,
        output_url=result.output_url,
        format=result.format,
        width=result.width,
        height=result.height,
        generation_time_seconds=result.seconds,
    )
    if download_job is None:
        raise LeaseLost()
    log.info("prediction done; download queued", download_job_id=str(download_job))
