"""The two halves of a generation, shared by the job handlers and the legacy endpoints:
run a Replicate prediction for a set of parameters, and store its output."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from worker.errors import PermanentJobError
from worker.images import ImageInfo, inspect_image
from worker.models import (
    CONTENT_TYPES,
    GenerationParams,
    build_replicate_input,
    expected_size,
    first_output_url,
    output_format,
    prediction_request,
    takes_source_image,
)
from worker.replicate import Prediction, PredictionNotFound, ReplicateClient
from worker.settings import Settings
from worker.source_image import fetch_source_image
from worker.storage import SupabaseStorage

log = structlog.get_logger(__name__)

# Resumable predictions: anything else (failed, canceled) needs a new one.
_LIVE = {"starting", "processing", "succeeded"}


@dataclass(frozen=True)
class PredictionResult:
    prediction_id: str
    output_url: str
    format: str
    width: int
    height: int
    seconds: float


@dataclass(frozen=True)
class StoredImage:
    storage_path: str
    public_url: str
    file_size: int
    info: ImageInfo


async def run_prediction(
    params: GenerationParams,
    replicate: ReplicateClient,
    settings: Settings,
    *,
    resume_id: str | None = None,
    on_created: Callable[[str], Awaitable[None]] | None = None,
) -> PredictionResult:
    """Resume `resume_id` if it is still usable, else create (and pay for) a prediction,
    report its id through `on_created` before waiting, then wait for its output."""
    started = time.monotonic()
    prediction: Prediction | None = None
    if resume_id:
        prediction = await _resumable(replicate, resume_id)
    if prediction is None:
        image = None
        if params.source_image_url and takes_source_image(params.model_id):
            image = await fetch_source_image(
                params.source_image_url,
                max_bytes=settings.max_source_image_bytes,
                timeout=settings.http_timeout_seconds,
            )
        path, body = prediction_request(params, build_replicate_input(params, image))

        async def create() -> Prediction:
            created = await replicate.create_prediction(
                path,
                body,
                wait_seconds=settings.replicate_wait_seconds or None,
                cancel_after_seconds=settings.prediction_timeout_seconds,
            )
            log.info("prediction created", prediction_id=created.id, status=created.status)
            if on_created is not None:
                await on_created(created.id)
            return created

        prediction = await _finish_even_if_cancelled(create())
    prediction = await replicate.wait_for_prediction(
        prediction, deadline_seconds=settings.prediction_timeout_seconds + 30
    )
    output_url = first_output_url(prediction.output)
    if not output_url:
        raise PermanentJobError("The model finished without an image")
    width, height = expected_size(params)
    return PredictionResult(
        prediction_id=prediction.id,
        output_url=output_url,
        format=output_format(params.model_id, output_url),
        width=width,
        height=height,
        seconds=round(time.monotonic() - started, 3),
    )


async def _resumable(replicate: ReplicateClient, prediction_id: str) -> Prediction | None:
    """The saved prediction if it can still deliver its output; None means create anew."""
    try:
        prediction = await replicate.get_prediction(prediction_id)
    except PredictionNotFound:
        log.info("saved prediction not found; creating a new one", prediction_id=prediction_id)
        return None
    if prediction.status not in _LIVE:
        log.info("saved prediction unusable; creating a new one", status=prediction.status)
        return None
    log.info("resuming saved prediction", prediction_id=prediction_id)
    return prediction


async def _finish_even_if_cancelled(creation: Awaitable[Prediction]) -> Prediction:
    """Run the create-and-save step to its end even when the job is cancelled meanwhile
    (shutdown, timeout, lost lease), then let the cancellation through. Cancelled halfway,
    Replicate may have created a prediction whose id we never saved: the retry would pay
    for a second one. The step is bounded by the HTTP timeouts."""
    task = asyncio.ensure_future(creation)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # Consumed: the caller sees the cancellation.
        raise


async def store_output(
    output_url: str,
    storage_path: str,
    replicate: ReplicateClient,
    storage: SupabaseStorage,
    settings: Settings,
) -> StoredImage:
    """Stream the output to a temporary file, check it is the image it claims to be,
    and upload it with its content type (upsert: a retry overwrites, never duplicates)."""
    with tempfile.TemporaryFile() as spool:
        download = await replicate.download_output(
            output_url,
            spool,
            max_bytes=settings.max_image_bytes,
            timeout=settings.http_timeout_seconds,
        )
        info = inspect_image(spool)
        declared = (download.content_type or "").split(";")[0].strip().lower()
        if declared.startswith("image/") and declared != CONTENT_TYPES[info.format]:
            raise PermanentJobError(
                f"The model's output is {info.format} but was served as {declared}"
            )
        path = _with_extension(storage_path, info.format)
        spool.seek(0)
        await storage.upload(path, spool, CONTENT_TYPES[info.format])
    return StoredImage(path, storage.public_url(path), download.size, info)


def _with_extension(path: str, fmt: str) -> str:
    stem, dot, _ = path.rpartition(".")
    return f"{stem if dot else path}.{fmt}"
