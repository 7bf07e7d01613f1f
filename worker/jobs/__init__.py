"""Job handlers: plain `async def handler(job, context)` functions, one per job type.

A handler completes its own job on success, in the same SQL function as the state change
it makes; on failure it raises and the runner records the error (retry or fail)."""

from __future__ import annotations

from worker.jobs.cancel_prediction import cancel_prediction
from worker.jobs.context import JobContext
from worker.jobs.download_image import download_image
from worker.jobs.generate_image import generate_image
from worker.runner import Handler

HANDLERS: dict[str, Handler] = {
    "generate-image": generate_image,
    "download-image": download_image,
    "cancel-prediction": cancel_prediction,
}

__all__ = ["HANDLERS", "JobContext"]
