"""Assembles the worker from Settings: gateway, database, Replicate, storage, runner."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from worker.database import Database
from worker.errors import ImagegenError
from worker.gateway import Gateway
from worker.jobs import HANDLERS, JobContext
from worker.logs import register_secrets
from worker.replicate import ReplicateClient
from worker.runner import Runner
from worker.settings import Settings
from worker.storage import SupabaseStorage
from worker.webhooks import signing_key

log = structlog.get_logger(__name__)


class ConfigurationError(ImagegenError, RuntimeError):
    """The settings cannot make a working worker."""


def _secret(value: object) -> str | None:
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else None


async def open_gateway(settings: Settings) -> Gateway:
    if settings.gateway == "postgres":
        if not settings.database_url:
            raise ConfigurationError("DATABASE_URL is required for the postgres gateway")
        from worker.postgres_gateway import PostgresGateway

        gateway = PostgresGateway(settings.database_url, max_size=settings.database_pool_size)
        await gateway.open()
        return gateway
    url, key = settings.supabase_url, _secret(settings.supabase_service_role_key)
    if not url or not key:
        raise ConfigurationError("set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
    from worker.postgrest_gateway import PostgrestGateway

    postgrest = PostgrestGateway(url, key, timeout=settings.http_timeout_seconds)
    await postgrest.open()
    return postgrest


@dataclass
class Worker:
    db: Database
    replicate: ReplicateClient
    storage: SupabaseStorage
    runner: Runner


@contextlib.asynccontextmanager
async def open_worker(settings: Settings) -> AsyncIterator[Worker]:
    """Everything the runner and the endpoints need, closed again on exit."""
    service_key = _secret(settings.supabase_service_role_key)
    register_secrets(
        [
            _secret(settings.replicate_api_token),
            service_key,
            _secret(settings.worker_secret),
            _secret(settings.supabase_jwt_secret),
            _secret(settings.supabase_anon_key),
            _secret(settings.replicate_webhook_secret),
        ]
    )
    if settings.public_url and not settings.replicate_webhook_secret:
        raise ConfigurationError("PUBLIC_URL (webhooks) needs REPLICATE_WEBHOOK_SECRET")
    if webhook_secret := _secret(settings.replicate_webhook_secret):
        try:
            signing_key(webhook_secret)
        except ValueError as exc:
            raise ConfigurationError(f"REPLICATE_WEBHOOK_SECRET: {exc}") from exc
    if not settings.supabase_url or not service_key:
        raise ConfigurationError("SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are required")
    gateway = await open_gateway(settings)
    db = Database(gateway)
    replicate = ReplicateClient(
        settings.replicate_base_url,
        _secret(settings.replicate_api_token),
        timeout=settings.http_timeout_seconds,
    )
    storage = SupabaseStorage(
        settings.supabase_url,
        service_key,
        settings.storage_bucket,
        timeout=settings.http_timeout_seconds,
    )
    context = JobContext(db, settings, replicate, storage, settings.worker_id)
    runner = Runner(
        db,
        HANDLERS,
        context,
        worker_id=settings.worker_id,
        concurrency=settings.max_parallel_jobs,
        poll_interval=settings.poll_interval_seconds,
        lease_seconds=settings.lease_seconds,
        job_timeout=settings.job_timeout_seconds,
        shutdown_grace=settings.shutdown_grace_seconds,
        listen=settings.listen_for_jobs,
        liveness_interval=settings.liveness_check_seconds,
    )
    try:
        yield Worker(db, replicate, storage, runner)
    finally:
        await replicate.aclose()
        await storage.aclose()
        await gateway.close()


async def run_worker(settings: Settings) -> None:
    """`imagegen worker`: run until SIGTERM/SIGINT, then stop gracefully."""
    async with open_worker(settings) as worker:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.runner.stop)
        await worker.runner.run()
