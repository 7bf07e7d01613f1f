from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from worker.database import Job
from worker.errors import PermanentJobError
from worker.jobs.context import JobContext, LeaseLost

log = structlog.get_logger(__name__)

# The generation's job is held by a worker (it is reading the prediction, or about to
# snooze): look again this much later.
BUSY_RETRY_SECONDS = 1.0


async def process_webhook(job: Job, ctx: JobContext) -> None:
    """A prediction ended (accept_webhook queued this, sql/0130_replicate_webhooks.sql):
    its generation's generate-image job becomes due now, and that job reads the
    prediction and moves the generation on. Whether it is woken by this, by a duplicate
    or by its own fallback poll, the job's lease makes the move happen once."""
    prediction_id = job.payload.get("prediction_id")
    if not isinstance(prediction_id, str) or not prediction_id:
        raise PermanentJobError("Malformed process-webhook job payload: no prediction_id")
    outcome = await ctx.db.wake_prediction_job(prediction_id)
    if outcome == "busy":
        later = datetime.now(UTC) + timedelta(seconds=BUSY_RETRY_SECONDS)
        if not await ctx.db.snooze_job(job.id, ctx.worker_id, later):
            raise LeaseLost()
        return
    result = {"prediction_id": prediction_id, "outcome": outcome}
    if not await ctx.db.complete_job(job.id, ctx.worker_id, result=result):
        raise LeaseLost()
    log.debug("webhook processed", prediction_id=prediction_id, outcome=outcome)
