from __future__ import annotations

from dataclasses import dataclass

from worker.database import Database
from worker.errors import JobError
from worker.replicate import ReplicateClient
from worker.settings import Settings
from worker.storage import SupabaseStorage


@dataclass(frozen=True)
class JobContext:
    """What every handler may use; built once per process at the edge."""

    db: Database
    settings: Settings
    replicate: ReplicateClient
    storage: SupabaseStorage
    worker_id: str


class LeaseLost(JobError):
    """Another worker took the job over (or it was cancelled): this attempt is void."""

    def __init__(self) -> None:
        super().__init__("The job was taken over by another worker")
