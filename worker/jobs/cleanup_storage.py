from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from worker.database import Job
from worker.jobs.context import JobContext, LeaseLost
from worker.storage import StoredEntry, SupabaseStorage

log = structlog.get_logger(__name__)

SAMPLE = 20  # paths kept in the report, per kind
PAGE = 1_000  # objects per list call and per verdict call
DELETE_BATCH = 100  # objects re-checked and deleted together (Storage takes up to 1,000)
# What the Supabase dashboard puts in a folder it creates: not an image, and not ours.
PLACEHOLDER = ".emptyFolderPlaceholder"
# Rows written this shortly before the listing began may not have their object listed yet.
MISSING_MARGIN = timedelta(minutes=1)


@dataclass
class CleanupReport:
    """What the job found and did; stored as the job's `result`."""

    dry_run: bool
    grace_hours: float
    folders: int = 0
    objects: int = 0
    referenced: int = 0
    in_use: int = 0
    recent: int = 0
    orphans: int = 0
    orphan_sample: list[str] = field(default_factory=list)
    deleted: int = 0
    # Orphans when listed that a row (or a generation) claimed by the time of deletion.
    spared: int = 0
    # Orphans past STORAGE_CLEANUP_MAX_DELETES: left for the next run.
    deferred: int = 0
    missing_objects: int = 0
    missing_sample: list[str] = field(default_factory=list)

    def count(self, verdict: str, path: str) -> None:
        if verdict == "orphan":
            self.orphans += 1
            if len(self.orphan_sample) < SAMPLE:
                self.orphan_sample.append(path)
        elif verdict in ("referenced", "in_use", "recent"):
            setattr(self, verdict, getattr(self, verdict) + 1)

    def add_missing(self, found: dict[str, Any]) -> None:
        self.missing_objects += int(found.get("count") or 0)
        room = SAMPLE - len(self.missing_sample)
        self.missing_sample += [str(path) for path in (found.get("sample") or [])][:room]


async def cleanup_storage(job: Job, ctx: JobContext) -> None:
    """Retention of the bucket (issue 17): report the objects no images row points at
    (older than the grace period, no generation still writing them) and the rows whose
    object is gone; delete those objects only with STORAGE_CLEANUP_DELETE. The rule of
    what may go is SQL's (sql/0150_storage_cleanup.sql), asked again right before each
    deletion, so a row written since the listing keeps its file."""
    settings = ctx.settings
    delete = settings.storage_cleanup_delete
    grace_seconds = round(settings.storage_cleanup_grace_hours * 3600)
    report = CleanupReport(dry_run=not delete, grace_hours=settings.storage_cleanup_grace_hours)
    listing_began = datetime.now(UTC) - MISSING_MARGIN
    candidates: list[tuple[str, datetime | None]] = []
    folders: list[str] = []

    queue: deque[str] = deque([""])
    while queue:
        folder = queue.popleft()
        files, subfolders = await _list_all(ctx.storage, folder)
        folders.append(folder)
        queue.extend(subfolders)
        for start in range(0, len(files), PAGE):
            page = [(entry.path, entry.updated_at) for entry in files[start : start + PAGE]]
            verdicts = await ctx.db.storage_object_verdicts(page, grace_seconds)
            for path, updated_at in page:
                verdict = verdicts.get(path, "recent")  # no verdict: never deleted
                report.count(verdict, path)
                if verdict == "orphan" and delete:
                    if len(candidates) < settings.storage_cleanup_max_deletes:
                        candidates.append((path, updated_at))
                    else:
                        report.deferred += 1
        report.objects += len(files)
        names = [entry.path for entry in files]
        report.add_missing(
            await ctx.db.storage_missing_objects(folder, names, listing_began, SAMPLE)
        )
    report.folders = len(folders) - 1  # the root is not a folder
    report.add_missing(await ctx.db.storage_missing_folders(folders, listing_began, SAMPLE))

    for start in range(0, len(candidates), DELETE_BATCH):
        batch = candidates[start : start + DELETE_BATCH]
        # Asked again now: a row (or a retry) that came since the listing wins.
        verdicts = await ctx.db.storage_object_verdicts(batch, grace_seconds)
        still = [path for path, _ in batch if verdicts.get(path) == "orphan"]
        report.spared += len(batch) - len(still)
        report.deleted += len(await ctx.storage.remove_many(still))

    result = asdict(report)
    if not await ctx.db.complete_job(job.id, ctx.worker_id, result=result):
        raise LeaseLost()
    log.info("storage cleanup finished", bucket=ctx.storage.bucket, **result)


async def _list_all(storage: SupabaseStorage, folder: str) -> tuple[list[StoredEntry], list[str]]:
    """Every file and subfolder directly in `folder`, all pages read before anything is
    deleted (a deletion would shift the offsets of the pages after it)."""
    files: list[StoredEntry] = []
    subfolders: list[str] = []
    offset = 0
    while True:
        page = await storage.list_folder(folder, limit=PAGE, offset=offset)
        for entry in page:
            if entry.is_folder:
                subfolders.append(entry.path)
            elif not entry.path.endswith(PLACEHOLDER):
                files.append(entry)
        if len(page) < PAGE:
            return files, subfolders
        offset += len(page)
