from __future__ import annotations

import structlog

from worker.database import Job
from worker.errors import PermanentJobError
from worker.jobs.context import JobContext, LeaseLost
from worker.replicate import PredictionNotFound

log = structlog.get_logger(__name__)


async def cancel_prediction(job: Job, ctx: JobContext) -> None:
    """Stop a prediction whose generation was cancelled (sql/0020_client_writes.sql enqueues
    this job), so that Replicate stops charging for it. A prediction that has ended or
    that Replicate no longer knows needs nothing more."""
    prediction_id = job.payload.get("prediction_id")
    if not isinstance(prediction_id, str) or not prediction_id:
        raise PermanentJobError("Malformed cancel-prediction job payload: no prediction_id")
    try:
        status = (await ctx.replicate.cancel_prediction(prediction_id)).status
    except PredictionNotFound:
        status = "not found"
    if not await ctx.db.complete_job(
        job.id, ctx.worker_id, result={"prediction_id": prediction_id, "status": status}
    ):
        raise LeaseLost()
    log.info("prediction cancelled", prediction_id=prediction_id, status=status)
