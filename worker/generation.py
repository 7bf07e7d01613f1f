"""The two halves of a generation, shared by the job handlers and the legacy endpoints:
run a Replicate prediction for a set of parameters, and store its output."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from worker.errors import JobError, PermanentJobError
from worker.images import ImageInfo, inspect_image, preview_hash, sanitize_svg
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
from worker.provider_limit import ProviderLimit
from worker.replicate import (
    OutputPolicy,
    Prediction,
    PredictionNotFound,
    ReplicateClient,
    ReplicateRateLimited,
    ReplicateTransientError,
)
from worker.settings import Settings
from worker.source_image import fetch_source_image
from worker.storage import SupabaseStorage

log = structlog.get_logger(__name__)

# Resumable predictions: anything else (failed, canceled) needs a new one.
_LIVE = {"starting", "processing", "succeeded"}
# An unsaved prediction is looked for among those created since the intent, less this
# much for the difference between Replicate's clock and the database's.
ADOPTION_SLACK = timedelta(seconds=60)
# At Replicate's 100 a page: how far back the search goes before creating anew.
ADOPTION_MAX_PAGES = 20
# A create that failed ambiguously (5xx, timeout) is resent after looking for it.
CREATE_TRIES = 3
CREATE_RETRY_PAUSE_SECONDS = 0.5


class PredictionLedger(Protocol):
    """Where a job keeps its prediction (the generation row), so no retry pays twice."""

    async def intend(self) -> datetime:
        """Durably note that a prediction is about to be created; returns the earliest
        such note not yet followed by a saved id. Raises when the job is no longer ours
        (nothing may be created then)."""
        ...

    async def save(self, prediction_id: str) -> bool:
        """Save the prediction as the generation's; False when the job is no longer ours or
        another generation holds that prediction."""
        ...

    async def withdraw(self, requested_at: datetime) -> None:
        """The create after the note `requested_at` was refused (429): nothing was created,
        so the note may go, if no earlier attempt's create is behind it."""
        ...


class PredictionNotSaved(JobError):
    """The new prediction's id could not be saved; a retry finds it, or another, to adopt."""

    def __init__(self) -> None:
        super().__init__("The job was interrupted before saving its prediction; retrying")


@dataclass(frozen=True)
class PredictionResult:
    prediction_id: str
    output_url: str
    format: str
    width: int
    height: int
    seconds: float
    # What Replicate reported, as the generation keeps it (provider_figures).
    provider_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredImage:
    storage_path: str
    public_url: str
    file_size: int
    info: ImageInfo
    blurhash: str | None


async def run_prediction(
    params: GenerationParams,
    replicate: ReplicateClient,
    settings: Settings,
    *,
    resume_id: str | None = None,
    requested_at: datetime | None = None,
    ledger: PredictionLedger | None = None,
    limit: ProviderLimit | None = None,
) -> PredictionResult:
    """Obtain the prediction (`obtain_prediction`), then poll it until it ends."""
    started = time.monotonic()
    prediction = await obtain_prediction(
        params,
        replicate,
        settings,
        resume_id=resume_id,
        requested_at=requested_at,
        ledger=ledger,
        limit=limit,
    )
    prediction = await replicate.wait_for_prediction(
        prediction, deadline_seconds=settings.prediction_timeout_seconds + 30
    )
    return prediction_result(params, prediction, time.monotonic() - started)


async def obtain_prediction(
    params: GenerationParams,
    replicate: ReplicateClient,
    settings: Settings,
    *,
    resume_id: str | None = None,
    requested_at: datetime | None = None,
    ledger: PredictionLedger | None = None,
    limit: ProviderLimit | None = None,
    extra: dict[str, Any] | None = None,
) -> Prediction:
    """Resume `resume_id` if it is still usable; else adopt the prediction an earlier
    attempt created (after `requested_at`, its recorded intent) but died before saving;
    else create (and pay for) one, its request with `extra` (the webhook fields). With a
    `ledger` the intent is recorded before creating and the id saved before it is
    returned; the create itself may wait (`Prefer: wait`) before the id is known, a
    window the adoption covers. With a `limit`, each create takes the provider's shared
    token first (worker.provider_limit)."""
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
        body |= extra or {}
        if ledger is not None and requested_at is not None:
            prediction = await _adopt(replicate, params, body, requested_at, ledger)
        if prediction is None:
            prediction = await _create(replicate, settings, params, path, body, ledger, limit)
    return prediction


def prediction_result(
    params: GenerationParams, prediction: Prediction, seconds: float
) -> PredictionResult:
    """A succeeded prediction's output, as the download job takes it."""
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
        seconds=round(seconds, 3),
        provider_metrics=provider_figures(prediction),
    )


def provider_figures(prediction: Prediction) -> dict[str, Any]:
    """The prediction's own figures (sql/0121_generation_costs.sql): its `metrics` as
    Replicate gave them (predict_time is the GPU time it bills) and its status history
    from its own timestamps."""
    raw = prediction.raw
    moments = [
        ("starting", raw.get("created_at")),
        ("processing", raw.get("started_at")),
        (prediction.status, raw.get("completed_at")),
    ]
    metrics = prediction.metrics if isinstance(prediction.metrics, dict) else {}
    return {
        "prediction_id": prediction.id,
        "status": prediction.status,
        "metrics": metrics,
        "history": [{"status": status, "at": at} for status, at in moments if at],
    }


async def _create(
    replicate: ReplicateClient,
    settings: Settings,
    params: GenerationParams,
    path: str,
    body: dict[str, Any],
    ledger: PredictionLedger | None,
    limit: ProviderLimit | None = None,
) -> Prediction:
    """Take the provider's token (with a `limit`), record the intent, create, save the id.
    A 5xx or a timeout after sending leaves it unknown whether Replicate created the
    prediction: with a ledger, look for it (adopt) before sending again; without one,
    resending could pay twice, so the error stands. With a `limit` a 429 is not resent
    here: it pauses every worker's creates, and this job waits in the queue."""
    if limit is not None:
        await limit.take()  # before the intent: a job that waits has created nothing
    intent = await ledger.intend() if ledger is not None else None
    for attempt in range(1, CREATE_TRIES + 1):
        if limit is not None and attempt > 1:
            await limit.take()
        try:
            return await _finish_even_if_cancelled(
                _create_and_save(replicate, settings, path, body, ledger, limit is None)
            )
        except ReplicateRateLimited as exc:
            if limit is None:
                raise
            if ledger is not None and intent is not None and attempt == 1:
                await ledger.withdraw(intent)  # later tries follow an ambiguous one
            raise await limit.rate_limited(exc.retry_after) from exc
        except ReplicateTransientError as exc:
            if ledger is None or intent is None or attempt == CREATE_TRIES:
                raise
            log.info("create failed; looking for the prediction before resending", error=str(exc))
        await asyncio.sleep(CREATE_RETRY_PAUSE_SECONDS * attempt)
        if adopted := await _adopt(replicate, params, body, intent, ledger):
            return adopted
    raise AssertionError("unreachable")


async def _create_and_save(
    replicate: ReplicateClient,
    settings: Settings,
    path: str,
    body: dict[str, Any],
    ledger: PredictionLedger | None,
    retry_rate_limited: bool,
) -> Prediction:
    created = await replicate.create_prediction(
        path,
        body,
        wait_seconds=settings.replicate_wait_seconds or None,
        cancel_after_seconds=settings.prediction_timeout_seconds,
        retry_rate_limited=retry_rate_limited,
    )
    log.debug("prediction created", prediction_id=created.id, status=created.status)
    if ledger is not None and not await ledger.save(created.id):
        raise PredictionNotSaved()
    return created


async def _adopt(
    replicate: ReplicateClient,
    params: GenerationParams,
    body: dict[str, Any],
    requested_at: datetime,
    ledger: PredictionLedger,
) -> Prediction | None:
    """The live prediction with exactly this request, created since the intent, saved as
    ours; None when there is none. Candidates another generation holds (identical input)
    are skipped: the ledger refuses them."""
    since = requested_at - ADOPTION_SLACK
    wanted = json.loads(json.dumps(body["input"]))
    cursor: str | None = None
    for _ in range(ADOPTION_MAX_PAGES):
        page = await replicate.list_predictions(cursor)
        for candidate in page.predictions:
            created = candidate.created
            if created is not None and created < since:
                return None
            if (
                candidate.status in _LIVE
                and _same_model(candidate, params)
                and candidate.input == wanted
                and await ledger.save(candidate.id)
            ):
                log.info("adopted an unsaved prediction", prediction_id=candidate.id)
                return candidate
        cursor = page.next_cursor
        if cursor is None:
            return None
    log.warning("no prediction to adopt in the pages searched", pages=ADOPTION_MAX_PAGES)
    return None


def _same_model(prediction: Prediction, params: GenerationParams) -> bool:
    if params.model_version:
        return prediction.version == params.model_version.rpartition(":")[2]
    return prediction.model == params.model_id


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
    *,
    before_upload: Callable[[], Awaitable[None]] | None = None,
) -> StoredImage:
    """Stream the output to a temporary file, check it is the image it claims to be,
    take its preview hash from those bytes, and upload it with its content type (upsert:
    a retry overwrites, never duplicates). `before_upload` may raise to store nothing
    (the job was cancelled while the output downloaded)."""
    with tempfile.TemporaryFile() as spool:
        download = await replicate.download_output(
            output_url,
            spool,
            max_bytes=settings.max_image_bytes,
            timeout=settings.http_timeout_seconds,
            policy=output_policy(settings),
        )
        info = inspect_image(spool)
        declared = (download.content_type or "").split(";")[0].strip().lower()
        if declared.startswith("image/") and declared != CONTENT_TYPES[info.format]:
            raise PermanentJobError(
                f"The model's output is {info.format} but was served as {declared}"
            )
        size = download.size
        if info.format == "svg":
            size = sanitize_svg(spool)
            info = inspect_image(spool)
        # Decoding is CPU work: off the event loop, so the worker's other jobs go on.
        preview = await asyncio.to_thread(preview_hash, spool, info)
        path = _with_extension(storage_path, info.format)
        if before_upload is not None:
            await before_upload()
        spool.seek(0)
        await storage.upload(path, spool, CONTENT_TYPES[info.format])
    return StoredImage(path, storage.public_url(path), size, info, preview)


def output_policy(settings: Settings) -> OutputPolicy:
    """Where this deployment's output downloads may go (worker.replicate.OutputPolicy)."""
    return OutputPolicy(
        hosts=settings.output_host_list, private_origins=settings.output_private_origin_set
    )


def _with_extension(path: str, fmt: str) -> str:
    stem, dot, _ = path.rpartition(".")
    return f"{stem if dot else path}.{fmt}"
