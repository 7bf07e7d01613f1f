"""All configuration, read once from the environment at the edge and passed down."""

from __future__ import annotations

import os
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPLICATE_API_HOST = "api.replicate.com"
REPLICATE_DELIVERY_HOST = "replicate.delivery"  # where Replicate serves prediction outputs
# What configure_worker_cron() requires of the secret pg_cron sends (sql/0001_baseline.sql);
# tests/sql/test_cron_sql.py checks that the two agree.
WORKER_SECRET_MIN_LENGTH = 16


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Settings(BaseSettings):
    """Every setting, its environment variable (the upper-case name) and default."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # Database: direct PostgreSQL (DATABASE_URL), or PostgREST RPC through Supabase.
    database_url: str | None = None
    database_gateway: Literal["auto", "postgres", "postgrest"] = "auto"
    database_pool_size: int = Field(default=10, ge=1)

    # Supabase project (PostgREST, Storage, Auth).
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    supabase_anon_key: SecretStr | None = None
    supabase_jwt_secret: SecretStr | None = None

    # Replicate.
    replicate_api_token: SecretStr | None = None
    replicate_base_url: str = "https://api.replicate.com/v1"
    replicate_wait_seconds: int = Field(default=1, ge=0, le=60)
    prediction_timeout_seconds: int = Field(default=600, ge=5)
    # Webhooks (worker/webhooks.py): with PUBLIC_URL set, predictions report their end to
    # PUBLIC_URL/functions/v1/replicate-webhook and hold no worker slot while they run;
    # unset, the worker polls them. The signing secret is the account's (`whsec_...`,
    # Replicate's GET /v1/webhooks/default/secret).
    public_url: str | None = None
    replicate_webhook_secret: SecretStr | None = None
    # A prediction with no word this long past its model's estimated time is polled.
    webhook_grace_seconds: float = Field(default=30.0, ge=0)

    # The worker.
    worker_secret: SecretStr | None = Field(default=None, min_length=WORKER_SECRET_MIN_LENGTH)
    worker_id: str = Field(default_factory=_default_worker_id)
    max_parallel_jobs: int = Field(default=3, ge=1, le=5000)
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    listen_for_jobs: bool = True
    lease_seconds: int = Field(default=120, ge=2)
    job_timeout_seconds: float = Field(default=900.0, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # How often a worker looks for dead workers' jobs (sql/0040_worker_liveness.sql).
    liveness_check_seconds: float = Field(default=2.0, gt=0)

    # Storage and downloads.
    storage_bucket: str = "generated-images"
    max_image_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_source_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    http_timeout_seconds: float = Field(default=30.0, gt=0)
    # Output downloads: comma-separated host names (each with its subdomains) they may
    # come from; unset: Replicate's delivery domain when talking to Replicate, else any.
    output_hosts: str | None = None
    # Comma-separated origins (scheme://host:port) whose outputs may sit on a loopback or
    # private address: the dev stack's and the tests' simulator. Unset: none may.
    output_private_origins: str | None = None

    # Storage retention: the nightly cleanup-storage job (worker/jobs/cleanup_storage.py).
    # Off by default: it reports orphan objects and deletes them only when this is true.
    storage_cleanup_delete: bool = False
    # An object nothing points at goes only once it is older than this.
    storage_cleanup_grace_hours: float = Field(default=24.0, ge=1)
    # At most this many deletions a run (a safety valve against a wrong listing).
    storage_cleanup_max_deletes: int = Field(default=10_000, ge=0)

    # The HTTP service.
    # How long a request waits for a database connection before its 503 (an outage).
    database_request_timeout_seconds: float = Field(default=1.5, gt=0)
    # Requests in flight per client credential; past it a 429 before any database call.
    max_requests_in_flight_per_client: int = Field(default=8, ge=1)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def output_host_list(self) -> tuple[str, ...]:
        if self.output_hosts is not None:
            return tuple(
                h.strip().lower().strip(".") for h in self.output_hosts.split(",") if h.strip()
            )
        if urlsplit(self.replicate_base_url).hostname == REPLICATE_API_HOST:
            return (REPLICATE_DELIVERY_HOST,)
        return ()

    @property
    def output_private_origin_set(self) -> frozenset[str]:
        """The origins as `scheme://host:port`, the port spelled out."""
        origins = set()
        for value in (self.output_private_origins or "").split(","):
            if value.strip():
                parts = urlsplit(value.strip())
                port = parts.port or (443 if parts.scheme == "https" else 80)
                origins.add(f"{parts.scheme}://{parts.hostname}:{port}")
        return frozenset(origins)

    @property
    def webhook_url(self) -> str | None:
        """Where Replicate delivers our predictions' webhooks; None: polling mode."""
        if not self.public_url:
            return None
        return f"{self.public_url.rstrip('/')}/functions/v1/replicate-webhook"

    @property
    def gateway(self) -> Literal["postgres", "postgrest"]:
        if self.database_gateway != "auto":
            return self.database_gateway
        return "postgres" if self.database_url else "postgrest"
