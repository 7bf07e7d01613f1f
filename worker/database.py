"""What the worker and the API ask of the database, one method per SQL function.

Every method is one call through the gateway, so it behaves the same over direct
PostgreSQL and over PostgREST. One exception, invisible to callers: successful
`complete_job` calls of one worker that arrive while another is in flight travel together
in one `complete_jobs` call (one transaction, one commit), as PostgreSQL's group commit
does for the disk.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from worker.gateway import Gateway


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    job_type: str
    payload: dict[str, Any]
    attempts: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            job_type=row["job_type"],
            payload=dict(row["payload"] or {}),
            attempts=int(row["attempts"]),
        )


@dataclass
class _Completion:
    job_id: uuid.UUID
    result: dict[str, Any] | None
    done: asyncio.Future[bool]


class CompletionBatcher:
    """Coalesces successful completions per worker: the first goes at once, alone (the
    plain `complete_job`); those arriving while `max_in_flight` calls are out wait for the
    next call and share it. No timer, so an idle queue pays no latency for it."""

    def __init__(self, gateway: Gateway, *, max_in_flight: int = 2, max_batch: int = 500):
        self.gateway = gateway
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._waiting: dict[str, list[_Completion]] = {}
        self._in_flight = 0
        self._calls: set[asyncio.Task[None]] = set()

    async def complete(
        self, worker_id: str, job_id: uuid.UUID, result: dict[str, Any] | None
    ) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(worker_id, []).append(_Completion(job_id, result, done))
        self._send()
        return await done

    def _send(self) -> None:
        while self._waiting and self._in_flight < self.max_in_flight:
            worker_id, waiting = next(iter(self._waiting.items()))
            batch, rest = waiting[: self.max_batch], waiting[self.max_batch :]
            if rest:
                self._waiting[worker_id] = rest
            else:
                del self._waiting[worker_id]
            self._in_flight += 1
            call = asyncio.create_task(self._call(worker_id, batch))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, worker_id: str, batch: list[_Completion]) -> None:
        try:
            if len(batch) == 1:
                rows = await self.gateway.call(
                    "complete_job",
                    {
                        "p_job_id": batch[0].job_id,
                        "p_result": batch[0].result,
                        "p_worker_id": worker_id,
                    },
                )
                completed = {batch[0].job_id} if rows and rows[0]["complete_job"] else set()
            else:
                args: dict[str, Any] = {
                    "p_worker_id": worker_id,
                    "p_job_ids": [item.job_id for item in batch],
                }
                if any(item.result is not None for item in batch):
                    args["p_results"] = [item.result for item in batch]
                rows = await self.gateway.call("complete_jobs", args)
                completed = {row["complete_jobs"] for row in rows}
        except asyncio.CancelledError:
            for item in batch:
                item.done.cancel()
            raise
        except Exception as exc:
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
        else:
            for item in batch:
                if not item.done.done():  # its caller may have been cancelled meanwhile
                    item.done.set_result(item.job_id in completed)
        finally:
            self._in_flight -= 1
            self._send()


class Database:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._completions = CompletionBatcher(gateway)

    async def _scalar(self, function: str, **args: Any) -> Any:
        rows = await self.gateway.call(function, args)
        return rows[0][function] if rows else None

    async def _rows(self, function: str, **args: Any) -> list[dict[str, Any]]:
        return await self.gateway.call(function, args)

    # The connection (callers go through these, never through `gateway`).

    async def listen(self, channel: str, wake: Callable[[], None]) -> None:
        await self.gateway.listen(channel, wake)

    async def hold_session(self, worker_id: str, registered: asyncio.Event) -> None:
        await self.gateway.hold_session(worker_id, registered)

    async def ping(self) -> bool:
        return await self.gateway.ping()

    # The queue.

    async def enqueue_job(
        self,
        job_type: str,
        payload: dict[str, Any],
        *,
        priority: int = 0,
        max_attempts: int = 3,
        created_by: uuid.UUID | None = None,
        dedupe_key: str | None = None,
    ) -> uuid.UUID:
        job_id: uuid.UUID = await self._scalar(
            "enqueue_job",
            p_job_type=job_type,
            p_payload=payload,
            p_priority=priority,
            p_max_attempts=max_attempts,
            p_created_by=created_by,
            p_dedupe_key=dedupe_key,
        )
        return job_id

    async def claim_jobs(
        self, worker_id: str, limit: int, job_types: Sequence[str] | None, lease_seconds: int
    ) -> list[Job]:
        rows = await self._rows(
            "claim_jobs",
            p_worker_id=worker_id,
            p_limit=limit,
            p_job_types=list(job_types) if job_types is not None else None,
            p_lease_seconds=lease_seconds,
        )
        return [Job.from_row(row) for row in rows]

    async def claim_generation_job(
        self, generation_id: uuid.UUID, worker_id: str, lease_seconds: int
    ) -> Job | None:
        """The generation's due pending job, now this worker's (the legacy call runs it)."""
        rows = await self._rows(
            "claim_generation_job",
            p_generation_id=generation_id,
            p_worker_id=worker_id,
            p_lease_seconds=lease_seconds,
        )
        return Job.from_row(rows[0]) if rows else None

    async def heartbeat_jobs(
        self, worker_id: str, job_ids: Sequence[uuid.UUID], lease_seconds: int
    ) -> set[uuid.UUID]:
        rows = await self._rows(
            "heartbeat_jobs",
            p_worker_id=worker_id,
            p_job_ids=list(job_ids),
            p_lease_seconds=lease_seconds,
        )
        return {row["heartbeat_jobs"] for row in rows}

    async def complete_job(
        self,
        job_id: uuid.UUID,
        worker_id: str | None,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_details: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> bool:
        if error is None and worker_id is not None:
            return await self._completions.complete(worker_id, job_id, result)
        return bool(
            await self._scalar(
                "complete_job",
                p_job_id=job_id,
                p_error_message=error,
                p_error_details=error_details,
                p_result=result,
                p_worker_id=worker_id,
                p_retryable=retryable,
            )
        )

    async def reclaim_dead_workers(self) -> int:
        """End the leases of workers whose session is gone (sql/0040); jobs freed."""
        return int(await self._scalar("reclaim_dead_workers") or 0)

    async def release_jobs(self, worker_id: str, job_ids: Sequence[uuid.UUID]) -> int:
        return int(
            await self._scalar("release_jobs", p_worker_id=worker_id, p_job_ids=list(job_ids)) or 0
        )

    async def snooze_job(self, job_id: uuid.UUID, worker_id: str, until: datetime) -> bool:
        """Hand a held job back until `until` without spending an attempt (sql/0060)."""
        return bool(
            await self._scalar("snooze_job", p_job_id=job_id, p_worker_id=worker_id, p_until=until)
        )

    # The provider's shared rate limit (sql/0111_provider_limits.sql).

    async def take_provider_token(self, provider: str, job_id: uuid.UUID | None) -> float:
        """0 when a create may be sent now, else the seconds until this job's turn."""
        return float(
            await self._scalar("take_provider_token", p_provider=provider, p_job_id=job_id) or 0
        )

    async def pause_provider(self, provider: str, seconds: float) -> float:
        """No worker creates for `seconds` (a 429's Retry-After); the seconds the pause has
        left (a longer one already set holds)."""
        return float(
            await self._scalar("pause_provider", p_provider=provider, p_seconds=seconds) or 0
        )

    # Webhooks (sql/0130_replicate_webhooks.sql).

    async def accept_webhook(self, webhook_id: str, payload: dict[str, Any]) -> bool:
        """Record a verified delivery and queue its process-webhook job; False: seen before."""
        return bool(
            await self._scalar("accept_webhook", p_webhook_id=webhook_id, p_payload=payload)
        )

    async def wake_prediction_job(self, prediction_id: str) -> str:
        """Make the generate-image job holding this prediction due now: 'woken', 'busy'
        (a worker holds it) or 'none' (no active job has it)."""
        return str(await self._scalar("wake_prediction_job", p_prediction_id=prediction_id))

    async def await_webhook(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        *,
        grace_seconds: float,
        delay_seconds: float | None = None,
    ) -> datetime | None:
        """Snooze the job until its prediction should have ended (or for `delay_seconds`);
        the wake-up time, None when the job is no longer ours."""
        until: datetime | None = await self._scalar(
            "await_webhook",
            p_job_id=job_id,
            p_worker_id=worker_id,
            p_grace_seconds=Decimal(f"{grace_seconds:.3f}"),
            p_delay_seconds=None if delay_seconds is None else Decimal(f"{delay_seconds:.3f}"),
        )
        return until

    async def release_prediction(
        self, job_id: uuid.UUID, worker_id: str, prediction_id: str
    ) -> bool:
        """Let go of a failed or cancelled prediction, so the retry creates a new one."""
        return bool(
            await self._scalar(
                "release_prediction",
                p_job_id=job_id,
                p_worker_id=worker_id,
                p_prediction_id=prediction_id,
            )
        )

    # Generations.

    async def start_generation(
        self, user_id: uuid.UUID, **params: Any
    ) -> tuple[uuid.UUID, uuid.UUID]:
        args = {f"p_{name}": value for name, value in params.items() if value is not None}
        rows = await self._rows("start_generation", p_user_id=user_id, **args)
        return rows[0]["generation_id"], rows[0]["job_id"]

    async def start_legacy_generation(
        self, user_id: uuid.UUID, generation_id: uuid.UUID | None, **params: Any
    ) -> tuple[uuid.UUID, str]:
        """The legacy call's generation, started (or found started or ended): (id, status)."""
        args = {f"p_{name}": value for name, value in params.items() if value is not None}
        rows = await self._rows(
            "start_legacy_generation", p_user_id=user_id, p_generation_id=generation_id, **args
        )
        return rows[0]["generation_id"], str(rows[0]["status"])

    async def start_batch(self, user_id: uuid.UUID, request: dict[str, Any]) -> dict[str, Any]:
        """batch-generate's body, checked, admitted and started whole: {id, name,
        total_count, generations}."""
        batch: dict[str, Any] = await self._scalar(
            "start_batch", p_user_id=user_id, p_request=request
        )
        return batch

    async def start_once(
        self, user_id: uuid.UUID, key: str, endpoint: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Start `endpoint`'s request once per (user, Idempotency-Key) within 24 h
        (sql/0110): (what the start returned, whether this is a replay of it)."""
        rows = await self._rows(
            "start_once", p_user_id=user_id, p_key=key, p_endpoint=endpoint, p_request=request
        )
        return dict(rows[0]["response"]), bool(rows[0]["replayed"])

    async def process_queue(self, user_id: uuid.UUID) -> int:
        """Start the user's pending generations within their limits; how many started."""
        return int(await self._scalar("process_queue", p_user_id=user_id) or 0)

    async def generation_parameters(self, **params: Any) -> dict[str, Any]:
        """The parameters checked against the model's limits, with its defaults filled in."""
        args = {f"p_{name}": value for name, value in params.items() if value is not None}
        result: dict[str, Any] = await self._scalar("generation_parameters", **args)
        return result

    async def begin_generation(self, job_id: uuid.UUID, worker_id: str) -> dict[str, Any] | None:
        rows = await self._rows("begin_generation", p_job_id=job_id, p_worker_id=worker_id)
        return rows[0] if rows else None

    async def request_prediction(self, job_id: uuid.UUID, worker_id: str) -> datetime | None:
        """Record the intent to create a prediction; None when the job is no longer ours."""
        requested_at: datetime | None = await self._scalar(
            "request_prediction", p_job_id=job_id, p_worker_id=worker_id
        )
        return requested_at

    async def withdraw_prediction_request(
        self, job_id: uuid.UUID, worker_id: str, requested_at: datetime
    ) -> bool:
        """Take back this attempt's own intent after a 429 (sql/0112); False when the note
        is an earlier attempt's (kept) or the job is no longer ours."""
        return bool(
            await self._scalar(
                "withdraw_prediction_request",
                p_job_id=job_id,
                p_worker_id=worker_id,
                p_requested_at=requested_at,
            )
        )

    async def record_prediction(
        self, job_id: uuid.UUID, worker_id: str, prediction_id: str
    ) -> bool:
        """False when the job is no longer ours or another generation holds the prediction."""
        return bool(
            await self._scalar(
                "record_prediction",
                p_job_id=job_id,
                p_worker_id=worker_id,
                p_prediction_id=prediction_id,
            )
        )

    async def generation_downloading(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        *,
        output_url: str,
        format: str,
        width: int,
        height: int,
        generation_time_seconds: float,
        provider_metrics: dict[str, Any] | None = None,
    ) -> uuid.UUID | None:
        """`provider_metrics`: what Replicate reported (sql/0121_generation_costs.sql)."""
        download_job: uuid.UUID | None = await self._scalar(
            "generation_downloading",
            p_job_id=job_id,
            p_worker_id=worker_id,
            p_output_url=output_url,
            p_format=format,
            p_width=width,
            p_height=height,
            p_generation_time_seconds=Decimal(f"{generation_time_seconds:.3f}"),
            p_provider_metrics=provider_metrics,
        )
        return download_job

    async def finish_generation(
        self,
        generation_id: uuid.UUID,
        *,
        storage_path: str,
        public_url: str,
        file_size: int,
        width: int,
        height: int,
        format: str,
        job_id: uuid.UUID,
        worker_id: str,
        blurhash: str | None = None,
    ) -> dict[str, Any] | None:
        rows = await self._rows(
            "finish_generation",
            p_generation_id=generation_id,
            p_storage_path=storage_path,
            p_public_url=public_url,
            p_file_size=file_size,
            p_width=width,
            p_height=height,
            p_format=format,
            p_blurhash=blurhash,
            p_job_id=job_id,
            p_worker_id=worker_id,
        )
        return rows[0] if rows else None

    async def fail_job(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        error: str,
        *,
        error_details: dict[str, Any] | None = None,
        retryable: bool = True,
    ) -> str | None:
        """Record a failed attempt: the job's status afterwards, None when not ours."""
        status = await self._scalar(
            "fail_job",
            p_job_id=job_id,
            p_worker_id=worker_id,
            p_error_message=error,
            p_error_details=error_details,
            p_retryable=retryable,
        )
        return None if status is None else str(status)

    # Storage retention (sql/0150_storage_cleanup.sql).

    async def enqueue_storage_cleanup(self) -> uuid.UUID:
        """The nightly cleanup-storage job (the active one when there is one)."""
        job_id: uuid.UUID = await self._scalar("enqueue_storage_cleanup")
        return job_id

    async def storage_object_verdicts(
        self, objects: Sequence[tuple[str, datetime | None]], grace_seconds: int
    ) -> dict[str, str]:
        """Listed (path, last change) → referenced, in_use, recent or orphan."""
        rows = await self._rows(
            "storage_object_verdicts",
            p_names=[path for path, _ in objects],
            p_updated_at=[stamp.isoformat() if stamp else None for _, stamp in objects],
            p_grace_seconds=grace_seconds,
        )
        return {str(row["name"]): str(row["verdict"]) for row in rows}

    async def storage_missing_objects(
        self, folder: str, names: Sequence[str], before: datetime, sample: int
    ) -> dict[str, Any]:
        """images rows of `folder` whose object was not listed there: {count, sample}."""
        found: dict[str, Any] = await self._scalar(
            "storage_missing_objects",
            p_folder=folder,
            p_names=list(names),
            p_before=before,
            p_sample=sample,
        )
        return found

    async def storage_missing_folders(
        self, folders: Sequence[str], before: datetime, sample: int
    ) -> dict[str, Any]:
        """images rows in no listed folder: {count, sample}."""
        found: dict[str, Any] = await self._scalar(
            "storage_missing_folders", p_folders=list(folders), p_before=before, p_sample=sample
        )
        return found

    # For the HTTP service.

    async def cancel_generation(self, generation_id: uuid.UUID, user_id: uuid.UUID) -> str:
        """The owner's cancel (sql/0120_cancel_generation.sql): 'cancelled', 'unknown',
        or the status it had already ended with ('completed', 'failed')."""
        return str(
            await self._scalar(
                "cancel_owned_generation", p_generation_id=generation_id, p_user_id=user_id
            )
        )

    async def nudge_workers(self) -> None:
        await self.gateway.call("nudge_workers", {})

    async def list_models(self) -> list[dict[str, Any]]:
        return await self._rows("list_models")

    async def queue_depth(self) -> list[dict[str, Any]]:
        return await self._rows("queue_depth")

    async def monitor_snapshot(self) -> dict[str, Any]:
        """What the operators' monitor page shows (sql/0140_monitor_snapshot.sql)."""
        return dict(await self._scalar("monitor_snapshot"))

    async def get_generation(
        self, generation_id: uuid.UUID, user_id: uuid.UUID
    ) -> dict[str, Any] | None:
        value = await self._scalar(
            "get_generation", p_generation_id=generation_id, p_user_id=user_id
        )
        return dict(value) if value else None

    async def generation_queue_status(
        self, generation_id: uuid.UUID, user_id: uuid.UUID
    ) -> dict[str, Any]:
        """Its place in the queue and an estimate (sql/0082_generation_status.sql)."""
        value = await self._scalar(
            "generation_queue_status", p_generation_id=generation_id, p_user_id=user_id
        )
        return dict(value)
