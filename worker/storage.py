"""The one door to Supabase Storage: upload generated images, name their public URL.

Built on storage3 (supabase-py's storage client) over our own httpx client, so that every
call has an explicit timeout. Works against Supabase and against `devstack.storage`.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException

from worker.errors import JobError
from worker.logs import redact_text


class StorageError(JobError):
    """An upload or lookup failed; `retryable` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message, retryable=retryable)
        self.message = message


class SupabaseStorage:
    def __init__(
        self,
        supabase_url: str,
        service_role_key: str,
        bucket: str,
        *,
        timeout: float,
        upload_attempts: int = 3,
    ) -> None:
        self._base = supabase_url.rstrip("/") + "/storage/v1"
        self.upload_attempts = max(1, upload_attempts)
        self._key = service_role_key
        self.bucket = bucket
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False)
        headers = {"apikey": service_role_key, "Authorization": f"Bearer {service_role_key}"}
        self._client = AsyncStorageClient(self._base + "/", headers, http_client=self._http)

    def public_url(self, path: str) -> str:
        return f"{self._base}/object/public/{quote(self.bucket)}/{quote(path.lstrip('/'))}"

    async def upload(self, path: str, source: Path | BinaryIO, content_type: str) -> None:
        """Store the whole of `source` at `path` (overwriting), streamed from its file.
        A transient failure (5xx, 429, timeout, network) is tried again from the start of
        the file, up to `upload_attempts` in all: with upsert, a resend is harmless."""
        options: Any = {"content-type": content_type, "upsert": "true"}
        rewind = _rewinder(source)
        attempts = self.upload_attempts if rewind else 1
        for attempt in range(1, attempts + 1):
            if rewind:
                rewind()
            with ExitStack() as stack:
                body = _uploadable(source, stack)
                try:
                    await self._client.from_(self.bucket).upload(path, body, options)
                    return
                except Exception as exc:
                    error = self._error("upload", path, exc)
                    if not error.retryable or attempt == attempts:
                        raise error from exc
            await asyncio.sleep(0.25 * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))

    async def exists(self, path: str) -> bool:
        try:
            return await self._client.from_(self.bucket).exists(path)
        except Exception as exc:
            raise self._error("lookup", path, exc) from exc

    async def remove(self, path: str) -> None:
        await self.remove_many([path])

    async def remove_many(self, paths: list[str]) -> list[str]:
        """Delete these objects (`DELETE /object/<bucket>` with `{"prefixes": [...]}`, at
        most 1,000 a call as Storage allows); the paths Storage says it removed."""
        if not paths:
            return []
        try:
            removed = await self._client.from_(self.bucket).remove(paths)
        except Exception as exc:
            raise self._error(
                "removal", paths[0] if len(paths) == 1 else f"{len(paths)} objects", exc
            ) from exc
        return [str(item["name"]) for item in removed if isinstance(item, dict) and "name" in item]

    async def list_folder(self, folder: str, *, limit: int, offset: int) -> list[StoredEntry]:
        """One page of what is directly in `folder` ('' is the bucket's root), by name
        (`POST /object/list/<bucket>`): files with their last change, and subfolders
        (Storage gives a folder neither id nor metadata)."""
        options: Any = {
            "limit": limit,
            "offset": offset,
            "sortBy": {"column": "name", "order": "asc"},
        }
        try:
            listed = await self._client.from_(self.bucket).list(folder, options)
        except Exception as exc:
            raise self._error("listing", folder or "/", exc) from exc
        entries = []
        for item in listed:
            name = str(item["name"])
            path = f"{folder}/{name}" if folder else name
            if item.get("id") is None and item.get("metadata") is None:
                entries.append(StoredEntry(path, is_folder=True, updated_at=None))
            else:
                stamp = item.get("updated_at") or item.get("created_at")
                entries.append(StoredEntry(path, is_folder=False, updated_at=_timestamp(stamp)))
        return entries

    async def aclose(self) -> None:
        await self._http.aclose()

    def _error(self, action: str, path: str, exc: Exception) -> StorageError:
        retryable, reason = _classify(exc)
        # The key must never reach a log line, even if a server echoes it back.
        reason = redact_text(reason, self._key)[:500]
        return StorageError(f"Storage {action} of {path} failed: {reason}", retryable=retryable)


@dataclass(frozen=True)
class StoredEntry:
    """A listed object (`path` inside the bucket) or folder; `updated_at` None when unknown."""

    path: str
    is_folder: bool
    updated_at: datetime | None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _rewinder(source: Path | BinaryIO) -> Callable[[], object] | None:
    """How to send `source` again from where it starts now; None when it cannot be."""
    if isinstance(source, Path):
        return lambda: None
    if not source.seekable():
        return None
    start = source.tell()
    return lambda: source.seek(start)


def _uploadable(source: Path | BinaryIO, stack: ExitStack) -> Path | io.BufferedReader | bytes:
    """What storage3 accepts (a path, a BufferedReader or bytes) without reading a file
    into memory: a file object with a descriptor is reopened through a duplicate of it."""
    if isinstance(source, Path | io.BufferedReader):
        return source
    try:
        fd = source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        source.seek(0)
        return source.read()  # an in-memory stream: its bytes are in memory already
    source.flush()  # buffered writes must reach the descriptor we read through
    return stack.enter_context(open(os.dup(fd), "rb"))


def _classify(exc: Exception) -> tuple[bool, str]:
    if isinstance(exc, httpx.TimeoutException):
        return True, f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.LocalProtocolError):
        return False, f"invalid request ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError):
        return True, f"network error ({type(exc).__name__})"
    if isinstance(exc, StorageApiError):
        status = _http_status(exc)
        return status is None or status >= 500 or status in (408, 429), (
            f"{status or exc.status} {exc.code}: {exc.message}"
        )
    if isinstance(exc, StorageException | KeyError | ValueError):
        return False, f"unexpected reply ({type(exc).__name__})"
    return True, type(exc).__name__


def _http_status(exc: StorageApiError) -> int | None:
    # storage3 reports the status from the body; the HTTP status is on the cause.
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, httpx.HTTPStatusError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return cause.response.status_code
    try:
        return int(exc.status)
    except (TypeError, ValueError):
        return None
