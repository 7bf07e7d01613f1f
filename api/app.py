"""The HTTP service: the old Edge Functions under /functions/v1/, health and metrics.

Handlers validate, call one SQL function (through worker.database) or the shared
generation code, and answer in the old shapes. Errors are always {"error": "..."}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, Histogram, generate_latest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AuthenticatedUser, AuthError, TokenVerifier, verify_worker_secret
from api.docs import install_docs
from api.limits import RequestLimits
from api.monitor import install_monitor
from worker.database import Database
from worker.errors import ImagegenError, UserFacingError
from worker.gateway import DatabaseError, GatewayUnavailable
from worker.generation import run_prediction
from worker.models import GenerationParams
from worker.service import Worker, open_worker
from worker.settings import Settings
from worker.webhooks import WebhookRefused, signing_key, verify_delivery

log = structlog.get_logger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": (
        "authorization, x-client-info, apikey, content-type, idempotency-key"
    ),
}
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # arrays and objects inside each other; our bodies need 2
FUNCTIONS = "/functions/v1"
WEBHOOKS_IN_FLIGHT = 256  # deliveries handled at once (each is one short transaction)

HTTP_LATENCY = Histogram(
    "imagegen_http_request_duration_seconds",
    "HTTP request latency by route, method and status.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 120),
)
QUEUE_DEPTH = Gauge(
    "imagegen_queue_depth", "Active jobs by type and status.", ["job_type", "status"]
)


class ClientError(UserFacingError):
    """Answered as {"error": message} with `status`; never logged as a fault."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# Admission control's refusals (sql/0001_baseline.sql, section 7): SQLSTATE -> (status,
# Retry-After).
REFUSALS = {"PT429": (429, "10"), "PT503": (503, "30")}
# Refused for good, no retry helps: an Idempotency-Key reused for another request
# (sql/0110_idempotent_requests.sql).
REJECTIONS = {"PT422": 422}
IDEMPOTENCY_KEY = "idempotency-key"
REPLAYED = {"Idempotent-Replayed": "true"}  # on an answer given again for a repeated key
OUTAGE_RETRY_AFTER = "5"  # the database unreachable: the pool reconnects within seconds


# The SQL parameter types: a number beyond them is the caller's error (400), not a
# missing function signature (503). The model's own limits are the database's to check.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class GenerationBody(BaseModel):
    """The generation parameters every endpoint accepts (docs/CONTRACT.md §1)."""

    model_config = ConfigDict(extra="ignore")

    # The examples are what the API docs show and "Try it out" sends.
    prompt: str = Field(examples=["a lighthouse at dusk, oil painting"])
    model_id: str = Field(examples=["black-forest-labs/flux-schnell"])
    model_version: str | None = Field(default=None, examples=[None])
    width: Int32 | None = Field(default=None, examples=[1344])
    height: Int32 | None = Field(default=None, examples=[768])
    num_inference_steps: Int32 | None = Field(default=None, examples=[4])
    guidance_scale: float | None = Field(default=None, examples=[3.5])
    seed: Int64 | None = Field(default=None, examples=[42])
    negative_prompt: str | None = Field(default=None, examples=["blurry, low quality"])
    source_image_url: str | None = Field(default=None, examples=["https://example.com/photo.jpg"])
    strength: float | None = Field(default=None, examples=[0.8])
    style: str | None = Field(default=None, examples=["photographic"])

    @field_validator("*")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        """PostgreSQL text holds neither NUL nor lone surrogates (JSON can carry both)."""
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text") from None
            if "\x00" in value:
                raise ValueError("must not contain NUL characters")
        return value

    def fields(self) -> dict[str, Any]:
        return self.model_dump(include=set(GenerationBody.model_fields))

    async def params(self, db: Database) -> GenerationParams:
        """Checked against the model's limits, with its defaults, as a job would carry."""
        try:
            return GenerationParams.from_payload(await db.generation_parameters(**self.fields()))
        except (DatabaseError, GatewayUnavailable) as exc:
            raise _database_failure(exc) from exc


class LegacyBody(GenerationBody):
    generation_id: uuid.UUID | None = None


Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, model: type[Body]) -> Body:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ClientError(413, "Request body too large")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ClientError(413, "Request body too large")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ClientError(400, "Request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise ClientError(400, f"{field}: {first['msg']}") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(raw: bytes) -> Any:
    """The body as JSON, or a 400 that says what is wrong with it."""
    try:
        text = raw.decode("utf-8-sig") if raw else "{}"
    except UnicodeDecodeError as exc:
        raise ClientError(400, f"Request body must be UTF-8 JSON (byte {exc.start})") from exc
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ClientError(400, f"Request body nests more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ClientError(400, f"Request body must be JSON ({exc.msg} at {exc.pos})") from exc
    except ValueError as exc:  # NaN, Infinity, an integer of over 4300 digits
        raise ClientError(400, f"Request body must be JSON ({exc})") from exc


def json_depth(text: str) -> int:
    """How deep arrays and objects nest, counted before parsing (the parser would recurse
    once a level); brackets inside strings do not count."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # the common case: too few brackets to go too deep, no scan needed
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return depth
        elif char in "]}":
            depth -= 1
    return depth


@dataclass
class Service:
    settings: Settings
    worker: Worker
    verifier: TokenVerifier
    runs_jobs: bool

    async def user(self, request: Request) -> AuthenticatedUser:
        try:
            return await self.verifier.verify(request.headers.get("authorization"))
        except AuthError as exc:
            raise ClientError(401, str(exc)) from exc

    async def require_worker_secret(self, request: Request) -> None:
        """The worker secret, or the project's service-role key (what the old cron sends)."""
        secret = self.settings.worker_secret
        header = request.headers.get("authorization")
        if verify_worker_secret(header, secret.get_secret_value() if secret else None):
            return
        if not await self.verifier.is_service_role(header):
            raise ClientError(401, "Missing or invalid worker secret")


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _database_failure(exc: DatabaseError | GatewayUnavailable) -> ClientError:
    if isinstance(exc, DatabaseError) and exc.is_invalid_input:
        return ClientError(400, exc.message)
    if isinstance(exc, DatabaseError) and exc.sqlstate in REJECTIONS:
        return ClientError(REJECTIONS[exc.sqlstate], exc.message)
    if isinstance(exc, DatabaseError) and exc.sqlstate in REFUSALS:
        status, retry_after = REFUSALS[exc.sqlstate]
        return ClientError(status, exc.message, {"Retry-After": _retry_after(exc, retry_after)})
    log.error("database call failed", error=str(exc))
    return ClientError(
        503,
        "The service is temporarily unavailable, please retry",
        {"Retry-After": OUTAGE_RETRY_AFTER},
    )


def _retry_after(exc: DatabaseError, default: str) -> str:
    """Seconds until the limit that refused resets (its DETAIL), else the default."""
    try:
        reset_at = datetime.fromisoformat(exc.detail or "")
    except ValueError:
        return default
    return str(max(1, math.ceil((reset_at - datetime.now(UTC)).total_seconds())))


def _failure_message(exc: Exception) -> str:
    """What the synchronous endpoints answer (with 400, as the old ones did)."""
    if isinstance(exc, DatabaseError | GatewayUnavailable):
        return _database_failure(exc).message
    if isinstance(exc, ImagegenError) and exc.user_message is not None:
        # Errors of Replicate, the source image or storage are written for the user.
        return exc.user_message or type(exc).__name__
    log.exception("generation failed unexpectedly", error_type=type(exc).__name__)
    return "Image generation failed"


# Endpoints.


async def start_generation(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    body = await parse_body(request, GenerationBody)
    db, key = service.worker.db, request.headers.get(IDEMPOTENCY_KEY)
    replayed = False
    try:
        if key is None:
            generation_id, job_id = await db.start_generation(user.user_id, **body.fields())
        else:
            fields = {name: value for name, value in body.fields().items() if value is not None}
            started, replayed = await db.start_once(user.user_id, key, "start-generation", fields)
            generation_id, job_id = started["generation_id"], started["job_id"]
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    return JSONResponse(
        {
            "success": True,
            "generation_id": str(generation_id),
            "job_id": str(job_id),
            "status": "queued",
            "message": "Image generation started. You will be notified when complete.",
        },
        headers=REPLAYED if replayed else None,
    )


async def process_jobs(request: Request) -> Response:
    service = _service(request)
    await service.require_worker_secret(request)
    wait = request.query_params.get("wait", "").lower() in ("1", "true", "yes")
    try:
        if service.runs_jobs and not service.worker.runner.stopping:
            processed, errors = await service.worker.runner.run_once(wait=wait)
        else:
            # API-only process: wake whichever workers listen.
            await service.worker.db.nudge_workers()
            processed, errors = 0, 0
    except (DatabaseError, GatewayUnavailable) as exc:
        return JSONResponse({"success": False, "error": str(exc)}, status_code=500)
    return JSONResponse(
        {
            "success": True,
            "processed": processed,
            "errors": errors,
            "message": f"Processed {processed} job(s) with {errors} error(s)",
        }
    )


async def process_generation(request: Request) -> Response:
    service = _service(request)
    await service.require_worker_secret(request)
    body = await parse_body(request, GenerationBody)
    params = await body.params(service.worker.db)
    try:
        result = await run_prediction(params, service.worker.replicate, service.settings)
    except Exception as exc:
        message = _failure_message(exc)
        return JSONResponse({"success": False, "error": message}, status_code=400)
    return JSONResponse(
        {
            "success": True,
            "output_url": result.output_url,
            "format": result.format,
            "width": result.width,
            "height": result.height,
            "generation_time_seconds": result.seconds,
        }
    )


async def generate_image(request: Request) -> Response:
    """The legacy synchronous path: the generation goes through the queue like any other
    (admission, limits, leases, one prediction per row) and the call runs it to its end.
    With `generation_id` it is the caller's own row (the mobile app inserts it pending)."""
    service = _service(request)
    user = await service.user(request)
    body = await parse_body(request, LegacyBody)
    db = service.worker.db
    started = time.monotonic()
    try:
        generation_id, _status = await db.start_legacy_generation(
            user.user_id, body.generation_id, **body.fields()
        )
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    generation = await _run_until_ended(service, generation_id, user.user_id)
    if generation["status"] == "failed":
        return JSONResponse(
            {"error": generation.get("error_message") or "Image generation failed"},
            status_code=400,
        )
    if not generation["images"]:  # an old platform's row, completed without one
        raise ClientError(400, "generation_id: This generation has no image")
    image = generation["images"][0]
    # Whole seconds, as the old function answered.
    seconds = generation.get("generation_time_seconds")
    generation_time = round(float(seconds) if seconds is not None else time.monotonic() - started)
    if body.generation_id is not None:
        return JSONResponse(
            {"success": True, "image": _json(image), "generation_time": generation_time}
        )
    return JSONResponse(
        {
            "success": True,
            "url": image["public_url"],
            "format": image["format"],
            "generation_time": generation_time,
        }
    )


async def _run_until_ended(
    service: Service, generation_id: uuid.UUID, user_id: uuid.UUID
) -> dict[str, Any]:
    """Runs the generation's jobs here as they come due (a worker may take them first,
    then this only waits) until it has completed (with its image) or failed; 504 past the
    deadline (the generation goes on: the app can read its row)."""
    worker, settings = service.worker, service.settings
    deadline = time.monotonic() + settings.prediction_timeout_seconds + 60
    delay = 0.05
    while True:
        try:
            job = await worker.db.claim_generation_job(
                generation_id, worker.runner.worker_id, settings.lease_seconds
            )
            if job is not None:
                await worker.runner.run_claimed(job)
                delay = 0.05
                continue
            generation = await worker.db.get_generation(generation_id, user_id)
        except (DatabaseError, GatewayUnavailable) as exc:
            raise _database_failure(exc) from exc
        if generation is None:
            raise ClientError(400, "generation_id: Unknown generation")
        if generation["status"] in ("completed", "failed"):
            return generation
        if time.monotonic() > deadline:
            raise ClientError(504, f"Generation {generation_id} is still running")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


async def replicate_webhook(request: Request) -> Response:
    """A Replicate delivery: verified (worker/webhooks.py), then recorded and turned into a
    process-webhook job in one transaction (sql/0130_replicate_webhooks.sql). A refusal is
    a 401 and one warning line, which names the reason, never the secret or signature."""
    service = _service(request)
    body = await request.body()
    secret = service.settings.replicate_webhook_secret
    try:
        if secret is None:
            raise WebhookRefused("no REPLICATE_WEBHOOK_SECRET is configured")
        webhook_id = verify_delivery(
            request.headers, body, signing_key(secret.get_secret_value()), time.time()
        )
    except WebhookRefused as exc:
        log.warning(
            "webhook refused",
            reason=exc.reason,
            webhook_id=request.headers.get("webhook-id", "")[:80],
            client=request.client.host if request.client else None,
        )
        raise ClientError(401, f"Webhook refused: {exc.reason}") from exc
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise ClientError(400, "The delivery must be a JSON object")
    try:
        accepted = await service.worker.db.accept_webhook(webhook_id, payload)
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    return JSONResponse({"success": True, "accepted": accepted})


class BatchPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str
    negative_prompt: str | None = None
    seed: Int64 | None = None
    tags: list[str] | None = None  # the app sends them; nothing stores them


class BatchSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_id: str = Field(examples=["black-forest-labs/flux-schnell"])
    model_version: str | None = None
    width: Int32 | None = None
    height: Int32 | None = None
    steps: Int32 | None = None
    guidance_scale: float | None = None


class BatchBody(BaseModel):
    """batch-generate's body (M/store/batchStore.ts)."""

    model_config = ConfigDict(extra="ignore")

    prompts: list[BatchPrompt]
    shared_settings: BatchSettings
    batch_name: str | None = None


async def batch_generate(request: Request) -> Response:
    service = _service(request)
    user = await service.user(request)
    body = await parse_body(request, BatchBody)
    db, key = service.worker.db, request.headers.get(IDEMPOTENCY_KEY)
    batch_request = body.model_dump(exclude_none=True, exclude={"prompts": {"__all__": {"tags"}}})
    replayed = False
    try:
        if key is None:
            batch = await db.start_batch(user.user_id, batch_request)
        else:
            batch, replayed = await db.start_once(
                user.user_id, key, "batch-generate", batch_request
            )
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    return JSONResponse({"batch": _json(batch)}, headers=REPLAYED if replayed else None)


async def process_queue(request: Request) -> Response:
    """Starts the caller's pending generations (what a retry left) within their limits."""
    service = _service(request)
    user = await service.user(request)
    try:
        started = await service.worker.db.process_queue(user.user_id)
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    return JSONResponse(
        {"success": True, "started": started, "message": f"Started {started} generation(s)"}
    )


async def get_generation(request: Request) -> Response:
    """A generation and its image, for its owner (what the CLI polls), with `queue`: its
    place in the queue and an estimate of when it is done (generation_queue_status)."""
    service = _service(request)
    user = await service.user(request)
    try:
        generation_id = uuid.UUID(request.query_params.get("id", ""))
    except ValueError as exc:
        raise ClientError(400, "id: must be a generation id (UUID)") from exc
    db = service.worker.db
    try:
        generation = await db.get_generation(generation_id, user.user_id)
        if generation is None:
            raise ClientError(404, "Generation not found")
        generation["queue"] = await db.generation_queue_status(generation_id, user.user_id)
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    return JSONResponse(generation)


class CancelBody(BaseModel):
    """cancel-generation's body: `generation_id`, as generate-image takes it (or
    `generationId`, as the later backend's apps name it, docs/CLIENTS.md §3)."""

    model_config = ConfigDict(extra="ignore")

    generation_id: uuid.UUID = Field(validation_alias=AliasChoices("generation_id", "generationId"))


async def cancel_generation(request: Request) -> Response:
    """The owner cancels a generation: the same cancel as rpc('cancel_generation') and the
    apps' UPDATE (sql/0120_cancel_generation.sql). 404 for another user's or an unknown
    id, 409 when it has already ended."""
    service = _service(request)
    user = await service.user(request)
    body = await parse_body(request, CancelBody)
    try:
        outcome = await service.worker.db.cancel_generation(body.generation_id, user.user_id)
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    if outcome == "unknown":
        raise ClientError(404, "Generation not found")
    if outcome != "cancelled":
        raise ClientError(409, f"Generation has already {outcome}")
    return JSONResponse(
        {
            "success": True,
            "generation_id": str(body.generation_id),
            "status": "failed",
            "error_message": "Cancelled by user",
        }
    )


async def list_models(request: Request) -> Response:
    """The models a user may choose from, with their limits (what `imagegen models` shows)."""
    service = _service(request)
    await service.user(request)
    try:
        models = await service.worker.db.list_models()
    except (DatabaseError, GatewayUnavailable) as exc:
        raise _database_failure(exc) from exc
    return JSONResponse({"models": [_json(row) for row in models]})


async def health(request: Request) -> Response:
    service = _service(request)
    database = await service.worker.db.ping()
    runner = service.worker.runner
    state = "disabled" if not service.runs_jobs else ("running" if runner.alive else "stopped")
    healthy = database and state != "stopped"
    return JSONResponse(
        {"status": "ok" if healthy else "unhealthy", "database": database, "runner": state},
        status_code=200 if healthy else 503,
    )


async def metrics(request: Request) -> Response:
    service = _service(request)
    with contextlib.suppress(DatabaseError, GatewayUnavailable):
        rows = await service.worker.db.queue_depth()
        QUEUE_DEPTH.clear()
        for row in rows:
            QUEUE_DEPTH.labels(row["job_type"], row["status"]).set(row["count"])
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(row, default=str))


# The application.


class EdgeMiddleware:
    """CORS for /functions/v1 (its preflight answered here) and the latency histogram.
    Plain ASGI: Starlette's BaseHTTPMiddleware (`@app.middleware`) costs a task and a
    pair of memory streams per request, a large share of the accept path's CPU."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        functions = scope["path"].startswith(FUNCTIONS)
        status = 0
        if scope["method"] == "OPTIONS" and functions:
            status = 200
            await PlainTextResponse("ok", headers=CORS_HEADERS)(scope, receive, send)
        else:

            async def send_with_cors(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if functions:
                        MutableHeaders(scope=message).update(CORS_HEADERS)
                await send(message)

            await self.app(scope, receive, send_with_cors)
        route = scope.get("route")
        HTTP_LATENCY.labels(getattr(route, "path", "other"), scope["method"], str(status)).observe(
            time.perf_counter() - started
        )


# A request that works on every deployment with the default models (and on `make dev`).
REQUEST_EXAMPLE = {
    "prompt": "a lighthouse at dusk, oil painting",
    "model_id": "black-forest-labs/flux-schnell",
    "width": 1344,
    "height": 768,
}


IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": (
        "The same key from the same user within 24 h answers the first answer again and "
        "starts nothing; with a different body it is a 422."
    ),
}


def _openapi_inputs(name: str, method: str) -> dict[str, Any] | None:
    """What the handlers parse themselves (the body, get-generation's id), for /openapi.json."""
    bodies: dict[str, type[BaseModel]] = {
        "start-generation": GenerationBody,
        "process-generation": GenerationBody,
        "generate-image": LegacyBody,
        "batch-generate": BatchBody,
        "cancel-generation": CancelBody,
    }
    if name in bodies and method == "POST":
        schema = bodies[name].model_json_schema()
        examples = {"batch-generate": BATCH_EXAMPLE, "cancel-generation": CANCEL_EXAMPLE}
        example = examples.get(name, REQUEST_EXAMPLE)
        content = {"schema": schema, "example": example}
        inputs: dict[str, Any] = {
            "requestBody": {"required": True, "content": {"application/json": content}}
        }
        if name == "cancel-generation":
            inputs["responses"] = CANCEL_REFUSALS
        if name in ("start-generation", "batch-generate"):
            inputs["parameters"] = [IDEMPOTENCY_PARAMETER]
        return inputs
    if name == "get-generation":
        uuid_schema = {"type": "string", "format": "uuid"}
        return {
            "parameters": [{"name": "id", "in": "query", "required": True, "schema": uuid_schema}]
        }
    return None


BATCH_EXAMPLE = {
    "prompts": [{"text": "a lighthouse at dusk"}, {"text": "a red fox in snow"}],
    "shared_settings": {"model_id": "black-forest-labs/flux-schnell", "width": 1344, "height": 768},
    "batch_name": "evening",
}


CANCEL_EXAMPLE = {"generation_id": "00000000-0000-0000-0000-000000000000"}
CANCEL_REFUSALS = {
    "404": {"description": "No generation of the caller's has this id."},
    "409": {"description": "The generation has already completed or failed."},
}


Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    settings: Settings,
    *,
    run_jobs: bool = True,
) -> FastAPI:
    """`run_jobs`: also run the job runner in this process (`imagegen serve`).
    The product alone: `imagegen dev` mounts its file store and Replicate simulator on
    this same app (devstack/stack.py), `serve` never does."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_worker(settings) as worker:
            verifier = TokenVerifier(
                supabase_url=settings.supabase_url,
                jwt_secret=(
                    settings.supabase_jwt_secret.get_secret_value()
                    if settings.supabase_jwt_secret
                    else None
                ),
            )
            app.state.service = Service(settings, worker, verifier, run_jobs)
            runner_task = asyncio.create_task(worker.runner.run()) if run_jobs else None
            try:
                yield
            finally:
                if runner_task is not None:
                    worker.runner.stop()
                    await runner_task
                await verifier.aclose()

    app = FastAPI(
        title="imagegen",
        version="0.1.0",
        description="Image generation on PostgreSQL: the Picture Edge Functions, compatible.",
        lifespan=lifespan,
        docs_url=None,  # served from the installed package by install_docs, not a CDN
        redoc_url=None,
    )
    install_docs(app)
    install_monitor(app, settings)  # /dashboard, the operators' monitor page
    routes: list[tuple[str, Endpoint, list[str]]] = [
        ("start-generation", start_generation, ["POST"]),
        ("process-jobs", process_jobs, ["POST", "GET"]),
        ("process-generation", process_generation, ["POST"]),
        ("generate-image", generate_image, ["POST"]),
        ("batch-generate", batch_generate, ["POST"]),
        ("process-queue", process_queue, ["POST"]),
        ("get-generation", get_generation, ["GET"]),
        ("cancel-generation", cancel_generation, ["POST"]),
        ("list-models", list_models, ["GET"]),
        ("replicate-webhook", replicate_webhook, ["POST"]),
    ]
    for name, endpoint, methods in routes:
        for method in methods:
            app.add_api_route(
                f"{FUNCTIONS}/{name}",
                endpoint,
                methods=[method],
                name=name,
                operation_id=f"{name}-{method.lower()}",
                openapi_extra=_openapi_inputs(name, method),
            )
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)

    # Inside EdgeMiddleware, so that its refusals carry CORS headers and are counted.
    app.add_middleware(
        RequestLimits,
        prefix=FUNCTIONS,
        per_client=settings.max_requests_in_flight_per_client,
        max_body_bytes=MAX_BODY_BYTES,
        acquire_timeout=settings.database_request_timeout_seconds,
        patient=(f"{FUNCTIONS}/process-jobs",),
        # Replicate's deliveries carry no Authorization: they share a cap of their own.
        own_caps={f"{FUNCTIONS}/replicate-webhook": WEBHOOKS_IN_FLIGHT},
    )
    app.add_middleware(EdgeMiddleware)

    @app.exception_handler(ClientError)
    async def client_error(_request: Request, exc: ClientError) -> Response:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        messages = {404: "Not found", 405: "Method not allowed"}
        return JSONResponse(
            {"error": messages.get(exc.status_code, str(exc.detail))},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", error_type=type(exc).__name__)
        return JSONResponse({"error": "Internal server error"}, status_code=500)

    return app
