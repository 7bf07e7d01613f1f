"""A Replicate SIMULATOR: a local HTTP server speaking Replicate's prediction API and
rendering real (synthetic) images with Pillow. No model runs; every response says so
(header `X-Replicate-Simulator: true`, `"simulator": true` in JSON, and every log line).

It stands in for Replicate in tests, benchmarks and the embedded default:

    python -m devstack.simulator --port 8787 --latency 1.5
    REPLICATE_BASE_URL=http://127.0.0.1:8787/v1 REPLICATE_API_TOKEN=anything ...

or in code, `BackgroundServer(create_simulator_app(SimulatorConfig(...)))`, or mounted
inside another app (output URLs follow the mount path).

API: `POST /v1/predictions` ({"version" | "model", "input"}),
`POST /v1/models/{owner}/{name}/predictions`, `GET /v1/predictions` (newest first, by
cursor), `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`, outputs at
`GET /files/{id}.{ext}` (no token needed, like replicate.delivery),
`GET /v1/webhooks/default/secret`. Honours `Prefer: wait=N` and `Cancel-After`, and
`webhook` (+ `webhook_events_filter`): when the prediction ends, a signed delivery is
POSTed there (Standard Webhooks, as Replicate signs them; `completed` events only), which
the `webhook_*` knobs drop, delay, duplicate, reorder or spoil. With
`create_limit_per_second`, a create above the account's limit is a 429 with
`Retry-After`, as Replicate's. Controls: `GET /_simulator/stats`,
`POST /_simulator/reset`, `GET|POST /_simulator/config`.
Started with `api_token`, the API takes only that bearer token; with `control_secret`,
the controls take only that one (the dev stack sets both: a web page the developer
opens must not reconfigure it). Control bodies must be `application/json`, so a
cross-origin form or `text/plain` fetch cannot post one without a CORS preflight.
Inputs are validated per model family (worker.models' table): 422 like Replicate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import heapq
import hmac
import io
import json
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import httpx
import structlog
from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.errors import ImagegenError
from worker.models import FLUX_SCHNELL_RATIOS, family_for, output_size
from worker.webhooks import sign, signing_key

log = structlog.get_logger(__name__, simulator=True)  # lazy: configured at first use

MAX_WAIT_SECONDS = 60
MAX_SIDE = 8192
# The simulated account's webhook signing secret (Replicate's is per account).
DEV_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"imagegen simulator webhook key!!").decode()
STALE_SECONDS = 600  # how old a `webhook_stale_rate` delivery's timestamp is
WEBHOOK_RETRIES = 2  # a delivery answered 5xx/429 or not at all is resent (same id)
WEBHOOKS_AT_ONCE = 64  # deliveries in flight at most

# Public version hashes of the seeded models (sql/0001_baseline.sql, section 4) -> their model.
KNOWN_VERSIONS = {
    "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637": (
        "bytedance/sdxl-lightning-4step"
    ),
    "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b": "stability-ai/sdxl",
    "a45f82a1382bed5c7aeb861dac7c7d191b0fdf74d8d57c4a0e6ed7d4d0bf7d24": (
        "playgroundai/playground-v2.5-1024px-aesthetic"
    ),
}


@dataclass
class SimulatorConfig:
    latency_seconds: float = 0.5  # created -> succeeded
    failure_rate: float = 0.0  # share of predictions ending `failed`
    fail_prompts: tuple[str, ...] = ()  # a prompt containing one of these always fails
    server_error_rate: float = 0.0  # share of API calls answered 5xx
    rate_limit_rate: float = 0.0  # share of API calls answered 429
    retry_after_seconds: int = 1  # the 429's Retry-After
    output_ttl_seconds: float = 3600.0  # then the output URL answers 404
    seed: int | None = None  # reproducible randomness
    unknown_models: tuple[str, ...] = ()  # owner/name answered 404 on create
    page_size: int = 100  # predictions per page of GET /v1/predictions, as Replicate
    versions: dict[str, str] = field(default_factory=lambda: dict(KNOWN_VERSIONS))
    # Provider faults (tests): slow or garbled answers, unusable outputs.
    api_delay_seconds: float = 0.0  # every API call answers this much later
    malformed_rate: float = 0.0  # share of API calls answered 200 with a non-JSON body
    html_errors: bool = False  # 5xx answers are a proxy's HTML page, not JSON
    output_override: Any = None  # when set, what a succeeded prediction gives as output
    output_body: str | None = None  # served at the output URL instead of the image
    output_content_type: str | None = None  # the output's Content-Type instead of its own
    # The account's create limit (a token bucket; 0: none): a create above it is answered
    # 429 with Retry-After, whole seconds until a token is back (Replicate: 600 a minute).
    create_limit_per_second: float = 0.0
    create_limit_burst: float | None = None  # tokens held at most; None: one second's worth
    # Webhook deliveries and their faults (tests): each share is of the deliveries made.
    webhook_secret: str = DEV_WEBHOOK_SECRET
    webhook_drop_rate: float = 0.0  # never sent (the receiver must poll)
    webhook_delay_seconds: float = 0.0  # sent this long after the prediction ended
    webhook_duplicate_rate: float = 0.0  # sent twice, same webhook-id
    webhook_reorder_rate: float = 0.0  # followed by a stale `processing` snapshot (own id)
    webhook_bad_signature_rate: float = 0.0  # signed with another key
    webhook_stale_rate: float = 0.0  # stamped STALE_SECONDS ago (validly signed)
    webhook_timeout_seconds: float = 10.0


# What each family requires and allows, as Replicate's model schemas would say.
@dataclass(frozen=True)
class _Schema:
    required: tuple[str, ...]
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    native_format: str = "webp"  # when the input has no output_format
    list_output: bool = False


_WH = ("prompt", "width", "height")
_AR = ("prompt", "aspect_ratio")
_SCHEMAS = {
    "flux-schnell": _Schema(
        _AR,
        choices={"aspect_ratio": FLUX_SCHNELL_RATIOS},
        ranges={"num_inference_steps": (1, 4), "num_outputs": (1, 4)},
        list_output=True,
    ),
    "flux-dev": _Schema(_WH, ranges={"num_inference_steps": (1, 50)}, list_output=True),
    "ideogram": _Schema(_AR, native_format="png"),
    "imagen": _Schema(_AR, native_format="png"),
    "sdxl-lightning": _Schema(_WH, ranges={"num_inference_steps": (1, 10)}, list_output=True),
    "sdxl": _Schema(_WH, ranges={"num_inference_steps": (1, 500)}, list_output=True),
    "seedream-4": _Schema(
        (*_WH, "size", "aspect_ratio"),
        choices={"size": ("1K", "2K", "4K", "custom")},
        ranges={"max_images": (1, 15)},
        native_format="jpg",
        list_output=True,
    ),
    "seedream": _Schema(_WH, native_format="jpg"),
    "flux-1.1-pro": _Schema(_AR),
    "recraft-v3-svg": _Schema(_WH, choices={"output_format": ("svg",)}),
    "recraft": _Schema(("prompt", "size")),
    "stable-diffusion-3.5": _Schema((*_AR, "cfg", "steps")),
    "qwen": _Schema(_AR),
    "default": _Schema(_WH, native_format="png"),
}
_RATIO = re.compile(r"^[1-9][0-9]*:[1-9][0-9]*$")
_SIZE = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")
_FORMATS = {"webp": "WEBP", "png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "svg": "SVG"}
_MEDIA = {"webp": "image/webp", "png": "image/png", "jpg": "image/jpeg", "svg": "image/svg+xml"}


class _InvalidInput(ImagegenError):
    def __init__(self, fields: list[str]) -> None:
        super().__init__("; ".join(fields))
        self.fields = fields


def validate_input(model: str, replicate_input: Any) -> None:
    """Raise _InvalidInput listing every problem, like Replicate's 422."""
    if not isinstance(replicate_input, dict):
        raise _InvalidInput(["input: must be an object"])
    schema = _SCHEMAS[family_for(model).name]
    problems = [f"{key}: is required" for key in schema.required if key not in replicate_input]
    prompt = replicate_input.get("prompt")
    if "prompt" in replicate_input and (not isinstance(prompt, str) or not prompt.strip()):
        problems.append("prompt: must be a non-empty string")
    for key, allowed in schema.choices.items():
        if key in replicate_input and replicate_input[key] not in allowed:
            problems.append(f"{key}: must be one of {', '.join(map(str, allowed))}")
    ranges = {"width": (1, MAX_SIDE), "height": (1, MAX_SIDE), "seed": (-(2**63), 2**63)}
    for key, (low, high) in (ranges | dict(schema.ranges)).items():
        value = replicate_input.get(key)
        if key in replicate_input and (
            not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high
        ):
            problems.append(f"{key}: must be an integer from {low} to {high}")
    patterns = (("aspect_ratio", _RATIO, "W:H"), ("size", _SIZE, "WxH"))
    for key, pattern, shape in patterns:
        value = replicate_input.get(key)
        if key in replicate_input and key not in schema.choices and not pattern.match(str(value)):
            problems.append(f"{key}: must look like {shape}")
    if replicate_input.get("output_format", "webp") not in _FORMATS:
        problems.append("output_format: must be webp, png or jpg")
    if not problems:
        width, height = output_size(model, replicate_input)
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            problems.append(f"size: {width}x{height} is larger than {MAX_SIDE} on a side")
    if problems:
        raise _InvalidInput(problems)


def output_extension(model: str, replicate_input: Mapping[str, Any]) -> str:
    fmt = str(
        replicate_input.get("output_format") or _SCHEMAS[family_for(model).name].native_format
    )
    return "jpg" if fmt == "jpeg" else fmt


def render_image(width: int, height: int, ext: str, prompt: str, seed: int) -> bytes:
    """A real image of the given size and format: shapes from the seed, a label."""
    rng = random.Random(seed)
    background = tuple(rng.randrange(40, 200) for _ in range(3))
    label = f"SIMULATOR {width}x{height}: {prompt[:60]}"
    if ext == "svg":
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><!-- Replicate simulator -->'
            f'<rect width="{width}" height="{height}" fill="rgb{background}"/>'
            f'<circle cx="{width // 2}" cy="{height // 2}" r="{min(width, height) // 3}" '
            f'fill="white" fill-opacity="0.5"/>'
            f'<text x="10" y="30" font-size="20">{escape(label)}</text></svg>'
        ).encode()
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(1, max(2, min(width, height) // 3))
        fill = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    draw.text((10, 10), label, fill=(255, 255, 255))
    out = io.BytesIO()
    options: dict[str, Any] = {
        "webp": {"quality": 90, "method": 0},
        "png": {"compress_level": 1},
        "jpg": {"quality": 90},
    }[ext]
    image.save(out, format=_FORMATS[ext], **options)
    return out.getvalue()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Prediction:
    id: str
    model: str
    version: str | None
    input: dict[str, Any]
    created: float  # monotonic, for the timeline
    created_wall: float  # epoch seconds, for the timestamps
    done_at: float
    failure: str | None  # why it will fail, or None when it succeeds
    cancel_at: float | None
    ext: str
    canceled_at: float | None = None
    webhook: str | None = None  # where its end is delivered
    base: str = ""  # the simulator's URL when it was created (for the delivery's URLs)
    delivered: bool = False

    def ends_at(self) -> float:
        """When it stops running: done, or canceled (by request or Cancel-After) first."""
        return min(t for t in (self.done_at, self.canceled_at, self.cancel_at) if t is not None)

    def status(self, now: float) -> str:
        end = self.ends_at()
        if now < end:
            return "starting" if now < (self.created + self.done_at) / 2 else "processing"
        if end < self.done_at:
            return "canceled"
        return "failed" if self.failure else "succeeded"


def parse_duration(value: str) -> float | None:
    """Cancel-After values such as "30s", "5m", "1h30m" or a bare number of seconds."""
    value = value.strip().lower()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return float(value)
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def parse_prefer_wait(value: str | None) -> float | None:
    if not value:
        return None
    match = re.search(r"\bwait(?:\s*=\s*([0-9]+))?", value)
    if not match:
        return None
    return float(min(MAX_WAIT_SECONDS, int(match.group(1) or MAX_WAIT_SECONDS)))


def _error(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"title": title, "detail": detail, "status": status, "simulator": True} | extra
    return JSONResponse(body, status_code=status)


class _Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.predictions: dict[str, _Prediction] = {}
        self.counters: Counter[str] = Counter()
        self._create_tokens: float | None = None  # full at the first create
        self._create_refilled = time.monotonic()
        self._due: list[tuple[float, int, str]] = []  # (when, order, prediction id)
        self._order = 0
        self._queued = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def create_refused_for(self) -> float | None:
        """Under the create limit: None (a token is taken), else the seconds until one."""
        rate = self.config.create_limit_per_second
        if rate <= 0:
            return None
        burst = self.config.create_limit_burst or rate
        now = time.monotonic()
        tokens = burst if self._create_tokens is None else self._create_tokens
        tokens = min(burst, tokens + (now - self._create_refilled) * rate)
        self._create_refilled = now
        if tokens >= 1:
            self._create_tokens = tokens - 1
            return None
        self._create_tokens = tokens
        return (1 - tokens) / rate

    # Webhooks: one dispatcher task sends each prediction's delivery when it ends.

    def deliver_at(self, prediction: _Prediction, when: float) -> None:
        if prediction.webhook is None or prediction.delivered:
            return
        self._order += 1
        heapq.heappush(self._due, (when, self._order, prediction.id))
        self._queued.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        limit = asyncio.Semaphore(WEBHOOKS_AT_ONCE)
        async with httpx.AsyncClient(
            timeout=self.config.webhook_timeout_seconds, trust_env=False
        ) as http:
            while True:
                self._queued.clear()
                wait = self._due[0][0] - time.monotonic() if self._due else None
                if wait is None or wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._queued.wait(), wait)
                    continue
                _, _, prediction_id = heapq.heappop(self._due)
                prediction = self.predictions.get(prediction_id)
                if prediction is None or prediction.delivered:
                    continue
                if prediction.status(time.monotonic()) not in ("succeeded", "failed", "canceled"):
                    self.deliver_at(prediction, prediction.ends_at())
                    continue
                prediction.delivered = True
                task = asyncio.create_task(self._send(http, limit, prediction))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(
        self, http: httpx.AsyncClient, limit: asyncio.Semaphore, prediction: _Prediction
    ) -> None:
        """The ended prediction's delivery, with the configured faults."""
        config, rng = self.config, self.rng
        if rng.random() < config.webhook_drop_rate:
            self.counters["webhooks_dropped"] += 1
            return
        if config.webhook_delay_seconds > 0:
            await asyncio.sleep(config.webhook_delay_seconds)
        body = self.to_json(prediction, prediction.base)
        deliveries = [(f"msg_{uuid.uuid4().hex}", body)]
        if rng.random() < config.webhook_duplicate_rate:
            self.counters["webhooks_duplicated"] += 1
            deliveries.append(deliveries[0])
        if rng.random() < config.webhook_reorder_rate:
            self.counters["webhooks_reordered"] += 1
            stale = body | {"status": "processing", "output": None, "completed_at": None}
            deliveries.append((f"msg_{uuid.uuid4().hex}", stale))
        async with limit:
            for webhook_id, payload in deliveries:
                await self._post(http, str(prediction.webhook), webhook_id, payload)

    async def _post(
        self, http: httpx.AsyncClient, url: str, webhook_id: str, payload: dict[str, Any]
    ) -> None:
        config, rng = self.config, self.rng
        content = json.dumps(payload).encode()
        key = signing_key(config.webhook_secret)
        if rng.random() < config.webhook_bad_signature_rate:
            self.counters["webhooks_forged"] += 1
            key = hashlib.sha256(key).digest()
        stale = rng.random() < config.webhook_stale_rate
        if stale:
            self.counters["webhooks_stale"] += 1
        for attempt in range(WEBHOOK_RETRIES + 1):
            timestamp = int(time.time()) - (STALE_SECONDS if stale else 0)
            headers = {
                "content-type": "application/json",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(key, webhook_id, timestamp, content),
            }
            try:
                response = await http.post(url, content=content, headers=headers)
            except httpx.HTTPError as exc:
                log.info("simulated webhook not delivered", error=type(exc).__name__)
            else:
                if response.status_code < 300:
                    self.counters["webhooks_sent"] += 1
                    return
                if response.status_code < 500 and response.status_code != 429:
                    self.counters["webhooks_refused"] += 1
                    return
            await asyncio.sleep(0.5 * (attempt + 1))
        self.counters["webhooks_failed"] += 1

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        statuses = Counter(p.status(now) for p in self.predictions.values())
        return {
            "simulator": True,
            "predictions_created": len(self.predictions),
            "statuses": dict(statuses),
            **{name: self.counters[name] for name in _COUNTERS},
        }

    def create(
        self,
        model: str,
        version: str | None,
        replicate_input: dict[str, Any],
        cancel_after: float | None,
    ) -> _Prediction:
        now = time.monotonic()
        config = self.config
        prediction_id = f"sim{uuid.UUID(int=self.rng.getrandbits(128)).hex[:23]}"
        prompt = str(replicate_input.get("prompt", ""))
        failure = None
        if self.rng.random() < config.failure_rate:
            failure = "Simulated failure (failure_rate)"
        elif any(marker in prompt for marker in config.fail_prompts):
            failure = "Simulated failure (fail_prompts)"
        prediction = _Prediction(
            id=prediction_id,
            model=model,
            version=version,
            input=replicate_input,
            created=now,
            created_wall=time.time(),
            done_at=now + config.latency_seconds,
            failure=failure,
            cancel_at=None if cancel_after is None else now + cancel_after,
            ext=output_extension(model, replicate_input),
        )
        self.predictions[prediction_id] = prediction
        return prediction

    def to_json(self, prediction: _Prediction, base: str) -> dict[str, Any]:
        now = time.monotonic()
        status = prediction.status(now)
        output: Any = None
        if status == "succeeded":
            url = f"{base}/files/{prediction.id}.{prediction.ext}"
            output = [url] if _SCHEMAS[family_for(prediction.model).name].list_output else url
            if self.config.output_override is not None:
                output = self.config.output_override
        ended = status in ("succeeded", "failed", "canceled")
        run_time = prediction.ends_at() - prediction.created
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version or "",
            "input": prediction.input,
            "logs": "Replicate simulator: no model was run.\n",
            "output": output,
            "error": prediction.failure if status == "failed" else None,
            "status": status,
            "data_removed": ended and now > prediction.done_at + self.config.output_ttl_seconds,
            "created_at": _iso(prediction.created_wall),
            "started_at": _iso(prediction.created_wall),
            "completed_at": _iso(prediction.created_wall + run_time) if ended else None,
            "metrics": {"predict_time": round(run_time, 3)} if ended else {},
            "urls": {
                "get": f"{base}/v1/predictions/{prediction.id}",
                "cancel": f"{base}/v1/predictions/{prediction.id}/cancel",
            },
            "simulator": True,
        }


_COUNTERS = (
    "api_requests",
    "rate_limited",
    "server_errors",
    "unauthorized",
    "invalid_inputs",
    "cancel_requests",
    "canceled_by_request",  # cancel requests that stopped a running prediction
    "list_requests",
    "create_requests",
    "create_rate_limited",  # creates answered 429 by create_limit_per_second
    "downloads",
    "expired_downloads",
    "webhooks_sent",  # answered 2xx
    "webhooks_refused",  # answered 4xx (a bad signature, a stale timestamp)
    "webhooks_failed",  # not answered, or 5xx after the retries
    "webhooks_dropped",
    "webhooks_duplicated",
    "webhooks_reordered",
    "webhooks_forged",
    "webhooks_stale",
)


def _base_url(request: Request) -> str:
    """The simulator's own root, mount path included, so output URLs work when mounted."""
    url = request.url
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}".rstrip("/")


Handler = Callable[[Request], Awaitable[Response]]


def _bearer_is(request: Request, expected: str | None) -> bool:
    """The request's bearer token is `expected` (any non-empty one when None)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return expected is None or hmac.compare_digest(token.strip().encode(), expected.encode())


def create_simulator_app(
    config: SimulatorConfig | None = None,
    *,
    api_token: str | None = None,
    control_secret: str | None = None,
) -> Starlette:
    sim = _Simulator(config or SimulatorConfig())

    def api(handler: Handler) -> Handler:
        """Token check, then the rate-limit and server-error knobs, then the handler."""

        async def endpoint(request: Request) -> Response:
            sim.counters["api_requests"] += 1
            if not _bearer_is(request, api_token):
                sim.counters["unauthorized"] += 1
                return _error(401, "Unauthenticated", "You did not pass a valid token")
            if sim.config.api_delay_seconds > 0:
                await request.body()  # received: the call runs even if the client gives up
                await asyncio.sleep(sim.config.api_delay_seconds)
            if sim.config.malformed_rate and sim.rng.random() < sim.config.malformed_rate:
                log.info("simulated non-JSON answer", path=request.url.path)
                return Response("<html><body>upstream garbled</body></html>", 200)
            if sim.rng.random() < sim.config.rate_limit_rate:
                sim.counters["rate_limited"] += 1
                log.info("simulated 429", path=request.url.path)
                response = _error(429, "Too Many Requests", "Request was throttled (simulated)")
                response.headers["Retry-After"] = str(sim.config.retry_after_seconds)
                return response
            if sim.rng.random() < sim.config.server_error_rate:
                sim.counters["server_errors"] += 1
                log.info("simulated 5xx", path=request.url.path)
                if sim.config.html_errors:
                    page = "<html><head><title>502 Bad Gateway</title></head><body>cf</body></html>"
                    return Response(page, 502, media_type="text/html")
                return _error(503, "Service Unavailable", "Simulated server error")
            return await handler(request)

        return endpoint

    async def create(request: Request, model: str | None) -> Response:
        sim.counters["create_requests"] += 1
        refused_for = sim.create_refused_for()
        if refused_for is not None:
            sim.counters["create_rate_limited"] += 1
            response = _error(429, "Too Many Requests", "Request was throttled (create limit)")
            response.headers["Retry-After"] = str(max(1, math.ceil(refused_for)))
            return response
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Bad Request", "The body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "Bad Request", "The body must be a JSON object")
        version = None
        if model is None:
            reference = str(body.get("version") or body.get("model") or "")
            model, _, version = reference.rpartition(":") if ":" in reference else ("", "", "")
            if not model and "/" in reference:
                model = reference
            elif not model and reference:
                version = reference
                # Unknown versions run as the generic family (a simulator is lenient).
                model = sim.config.versions.get(reference, f"unknown/version-{reference[:12]}")
            if not model:
                return _error(422, "Invalid version", "version or model is required")
        if model in sim.config.unknown_models:
            return _error(404, "Not found", "The requested resource could not be found.")
        replicate_input = body.get("input")
        try:
            validate_input(model, replicate_input)
        except _InvalidInput as exc:
            sim.counters["invalid_inputs"] += 1
            log.info("simulated 422", model=model, problems=exc.fields)
            return _error(
                422,
                "Input validation failed",
                "\n".join(f"- {field}" for field in exc.fields),
                invalid_fields=[{"field": f.split(":")[0], "description": f} for f in exc.fields],
            )
        cancel_after = parse_duration(request.headers.get("cancel-after", ""))
        assert isinstance(replicate_input, dict)  # validate_input checked it
        prediction = sim.create(model, version or None, replicate_input, cancel_after)
        prediction.base = _base_url(request)
        events = body.get("webhook_events_filter")
        if isinstance(body.get("webhook"), str) and (events is None or "completed" in events):
            prediction.webhook = body["webhook"]
            sim.deliver_at(prediction, prediction.ends_at())
        log.debug("simulated prediction created", prediction_id=prediction.id, model=model)
        wait = parse_prefer_wait(request.headers.get("prefer"))
        if wait:
            remaining = min(prediction.ends_at() - time.monotonic(), wait)
            if remaining > 0:
                # uvloop may wake a millisecond early: past the end, the status is final.
                await asyncio.sleep(remaining + 0.01)
        return JSONResponse(sim.to_json(prediction, _base_url(request)), status_code=201)

    async def create_versioned(request: Request) -> Response:
        return await create(request, None)

    async def create_for_model(request: Request) -> Response:
        return await create(
            request, f"{request.path_params['owner']}/{request.path_params['name']}"
        )

    def _find(request: Request) -> _Prediction:
        prediction = sim.predictions.get(request.path_params["prediction_id"])
        if prediction is None:
            raise HTTPException(404, "The requested resource could not be found.")
        return prediction

    async def list_predictions(request: Request) -> Response:
        """Newest first, `page_size` a page; the cursor is the position after which the
        next page starts, so predictions created meanwhile do not shift the pages."""
        sim.counters["list_requests"] += 1
        everything = list(sim.predictions.values())
        cursor = request.query_params.get("cursor", "")
        end = int(cursor) if cursor.isdigit() else len(everything)
        start = max(0, end - max(1, sim.config.page_size))
        base = _base_url(request)
        page = [sim.to_json(p, base) for p in reversed(everything[start:end])]
        return JSONResponse(
            {
                "previous": None,
                "next": f"{base}/v1/predictions?cursor={start}" if start > 0 else None,
                "results": page,
                "simulator": True,
            }
        )

    async def get_prediction(request: Request) -> Response:
        return JSONResponse(sim.to_json(_find(request), _base_url(request)))

    async def cancel_prediction(request: Request) -> Response:
        sim.counters["cancel_requests"] += 1
        prediction = _find(request)
        now = time.monotonic()
        if prediction.status(now) in ("starting", "processing"):
            prediction.canceled_at = now
            sim.counters["canceled_by_request"] += 1
            sim.deliver_at(prediction, now)
            log.debug("simulated prediction canceled", prediction_id=prediction.id)
        return JSONResponse(sim.to_json(prediction, _base_url(request)))

    async def webhook_secret(_request: Request) -> Response:
        return JSONResponse({"key": sim.config.webhook_secret, "simulator": True})

    async def download(request: Request) -> Response:
        sim.counters["downloads"] += 1
        stem, _, ext = request.path_params["filename"].partition(".")
        prediction = sim.predictions.get(stem)
        now = time.monotonic()
        if prediction is None or ext != prediction.ext or prediction.status(now) != "succeeded":
            raise HTTPException(404, "No such file")
        if now > prediction.done_at + sim.config.output_ttl_seconds:
            sim.counters["expired_downloads"] += 1
            raise HTTPException(404, "This output has expired (simulated output_ttl_seconds)")
        width, height = output_size(prediction.model, prediction.input)
        seed = int(hashlib.sha256(prediction.id.encode()).hexdigest()[:8], 16)
        prompt = str(prediction.input.get("prompt", ""))
        content: str | bytes | None = sim.config.output_body
        if content is None:
            content = await asyncio.to_thread(render_image, width, height, ext, prompt, seed)
        return Response(content, media_type=sim.config.output_content_type or _MEDIA[ext])

    def control(handler: Handler) -> Handler:
        """The control secret, when the simulator was started with one."""

        async def endpoint(request: Request) -> Response:
            if control_secret is not None and not _bearer_is(request, control_secret):
                return _error(401, "Unauthenticated", "The simulator's controls need its secret")
            return await handler(request)

        return endpoint

    async def stats(_request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def reset(_request: Request) -> Response:
        sim.reset()
        log.info("simulator reset")
        return JSONResponse(sim.stats())

    async def configure(request: Request) -> Response:
        if request.method == "POST":
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if content_type.lower() != "application/json":
                return _error(415, "Unsupported Media Type", "The settings must be JSON")
            try:
                changes = await request.json()
                names = {f.name for f in dataclasses.fields(SimulatorConfig)}
                unknown = set(changes) - names
                if unknown:
                    return _error(400, "Bad Request", f"unknown settings: {sorted(unknown)}")
                sim.config = dataclasses.replace(sim.config, **changes)
            except (ValueError, TypeError) as exc:
                return _error(400, "Bad Request", f"invalid settings: {exc}")
            if "seed" in changes:
                sim.rng = random.Random(sim.config.seed)
            log.info("simulator configured", **changes)
        return JSONResponse({"simulator": True, **dataclasses.asdict(sim.config)})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "Internal error"
        return _error(status, "Not found" if status == 404 else "Error", str(detail))

    routes = [
        Route("/v1/predictions", api(create_versioned), methods=["POST"]),
        Route("/v1/predictions", api(list_predictions), methods=["GET"]),
        Route("/v1/models/{owner}/{name}/predictions", api(create_for_model), methods=["POST"]),
        Route("/v1/predictions/{prediction_id}", api(get_prediction), methods=["GET"]),
        Route("/v1/predictions/{prediction_id}/cancel", api(cancel_prediction), methods=["POST"]),
        Route("/v1/webhooks/default/secret", api(webhook_secret), methods=["GET"]),
        Route("/files/{filename}", download, methods=["GET"]),
        Route("/_simulator/stats", control(stats), methods=["GET"]),
        Route("/_simulator/reset", control(reset), methods=["POST"]),
        Route("/_simulator/config", control(configure), methods=["GET", "POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_SimulatorHeader)],
        exception_handlers={HTTPException: not_found},
    )
    app.state.simulator = sim
    return app


class _SimulatorHeader:
    """Every response, errors included, carries `X-Replicate-Simulator: true`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-replicate-simulator", b"true"),
                ]
            await send(message)

        await self.app(scope, receive, send_labelled if scope["type"] == "http" else send)


def run_simulator(
    host: str = "127.0.0.1", port: int = 8787, config: SimulatorConfig | None = None
) -> None:
    import uvicorn

    log.warning("starting the Replicate SIMULATOR (no real model is called)", host=host, port=port)
    uvicorn.run(create_simulator_app(config), host=host, port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Replicate simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per prediction")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    config = SimulatorConfig(
        latency_seconds=args.latency, failure_rate=args.failure_rate, seed=args.seed
    )
    run_simulator(args.host, args.port, config)


if __name__ == "__main__":
    main()
