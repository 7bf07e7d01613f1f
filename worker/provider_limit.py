"""The provider account's create limit, shared by every worker through the database
(sql/0111_provider_limits.sql): a job takes a token before each create, and a 429 pauses
creates for all of them. A job that must wait raises JobSnoozed: the runner hands it back
to the queue until its turn, so waiting holds no worker slot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from worker.database import Database
from worker.errors import JobSnoozed

log = structlog.get_logger(__name__)

REPLICATE = "replicate"
# A 429 without a usable Retry-After pauses everyone this long.
DEFAULT_PAUSE_SECONDS = 10.0
MAX_PAUSE_SECONDS = 3600.0  # pause_provider's bound


@dataclass(frozen=True)
class ProviderLimit:
    """The limit as one job sees it: its turn is kept by the job's id."""

    db: Database
    job_id: uuid.UUID
    provider: str = REPLICATE

    async def take(self) -> None:
        """Return when a create may be sent now; else raise JobSnoozed until the job's turn."""
        wait = await self.db.take_provider_token(self.provider, self.job_id)
        if wait > 0:
            raise JobSnoozed(wait, f"waiting for a {self.provider} create token")

    async def rate_limited(self, retry_after: float | None) -> JobSnoozed:
        """The provider answered 429: pause every worker's creates, and this job with them."""
        seconds = retry_after if retry_after is not None else DEFAULT_PAUSE_SECONDS
        wait = await self.db.pause_provider(self.provider, min(seconds, MAX_PAUSE_SECONDS))
        log.warning("provider rate limited us; creates paused", provider=self.provider, wait=wait)
        return JobSnoozed(wait, f"{self.provider} answered 429")
