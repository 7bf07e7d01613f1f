"""Job handlers: plain `async def handler(job, context)` functions, one per job type.

A handler completes its own job on success, in the same SQL function as the state change
it makes; on failure it raises and the runner records the error (retry or fail)."""

from __future__ import annotations

from worker.jobs.cancel_prediction import cancel_prediction
from worker.jobs.cleanup_storage import cleanup_storage
from worker.jobs.context import JobContext
from worker.jobs.download_image import download_image
from worker.jobs.generate_image import generate_image
from worker.jobs.process_webhook import process_webhook
from worker.runner import JobType

# What each job type's log lines carry; a failed attempt is recorded by the queue's own
# rule (the generation follows its job in SQL: job_ended_fails_generation).
HANDLERS: dict[str, JobType] = {
    "generate-image": JobType(generate_image, log_fields=("generation_id", "model_id")),
    "download-image": JobType(download_image, log_fields=("generation_id", "model_id")),
    "cancel-prediction": JobType(cancel_prediction, log_fields=("generation_id", "prediction_id")),
    "cleanup-storage": JobType(cleanup_storage),
    "process-webhook": JobType(process_webhook, log_fields=("prediction_id", "status")),
}

__all__ = ["HANDLERS", "JobContext"]
