"""One exception root (worker/errors.py): every exception class the product defines derives
from it, and the runner retries or fails a job by the error's `retryable`, records the
failure through the job type's own hook, and logs by type."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

import api
import worker
from worker.database import Database, Job
from worker.errors import ImagegenError, JobError, PermanentJobError, UserFacingError
from worker.postgres_gateway import PostgresGateway
from worker.runner import Failure, JobType, Runner, record_failure


def product_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package in (api, worker):
        for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(module_info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                    found.append(cls)
    return found


def test_every_exception_of_api_and_worker_derives_from_the_root() -> None:
    classes = product_exceptions()
    names = {cls.__name__ for cls in classes}
    # The walk sees the modules' own classes (a walk that found none would prove nothing).
    assert {"DatabaseError", "GatewayUnavailable", "ReplicateError", "ClientError"} <= names
    strays = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if not issubclass(cls, ImagegenError)
    ]
    assert strays == []


def test_user_message_is_explicit() -> None:
    assert UserFacingError("Shown as is").user_message == "Shown as is"
    assert ImagegenError("for operators").user_message is None
    assert JobError("later", retryable=False).retryable is False
    assert PermanentJobError("never").retryable is False


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    gateway = PostgresGateway(database_url, max_size=2)
    await gateway.open()
    try:
        yield Database(gateway)
    finally:
        await gateway.close()


async def run_one(db: Database, kind: JobType) -> dict[str, Any]:
    """Enqueue one `test-job` (3 attempts), run it once through the runner, return its row."""
    job_id = await db.enqueue_job("test-job", {"generation_id": str(uuid.uuid4())})
    runner = Runner(db, {"test-job": kind}, None, worker_id="w-errors", listen=False)
    claimed, errors = await runner.run_once(wait=True)
    assert (claimed, errors) == (1, 1)
    gateway = db.gateway
    assert isinstance(gateway, PostgresGateway)
    async with await psycopg.AsyncConnection.connect(gateway._url) as conn:
        cursor = await conn.execute(
            "select status, error_message from job_queue where id = %s", (job_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return {"status": row[0], "error_message": row[1]}


def raising(exc: BaseException) -> Any:
    async def handler(_job: Job, _context: Any) -> None:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (JobError("try later"), "pending"),
        (JobError("never mind", retryable=False), "failed"),
        (PermanentJobError("bad input"), "failed"),
        (ImagegenError("an operator's problem"), "pending"),
        (RuntimeError("a bug: may pass next time"), "pending"),
    ],
)
async def test_the_runner_retries_by_the_errors_type(
    db: Database, exc: BaseException, status: str
) -> None:
    row = await run_one(db, JobType(raising(exc)))
    assert row == {"status": status, "error_message": str(exc)}


async def test_a_job_type_records_its_failures_through_its_own_hook(db: Database) -> None:
    seen: list[tuple[str, Failure]] = []

    async def on_failure(database: Database, job: Job, failure: Failure) -> str | None:
        seen.append((job.job_type, failure))
        return await record_failure(database, job, failure)

    row = await run_one(db, JobType(raising(PermanentJobError("no")), on_failure=on_failure))
    assert row["status"] == "failed"
    assert [(job_type, f.message, f.retryable) for job_type, f in seen] == [
        ("test-job", "no", False)
    ]
