"""The runner: claims jobs up to its free capacity and runs each as an asyncio task.

It wakes on NOTIFY, on its poll interval and when told to (`wake()`, called by the
process-jobs endpoint). Leases are extended by a heartbeat; a job whose lease was lost
(taken over, cancelled) is cancelled here. On stop it claims nothing more, lets running
jobs finish within the grace period and hands the rest back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from worker import metrics
from worker.database import Database, Job
from worker.errors import ImagegenError, JobSnoozed, PermanentJobError, is_retryable
from worker.gateway import DatabaseError, GatewayUnavailable

log = structlog.get_logger(__name__)

Handler = Callable[[Job, Any], Awaitable[None]]
# How long the loop waits for the worker's session to be registered before it claims.
REGISTER_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Failure:
    """A failed attempt, as the runner records it."""

    worker_id: str
    message: str
    details: dict[str, Any]
    retryable: bool


# Records a failed attempt; the job's status afterwards ("pending": it retries), None when
# the job is no longer this worker's.
FailureHook = Callable[[Database, Job, Failure], Awaitable[str | None]]


async def record_failure(db: Database, job: Job, failure: Failure) -> str | None:
    """The queue's own rule: the job retries or fails (sql/0050_fail_job.sql)."""
    return await db.fail_job(
        job.id,
        failure.worker_id,
        failure.message,
        error_details=failure.details,
        retryable=failure.retryable,
    )


@dataclass(frozen=True)
class JobType:
    """What the runner knows of a job type: its handler, how a failed attempt is recorded,
    and the payload fields that every log line of its jobs carries."""

    handler: Handler
    on_failure: FailureHook = record_failure
    log_fields: tuple[str, ...] = ()


class Runner:
    def __init__(
        self,
        db: Database,
        handlers: Mapping[str, JobType | Handler],
        context: Any,
        *,
        worker_id: str,
        concurrency: int = 3,
        poll_interval: float = 5.0,
        lease_seconds: int = 120,
        job_timeout: float = 900.0,
        shutdown_grace: float = 30.0,
        listen: bool = True,
        job_types: list[str] | None = None,
        liveness_interval: float = 2.0,
    ) -> None:
        self.db = db
        self.handlers = {
            name: kind if isinstance(kind, JobType) else JobType(kind)
            for name, kind in handlers.items()
        }
        self.context = context
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.job_timeout = job_timeout
        self.shutdown_grace = shutdown_grace
        self.listen = listen
        self.liveness_interval = liveness_interval
        # None claims every type, so unknown ones get failed instead of waiting forever.
        self.job_types = job_types
        self.running: dict[uuid.UUID, asyncio.Task[bool]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._session_registered = asyncio.Event()
        self.alive = False
        self.stopped = asyncio.Event()  # set when run() has returned

    # Control.

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run_once(self, wait: bool = False) -> tuple[int, int]:
        """Claim one batch now (the process-jobs endpoint): (jobs claimed, errors). With
        `wait`, the errors are counted once the batch has run."""
        tasks = [self.running[job.id] for job in await self._claim()]
        if not wait or not tasks:
            return len(tasks), 0
        outcomes = await asyncio.gather(
            *(asyncio.shield(task) for task in tasks), return_exceptions=True
        )
        return len(tasks), sum(outcome is not True for outcome in outcomes)

    async def run_claimed(self, job: Job) -> bool:
        """Run a job claimed outside the loop (the legacy generate-image) as if claimed here:
        heartbeats renew its lease (its own, when the loop is not running), a lost lease
        cancels it, failures are recorded. Whether it succeeded."""
        task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
        self.running[job.id] = task
        task.add_done_callback(functools.partial(self._finished, job.id))
        heartbeat = None if self.alive else asyncio.create_task(self._heartbeat_loop())
        try:
            return await asyncio.shield(task)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)

    # The loop.

    async def run(self) -> None:
        self.alive = True
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._liveness_loop(), name="liveness"),
        ]
        if self.listen:
            background.append(
                asyncio.create_task(self.db.listen("job_queue", self.wake), name="listen")
            )
        log.info("runner started", worker_id=self.worker_id, concurrency=self.concurrency)
        try:
            # Claim nothing before this worker's session is registered: a worker killed
            # between its first claim and its registration would leave its jobs to the
            # lease, minutes instead of seconds. Bounded: with the database slow to
            # answer, the lease still covers the jobs.
            await _wait(self._session_registered, REGISTER_WAIT_SECONDS)
            while not self.stopping:
                self._wakeup.clear()
                try:
                    await self._claim()
                except (GatewayUnavailable, DatabaseError) as exc:
                    log.warning("claim failed", error=str(exc))
                    await self._sleep(min(self.poll_interval, 1.0))
                    continue
                await self._sleep(self.poll_interval)
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.alive = False
            self.stopped.set()
            log.info("runner stopped", worker_id=self.worker_id)

    async def _sleep(self, seconds: float) -> None:
        await _wait(self._wakeup, seconds)

    async def _claim(self) -> list[Job]:
        free = self.concurrency - len(self.running)
        if free <= 0 or self.stopping:
            return []
        started = time.perf_counter()
        jobs = await self.db.claim_jobs(self.worker_id, free, self.job_types, self.lease_seconds)
        metrics.CLAIM_LATENCY.observe(time.perf_counter() - started)
        for job in jobs:
            task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
            self.running[job.id] = task
            task.add_done_callback(functools.partial(self._finished, job.id))
        metrics.JOBS_IN_FLIGHT.set(len(self.running))
        if len(jobs) == free:
            # A full batch: there may be more waiting once a slot frees up.
            self._wakeup.set()
        return jobs

    def _finished(self, job_id: uuid.UUID, _task: asyncio.Task[bool]) -> None:
        self.running.pop(job_id, None)
        metrics.JOBS_IN_FLIGHT.set(len(self.running))
        self._wakeup.set()

    async def _execute(self, job: Job) -> bool:
        kind = self.handlers.get(job.job_type, _UNKNOWN)
        bound = log.bind(job_id=str(job.id), job_type=job.job_type, attempt=job.attempts)
        fields = {name: str(job.payload[name]) for name in kind.log_fields if job.payload.get(name)}
        if fields:
            bound = bound.bind(**fields)
        started = time.perf_counter()
        deadline = asyncio.timeout(self.job_timeout)
        try:
            async with deadline:
                await kind.handler(job, self.context)
        except TimeoutError as exc:
            if not deadline.expired():
                message = str(exc) or "Timed out"
                await self._fail(kind, job, bound, message, is_retryable(exc), type(exc).__name__)
            else:
                message = f"The job timed out after {self.job_timeout:g} s"
                await self._fail(kind, job, bound, message, True, "job_timeout")
            return False
        except asyncio.CancelledError:
            bound.info("job cancelled")
            raise
        except JobSnoozed as exc:
            await self._snooze(job, bound, exc)
            return True  # not an error: the job comes back when it may go on
        except Exception as exc:
            if not isinstance(exc, ImagegenError):
                bound.exception("job crashed")
            message = str(exc) or type(exc).__name__
            await self._fail(kind, job, bound, message, is_retryable(exc), type(exc).__name__)
            return False
        else:
            metrics.JOBS_FINISHED.labels(job.job_type, "completed").inc()
            bound.debug("job completed", seconds=round(time.perf_counter() - started, 3))
            return True
        finally:
            metrics.JOB_DURATION.labels(job.job_type).observe(time.perf_counter() - started)

    async def _snooze(self, job: Job, bound: Any, snoozed: JobSnoozed) -> None:
        """Hand the job back until it may go on, and wake then to claim it (no NOTIFY
        tells of a job that falls due)."""
        until = datetime.now(UTC) + timedelta(seconds=snoozed.seconds)
        try:
            held = await self.db.snooze_job(job.id, self.worker_id, until)
        except (GatewayUnavailable, DatabaseError) as exc:
            # The lease runs out and the job is claimed again: it costs an attempt.
            bound.error("could not snooze job", error=str(exc))
            return
        metrics.JOBS_FINISHED.labels(job.job_type, "snoozed" if held else "lost").inc()
        bound.debug("job snoozed", reason=snoozed.reason, seconds=round(snoozed.seconds, 3))
        asyncio.get_running_loop().call_later(snoozed.seconds + 0.005, self.wake)

    async def _fail(
        self,
        kind: JobType,
        job: Job,
        bound: Any,
        message: str,
        retryable: bool,
        error_type: str,
    ) -> None:
        # error_type becomes the attempt's error_kind in job_queue.attempt_history.
        details = {"worker_id": self.worker_id, "attempt": job.attempts, "error_type": error_type}
        try:
            status = await kind.on_failure(
                self.db, job, Failure(self.worker_id, message, details, retryable)
            )
        except (GatewayUnavailable, DatabaseError) as exc:
            # The lease runs out and another worker retries: nothing is lost.
            bound.error("could not record failure", error=str(exc))
            return
        outcome = "lost" if status is None else ("retry" if status == "pending" else "failed")
        metrics.JOBS_FINISHED.labels(job.job_type, outcome).inc()
        bound.warning("job failed", error=message, retryable=retryable, outcome=outcome)

    async def _heartbeat_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 1.0)
        while True:
            await asyncio.sleep(interval)
            held = list(self.running)
            if not held:
                continue
            try:
                kept = await self.db.heartbeat_jobs(self.worker_id, held, self.lease_seconds)
            except (GatewayUnavailable, DatabaseError) as exc:
                log.warning("heartbeat failed", error=str(exc))
                continue
            for job_id in set(held) - kept:
                task = self.running.get(job_id)
                if task is not None:
                    # Taken over or cancelled: whatever this attempt does now cannot count.
                    log.warning("lease lost; cancelling job", job_id=str(job_id))
                    task.cancel()

    async def _liveness_loop(self) -> None:
        """Hold this worker's session lock; every `liveness_interval` free the jobs of
        workers whose session ended (kill -9) and claim them at once."""
        hold = asyncio.create_task(
            self.db.hold_session(self.worker_id, self._session_registered), name="session"
        )
        try:
            while True:
                await asyncio.sleep(self.liveness_interval)
                try:
                    freed = await self.db.reclaim_dead_workers()
                except (GatewayUnavailable, DatabaseError) as exc:
                    log.warning("liveness check failed", error=str(exc))
                    continue
                if freed:
                    log.info("taking over the jobs of a dead worker", jobs=freed)
                    self.wake()
        finally:
            hold.cancel()
            await asyncio.gather(hold, return_exceptions=True)

    async def _drain(self) -> None:
        if not self.running:
            return
        log.info(
            "stopping: waiting for running jobs",
            jobs=len(self.running),
            grace_seconds=self.shutdown_grace,
        )
        _, pending = await asyncio.wait(list(self.running.values()), timeout=self.shutdown_grace)
        if not pending:
            return
        left = [job_id for job_id, task in self.running.items() if task in pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            released = await self.db.release_jobs(self.worker_id, left)
            log.info("handed jobs back to the queue", released=released)
        except (GatewayUnavailable, DatabaseError) as exc:
            log.error("could not release jobs; their leases will expire", error=str(exc))


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set, or `seconds` have passed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


class UnknownJobType(PermanentJobError):
    def __init__(self, job_type: str) -> None:
        super().__init__(f"Unknown job type: {job_type}")


async def _unknown(job: Job, _context: Any) -> None:
    raise UnknownJobType(job.job_type)


_UNKNOWN = JobType(_unknown)
