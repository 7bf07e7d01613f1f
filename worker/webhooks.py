"""Replicate webhooks: verifying a delivery, and a generation that waits for one without
holding a worker slot.

Deliveries are signed as Standard Webhooks specifies (Replicate's "Verify webhooks"):
HMAC-SHA256, keyed with the base64 part of the account's `whsec_...` secret, over
`{webhook-id}.{webhook-timestamp}.{raw body}`; `webhook-signature` is a space-separated
list of `v1,<base64>` entries, any of which may match. A timestamp more than
`TOLERANCE_SECONDS` away from our clock is refused (a replay).

With `PUBLIC_URL` set, the generate-image job creates the prediction with a `webhook`,
saves its id and snoozes until the model's expected end (sql/0130_replicate_webhooks.sql).
The delivery makes it due at once; without one it wakes anyway, polls once and snoozes
again (the fallback for a lost delivery).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from worker.errors import ImagegenError
from worker.generation import (
    PredictionLedger,
    PredictionResult,
    obtain_prediction,
    prediction_result,
)
from worker.models import GenerationParams
from worker.provider_limit import ProviderLimit
from worker.replicate import (
    Prediction,
    PredictionCanceled,
    PredictionFailed,
    PredictionNotFound,
    PredictionTimedOut,
)

if TYPE_CHECKING:
    from worker.database import Job
    from worker.jobs.context import JobContext

log = structlog.get_logger(__name__)

TOLERANCE_SECONDS = 300
# Replicate sends one delivery per event; the generation needs only the end.
EVENTS_FILTER = ["completed"]
# A poll that finds the prediction still running snoozes for half its age, within these.
RECHECK_MIN_SECONDS = 5.0
RECHECK_MAX_SECONDS = 300.0
_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class WebhookRefused(ImagegenError):
    """A delivery that is not Replicate's, or not now; `reason` names why (no secret in it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the webhook secret is not whsec_ followed by base64") from exc


def sign(key: bytes, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    """The `v1,<base64>` signature of a delivery."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify_delivery(
    headers: Mapping[str, str],
    body: bytes,
    key: bytes,
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """The delivery's webhook-id when it is signed with `key` and recent; else raises
    WebhookRefused. Signatures are compared in constant time."""
    webhook_id, timestamp, signatures = (headers.get(name, "") for name in _HEADERS)
    if not (webhook_id and timestamp and signatures):
        raise WebhookRefused("missing webhook-id, webhook-timestamp or webhook-signature")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookRefused("webhook-timestamp is not seconds since the epoch")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRefused(f"webhook-timestamp is more than {tolerance} s from now")
    expected = sign(key, webhook_id, timestamp, body).encode()
    for entry in signatures.split():
        if hmac.compare_digest(entry.encode(), expected):
            return webhook_id
    raise WebhookRefused("no signature matches")


def webhook_fields(webhook_url: str) -> dict[str, Any]:
    """What a prediction request carries for Replicate to report its end to us."""
    return {"webhook": webhook_url, "webhook_events_filter": EVENTS_FILTER}


async def run_with_webhook(
    job: Job,
    generation: Mapping[str, Any],
    params: GenerationParams,
    ctx: JobContext,
    ledger: PredictionLedger,
    limit: ProviderLimit,
    webhook_url: str,
) -> PredictionResult | None:
    """The generate-image attempt in webhook mode: the succeeded prediction's result, or
    None when the job was handed back to wait (no slot held meanwhile). A saved prediction
    is read (the delivery only woke us: the GET is the truth, whatever order deliveries
    came in); without one a prediction is created (or adopted) with the webhook."""
    prediction: Prediction | None = None
    saved = generation.get("replicate_prediction_id")
    fresh = False
    if saved:
        try:
            prediction = await ctx.replicate.get_prediction(saved)
        except PredictionNotFound:
            log.info("saved prediction not found; creating a new one", prediction_id=saved)
    if prediction is None:
        prediction = await obtain_prediction(
            params,
            ctx.replicate,
            ctx.settings,
            requested_at=generation.get("prediction_requested_at"),
            ledger=ledger,
            limit=limit,
            extra=webhook_fields(webhook_url),
        )
        fresh = True
    if prediction.status == "succeeded":
        return prediction_result(params, prediction, _run_seconds(prediction))
    if prediction.done:
        await _let_go(job, ctx, prediction)
    age = _age_seconds(prediction)
    if age > ctx.settings.prediction_timeout_seconds + 30:
        raise PredictionTimedOut(
            f"The prediction did not finish within {ctx.settings.prediction_timeout_seconds + 30} s"
        )
    delay = None if fresh else min(RECHECK_MAX_SECONDS, max(RECHECK_MIN_SECONDS, age / 2))
    until = await ctx.db.await_webhook(
        job.id, ctx.worker_id, grace_seconds=ctx.settings.webhook_grace_seconds, delay_seconds=delay
    )
    if until is None:
        from worker.jobs.context import LeaseLost  # here: worker.jobs imports this module

        raise LeaseLost()
    log.debug("waiting for the webhook", prediction_id=prediction.id, until=until.isoformat())
    return None


async def _let_go(job: Job, ctx: JobContext, prediction: Prediction) -> None:
    """The prediction failed or was cancelled: the generation lets go of it, then the
    attempt fails (retryable), so the retry pays for a new one as in polling mode."""
    await ctx.db.release_prediction(job.id, ctx.worker_id, prediction.id)
    if prediction.status == "failed":
        raise PredictionFailed(f"The model failed: {prediction.error or 'no reason given'}")
    raise PredictionCanceled(f"The prediction was {prediction.status} before it finished")


def _age_seconds(prediction: Prediction) -> float:
    created = prediction.created
    return 0.0 if created is None else (datetime.now(UTC) - created).total_seconds()


def _run_seconds(prediction: Prediction) -> float:
    """Created to completed, by Replicate's clock (the attempt itself lasted no time)."""
    created, completed = prediction.created, _parse(prediction.completed_at)
    if created is None or completed is None:
        return 0.0
    return max(0.0, (completed - created).total_seconds())


def _parse(value: str | None) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed and not parsed.tzinfo else parsed
