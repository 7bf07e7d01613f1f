"""The Replicate client: predictions over HTTP (httpx), and output downloads.

Not the official `replicate` package: it cannot send `Cancel-After`, cannot choose
retries per request (a create must never be resent after it may have created a paid
prediction) and hides the status codes we map to retryable and permanent errors.

The API token goes only into the Authorization header of API calls (never to output
hosts) and never into an exception message, repr or log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
import structlog

from worker.errors import JobError
from worker.logs import redact_text
from worker.source_image import (
    MAX_REDIRECTS,
    AddressPolicy,
    IPAddress,
    Resolver,
    _Target,
    _vet,
    is_public_address,
    resolve_host,
)

log = structlog.get_logger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
MAX_RETRY_AFTER_SECONDS = 30.0
POLL_FIRST_SECONDS = 0.5
POLL_MAX_SECONDS = 5.0
DOWNLOAD_CHUNK = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}


class ReplicateError(JobError):
    """Base of every Replicate failure; `str(exc)` is readable by the end user."""

    retryable = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ReplicateTransientError(ReplicateError):
    """5xx, network errors and timeouts: a later attempt may succeed."""

    retryable = True


class ReplicateRateLimited(ReplicateTransientError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status_code=429)
        self.retry_after = retry_after


class ReplicateInvalidInput(ReplicateError):
    """422: the model refused the input."""


class ReplicateAuthError(ReplicateError):
    """401/403: the API token is missing, wrong or lacks permission."""


class ModelNotFound(ReplicateError):
    """404 when creating: no such model or version."""


class PredictionNotFound(ReplicateError):
    """404 when reading or cancelling a prediction by id."""


class PredictionFailed(ReplicateError):
    retryable = True


class PredictionCanceled(ReplicateError):
    retryable = True


class PredictionTimedOut(ReplicateError):
    retryable = True


class OutputExpired(ReplicateError):
    """404/410 on the output URL: Replicate deletes outputs an hour after creation."""


class OutputTooLarge(ReplicateError):
    pass


class OutputRefused(ReplicateError):
    """The output URL (or a redirect) leads where the worker must not fetch from."""


def _any_address(_address: IPAddress) -> bool:
    return True


@dataclass(frozen=True)
class OutputPolicy:
    """Where output downloads may go, checked on every redirect hop: a host of `hosts`
    (or a subdomain of one; empty: any host) at public addresses only, or one of the
    `private_origins` (`scheme://host:port`, the simulator's own) wherever it is."""

    hosts: tuple[str, ...] = ()
    private_origins: frozenset[str] = frozenset()
    address_allowed: AddressPolicy = is_public_address
    resolve: Resolver = resolve_host

    async def vet(self, url: httpx.URL) -> _Target:
        origin = f"{url.scheme}://{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        if origin in self.private_origins:
            return await _vet(url, _any_address, self.resolve, what=WHAT, error=OutputRefused)
        host = url.host.lower().rstrip(".")
        if self.hosts and not any(host == h or host.endswith(f".{h}") for h in self.hosts):
            raise OutputRefused(f"{WHAT} is not on an allowed output host ({url.host})")
        return await _vet(url, self.address_allowed, self.resolve, what=WHAT, error=OutputRefused)


WHAT = "The output URL"
# Tests and tools that download from anywhere (the worker always passes its own).
UNRESTRICTED = OutputPolicy(address_allowed=_any_address)


@dataclass(frozen=True)
class Prediction:
    id: str
    status: str
    output: Any = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    completed_at: str | None = None
    input: Any = field(default=None, repr=False)
    model: str | None = None
    version: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: Any) -> Prediction:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ReplicateTransientError("Replicate answered with an unreadable prediction")
        error = data.get("error")
        return cls(
            id=data["id"],
            status=str(data.get("status") or "starting"),
            output=data.get("output"),
            error=None if error is None else str(error),
            metrics=data.get("metrics") or {},
            created_at=data.get("created_at"),
            completed_at=data.get("completed_at"),
            input=data.get("input"),
            model=data.get("model") or None,
            version=data.get("version") or None,
            raw=data,
        )

    @property
    def created(self) -> datetime | None:
        """`created_at` as a datetime, or None when missing or unreadable."""
        try:
            created = datetime.fromisoformat(str(self.created_at)) if self.created_at else None
        except ValueError:
            return None
        return created.replace(tzinfo=UTC) if created and not created.tzinfo else created


@dataclass(frozen=True)
class PredictionPage:
    """One page of the account's predictions, newest first; `next_cursor` None at the end."""

    predictions: list[Prediction]
    next_cursor: str | None


@dataclass(frozen=True)
class Download:
    content_type: str | None
    size: int


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff(attempt: int) -> float:
    return min(8.0, 0.25 * 2**attempt) * random.uniform(0.8, 1.2)


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        # Not Replicate's JSON but a proxy's page (HTML): no message for a user.
        return response.reason_phrase
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("title") or data.get("error") or "")[:500]
    return ""


class ReplicateClient:
    """`async with ReplicateClient(base_url, token, timeout=30) as client: ...`"""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float,
        max_retries: int = 3,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.max_retries = max_retries
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, trust_env=False)

    def __repr__(self) -> str:
        return f"ReplicateClient({self.base_url!r}, token={'set' if self._token else 'unset'})"

    async def __aenter__(self) -> ReplicateClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # Predictions.

    async def create_prediction(
        self,
        path: str,
        body: dict[str, Any],
        *,
        wait_seconds: int | None = None,
        cancel_after_seconds: int | None = None,
        retry_rate_limited: bool = True,
    ) -> Prediction:
        """Create (and pay for) a prediction. Resent only when the first request surely
        created nothing: a connect error or (unless `retry_rate_limited` is false: the
        caller pauses every worker instead) a 429. A 5xx or a timeout after sending is
        raised (retryable) rather than risk a second paid prediction."""
        headers = {}
        if wait_seconds:
            headers["Prefer"] = f"wait={wait_seconds}"
        if cancel_after_seconds:
            headers["Cancel-After"] = f"{cancel_after_seconds}s"
        # The server holds the response up to wait_seconds: the read timeout must outlast it.
        read_timeout = self.timeout + (wait_seconds or 0)
        response = await self._request(
            "POST",
            path,
            json=body,
            headers=headers,
            read_timeout=read_timeout,
            idempotent=False,
            retry_rate_limited=retry_rate_limited,
        )
        if response.status_code == 404:
            raise ModelNotFound(
                f"Replicate has no such model or version ({path}): "
                f"{self._scrub(_detail(response))}",
                status_code=404,
            )
        return Prediction.from_json(self._json(response))

    async def list_predictions(self, cursor: str | None = None) -> PredictionPage:
        """A page of the account's predictions, newest first (`GET /predictions`). Only the
        cursor of `next` is kept: the token goes to our base URL, whatever host it names."""
        path = "/predictions" + (f"?cursor={quote(cursor, safe='')}" if cursor else "")
        response = await self._request("GET", path, idempotent=True)
        if response.status_code == 404:
            raise ReplicateError("Replicate has no prediction list", status_code=404)
        data = self._json(response)
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ReplicateTransientError("Replicate answered with an unreadable prediction list")
        next_url = data.get("next")
        next_cursor = (
            httpx.URL(next_url).params.get("cursor") if isinstance(next_url, str) else None
        )
        return PredictionPage(
            [Prediction.from_json(item) for item in data["results"]], next_cursor or None
        )

    async def get_prediction(self, prediction_id: str) -> Prediction:
        return await self._existing("GET", prediction_id, "")

    async def cancel_prediction(self, prediction_id: str) -> Prediction:
        return await self._existing("POST", prediction_id, "/cancel")

    async def _existing(self, method: str, prediction_id: str, action: str) -> Prediction:
        path = f"/predictions/{quote(prediction_id, safe='')}{action}"
        response = await self._request(method, path, idempotent=True)
        if response.status_code == 404:
            raise PredictionNotFound(f"Prediction {prediction_id} not found", status_code=404)
        return Prediction.from_json(self._json(response))

    async def wait_for_prediction(
        self, prediction: str | Prediction, *, deadline_seconds: float
    ) -> Prediction:
        """Poll (0.5 s growing to 5 s) until the prediction ends; return it if it
        succeeded, else raise. On our deadline the prediction is left running (its
        Cancel-After bounds the cost) so that a retry can resume it."""
        deadline = time.monotonic() + deadline_seconds
        current = (
            prediction
            if isinstance(prediction, Prediction)
            else await self.get_prediction(prediction)
        )
        delay = POLL_FIRST_SECONDS
        while not current.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PredictionTimedOut(
                    f"The prediction did not finish within {deadline_seconds:g} s"
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(POLL_MAX_SECONDS, delay * 1.5)
            current = await self.get_prediction(current.id)
        if current.status == "succeeded":
            return current
        if current.status == "failed":
            raise PredictionFailed(f"The model failed: {current.error or 'no reason given'}")
        raise PredictionCanceled(f"The prediction was {current.status} before it finished")

    # Output files.

    async def download_output(
        self,
        url: str,
        dest: BinaryIO,
        *,
        max_bytes: int,
        timeout: float,  # noqa: ASYNC109 -- one deadline for the whole download, applied inside
        policy: OutputPolicy = UNRESTRICTED,
    ) -> Download:
        """Stream `url` into `dest` chunk by chunk; `timeout` bounds the whole download.
        Every hop must pass `policy`. No Authorization header: output hosts do not need
        the token."""
        start = dest.tell()
        for attempt in range(self.max_retries + 1):
            dest.seek(start)
            dest.truncate()
            try:
                async with asyncio.timeout(timeout):
                    return await self._download_once(
                        url, dest, max_bytes, http_timeout=timeout, policy=policy
                    )
            except (ReplicateTransientError, TimeoutError, httpx.TransportError) as exc:
                if attempt >= self.max_retries:
                    raise _as_transient(exc, "Downloading the output") from exc
                log.warning("output download failed; retrying", error=type(exc).__name__)
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    async def _download_once(
        self, url: str, dest: BinaryIO, max_bytes: int, http_timeout: float, policy: OutputPolicy
    ) -> Download:
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise OutputRefused(f"{WHAT} is not a valid URL") from exc
        for _hop in range(MAX_REDIRECTS + 1):
            target = await policy.vet(current)
            response = await self._http.send(_pinned(self._http, target, http_timeout), stream=True)
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise ReplicateError(f"{WHAT} redirects nowhere")
                    current = current.join(location)
                    continue
                return await self._save(response, dest, max_bytes)
            finally:
                await response.aclose()
        raise OutputRefused(f"{WHAT} redirects more than {MAX_REDIRECTS} times")

    async def _save(self, response: httpx.Response, dest: BinaryIO, max_bytes: int) -> Download:
        too_large = OutputTooLarge(f"The output file is larger than {max_bytes} bytes")
        if response.status_code in (404, 410):
            raise OutputExpired(
                "The output file is gone: Replicate deletes outputs an hour after the prediction",
                status_code=response.status_code,
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise ReplicateTransientError(
                f"The output host answered {response.status_code}",
                status_code=response.status_code,
            )
        if response.status_code != 200:
            raise ReplicateError(
                f"The output host answered {response.status_code}",
                status_code=response.status_code,
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large
        size = 0
        async for chunk in response.aiter_bytes(DOWNLOAD_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            dest.write(chunk)
        return Download(response.headers.get("content-type"), size)

    # Plumbing.

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "imagegen"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers | (extra or {})

    def _scrub(self, text: str) -> str:
        return redact_text(text, self._token)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
        retry_rate_limited: bool = True,
    ) -> httpx.Response:
        """Send with retries: all transient failures when `idempotent`, else only those
        where the server surely did nothing (connect errors, 429). Maps error codes to
        exceptions; returns 2xx and 404 responses (whose meaning depends on the call)."""
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            last = attempt >= self.max_retries
            try:
                response = await self._http.request(
                    method,
                    url,
                    json=json,
                    headers=self._headers(headers),
                    timeout=read_timeout or self.timeout,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing reached the server: safe to resend even a create.
                if last:
                    raise _as_transient(exc, "Connecting to Replicate") from exc
                await self._pause(attempt, None, type(exc).__name__)
                continue
            except httpx.TransportError as exc:
                if last or not idempotent:
                    raise _as_transient(exc, "Calling Replicate") from exc
                await self._pause(attempt, None, type(exc).__name__)
                continue
            status = response.status_code
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                if last or not retry_rate_limited:
                    raise ReplicateRateLimited(
                        "Replicate is rate limiting us; try again later", retry_after=retry_after
                    )
                await self._pause(attempt, retry_after, "429")
                continue
            if status >= 500:
                if last or not idempotent:
                    raise ReplicateTransientError(
                        f"Replicate answered {status}: {self._scrub(_detail(response))}",
                        status_code=status,
                    )
                await self._pause(
                    attempt, parse_retry_after(response.headers.get("retry-after")), str(status)
                )
                continue
            if status < 300 or status == 404:
                return response
            detail = self._scrub(_detail(response))
            if status in (401, 403):
                raise ReplicateAuthError(
                    f"Replicate refused our API token ({status}): {detail}", status_code=status
                )
            if status == 422:
                raise ReplicateInvalidInput(
                    f"Replicate rejected the input: {detail}", status_code=status
                )
            raise ReplicateError(f"Replicate answered {status}: {detail}", status_code=status)
        raise AssertionError("unreachable")

    async def _pause(self, attempt: int, retry_after: float | None, reason: str) -> None:
        delay = _backoff(attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        log.info(
            "replicate call retried", reason=reason, attempt=attempt + 1, delay=round(delay, 2)
        )
        await asyncio.sleep(delay)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ReplicateTransientError("Replicate answered with invalid JSON") from exc


def _pinned(http: httpx.AsyncClient, target: _Target, timeout: float) -> httpx.Request:
    """A GET to the vetted address, with the URL's own host for Host and TLS (SNI and
    the certificate check), so DNS cannot send it elsewhere after the check."""
    extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
    return http.build_request(
        "GET",
        target.pinned_url(),
        headers={"Host": target.url.netloc.decode("ascii"), "User-Agent": "imagegen"},
        extensions=extensions,
        timeout=timeout,
    )


def _as_transient(exc: BaseException, doing: str) -> ReplicateError:
    if isinstance(exc, ReplicateError):
        return exc
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return ReplicateTransientError(f"{doing} timed out")
    return ReplicateTransientError(f"{doing} failed: {type(exc).__name__}")
