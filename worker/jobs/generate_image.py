from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from worker.database import Job
from worker.errors import PermanentJobError
from worker.generation import run_prediction
from worker.jobs.context import JobContext, LeaseLost
from worker.models import GenerationParams
from worker.provider_limit import ProviderLimit
from worker.webhooks import run_with_webhook

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _GenerationLedger:
    """The generation row keeps the intent to create and the prediction id, fenced by the
    job's lease."""

    job: Job
    ctx: JobContext

    async def intend(self) -> datetime:
        requested_at = await self.ctx.db.request_prediction(self.job.id, self.ctx.worker_id)
        if requested_at is None:
            raise LeaseLost()
        return requested_at

    async def save(self, prediction_id: str) -> bool:
        return await self.ctx.db.record_prediction(self.job.id, self.ctx.worker_id, prediction_id)

    async def withdraw(self, requested_at: datetime) -> None:
        await self.ctx.db.withdraw_prediction_request(self.job.id, self.ctx.worker_id, requested_at)


async def generate_image(job: Job, ctx: JobContext) -> None:
    """Run (or resume, or adopt) the prediction, then hand over to a download job
    atomically. Creates wait their turn under the provider's shared limit. With webhooks on,
    the job is handed back while the model runs and this runs again when the prediction
    ends (worker/webhooks.py)."""
    generation = await ctx.db.begin_generation(job.id, ctx.worker_id)
    if generation is None:
        raise PermanentJobError("The generation is no longer active")
    params = GenerationParams.from_payload(job.payload)
    ledger = _GenerationLedger(job, ctx)
    limit = ProviderLimit(ctx.db, job.id)
    if webhook_url := ctx.settings.webhook_url:
        waited = await run_with_webhook(job, generation, params, ctx, ledger, limit, webhook_url)
        if waited is None:
            return  # snoozed until the webhook (or the fallback poll) wakes it
        result = waited
    else:
        result = await run_prediction(
            params,
            ctx.replicate,
            ctx.settings,
            resume_id=generation.get("replicate_prediction_id"),
            requested_at=generation.get("prediction_requested_at"),
            ledger=ledger,
            limit=limit,
        )
    download_job = await ctx.db.generation_downloading(
        job.id,
        ctx.worker_id,
        output_url=result.output_url,
        format=result.format,
        width=result.width,
        height=result.height,
        generation_time_seconds=result.seconds,
        provider_metrics=result.provider_metrics,
    )
    if download_job is None:
        raise LeaseLost()
    log.debug("prediction done; download queued", download_job_id=str(download_job))
