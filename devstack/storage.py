"""A local file store that speaks Supabase Storage's wire format (the part storage3 uses).

The embedded default mounts it at `/storage/v1`; the tests serve it as Storage's
stand-in. Objects live under `<root>/objects/<bucket>/<key>`, their content type and
checksum under `<root>/meta/<bucket>/<sha256 of key>.json` (flat, so no key's metadata
can collide with another key's folder). Uploads are streamed to a temporary file; the
metadata is written first, then the object renamed into place: a failed upload leaves
neither, and a reader never sees half an object.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from worker.errors import ImagegenError

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_CHUNK = 64 * 1024
_BUCKET_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")
_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))')


class StorageFailure(ImagegenError):
    """Answered as Storage answers errors: `{"statusCode", "error", "message"}`."""

    def __init__(self, http_status: int, error: str, message: str, code: int | None = None):
        super().__init__(message)
        self.http_status = http_status
        self.error = error
        self.message = message
        self.code = code or http_status

    def response(self) -> JSONResponse:
        body = {"statusCode": str(self.code), "error": self.error, "message": self.message}
        return JSONResponse(body, status_code=self.http_status)


def _not_found() -> StorageFailure:
    return StorageFailure(404, "not_found", "Object not found")


def _no_bucket() -> StorageFailure:
    return StorageFailure(404, "Bucket not found", "Bucket not found")


def _collision() -> StorageFailure:
    return StorageFailure(400, "Invalid Key", "The key collides with a folder of that name")


def _duplicate() -> StorageFailure:
    # Storage answers a duplicate with HTTP 400 and statusCode "409".
    return StorageFailure(400, "Duplicate", "The resource already exists", code=409)


@dataclass(frozen=True)
class Store:
    root: Path
    service_role_key: str
    max_bytes: int
    public_base_url: str | None
    auto_create_buckets: bool

    def object_path(self, bucket: str, key: str) -> Path:
        return self.root / "objects" / bucket / key

    def meta_path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / "meta" / bucket / f"{digest}.json"

    def legacy_meta_path(self, bucket: str, key: str) -> Path:
        """Where stores written before the flat layout keep an object's metadata."""
        return self.root / "meta" / bucket / f"{key}.json"

    def bucket_path(self, bucket: str) -> Path:
        return self.root / "buckets" / f"{bucket}.json"


Endpoint = Callable[[Store, Request], Awaitable[Response]]


def create_storage_app(
    root: Path,
    service_role_key: str,
    public_base_url: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    buckets: Iterable[str] = (),
    auto_create_buckets: bool = True,
) -> Starlette:
    """The Storage API at the app's root (mount it at `/storage/v1`).

    `buckets` are created (public) when missing. With `auto_create_buckets` an upload
    creates its missing bucket (public), so the embedded default needs no setup; without
    it, such an upload answers "Bucket not found" as Storage does. `public_base_url` is
    where this app is reachable from outside (e.g. `http://127.0.0.1:8000/storage/v1`);
    it is kept on `app.state` for whoever needs absolute URLs, the wire format has none.
    """
    store = Store(Path(root), service_role_key, max_bytes, public_base_url, auto_create_buckets)
    for name in ("objects", "meta", "buckets", "tmp"):
        (store.root / name).mkdir(parents=True, exist_ok=True)
    for bucket in buckets:
        _create_json(store, store.bucket_path(bucket), _new_bucket(bucket, bucket, True, None))

    def handle(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await endpoint(store, request)
            except StorageFailure as failure:
                return failure.response()
            except (NotADirectoryError, IsADirectoryError, FileExistsError):
                return _collision().response()  # a key and a folder of the same name
            except OSError as exc:
                return StorageFailure(500, "Internal", f"storage error ({exc.strerror})").response()

        return run

    routes = [
        Route("/bucket", handle(list_buckets), methods=["GET"]),
        Route("/bucket", handle(create_bucket), methods=["POST"]),
        Route("/bucket/{bucket}", handle(get_bucket), methods=["GET"]),
        Route("/object/public/{bucket}/{key:path}", handle(public_download), methods=["GET"]),
        Route("/object/authenticated/{bucket}/{key:path}", handle(download), methods=["GET"]),
        Route("/object/info/{bucket}/{key:path}", handle(object_info), methods=["GET"]),
        # Before the upload route, which would take `list` for a bucket (as Storage routes).
        Route("/object/list/{bucket}", handle(list_objects), methods=["POST"]),
        Route("/object/{bucket}", handle(remove_objects), methods=["DELETE"]),
        Route("/object/{bucket}/{key:path}", handle(upload), methods=["POST", "PUT"]),
        Route("/object/{bucket}/{key:path}", handle(download), methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.store = store
    app.state.public_base_url = public_base_url
    return app


# Requests.


def _authorize(store: Store, request: Request) -> None:
    header = request.headers.get("authorization", "")
    if not header:
        raise StorageFailure(401, "Unauthorized", "headers must have property 'authorization'")
    scheme, _, token = header.partition(" ")
    if (
        not store.service_role_key  # no key configured: nobody may write
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(token.strip().encode(), store.service_role_key.encode())
    ):
        raise StorageFailure(403, "Unauthorized", "invalid signature")


def _bucket_id(value: str) -> str:
    if not _BUCKET_ID.match(value) or value in (".", ".."):
        raise StorageFailure(400, "Invalid Input", "The bucket id is invalid")
    return value


def _object_key(value: str) -> str:
    """A relative key whose every segment is a plain name: no `..`, no absolute path."""
    parts = value.split("/")
    if (
        not value
        or len(value) > 1024
        or "\x00" in value
        or "\\" in value
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise StorageFailure(400, "Invalid Key", f"Invalid key: {value!r}")
    return value


def _target(request: Request) -> tuple[str, str]:
    return _bucket_id(request.path_params["bucket"]), _object_key(request.path_params["key"])


async def _bucket(store: Store, bucket: str) -> dict[str, Any]:
    try:
        data = await anyio.Path(store.bucket_path(bucket)).read_text()
    except FileNotFoundError:
        raise _no_bucket() from None
    info: dict[str, Any] = json.loads(data)
    return info


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise StorageFailure(400, "Invalid Input", "The body is not valid JSON") from None
    if not isinstance(body, dict):
        raise StorageFailure(400, "Invalid Input", "The body must be a JSON object")
    return body


# Buckets.


def _new_bucket(
    bucket: str, name: str, public: bool, file_size_limit: int | None
) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": bucket,
        "name": name,
        "owner": "",
        "public": public,
        "file_size_limit": file_size_limit,
        "allowed_mime_types": None,
        "created_at": now,
        "updated_at": now,
    }


async def create_bucket(store: Store, request: Request) -> Response:
    _authorize(store, request)
    body = await _json_body(request)
    bucket = _bucket_id(str(body.get("id") or body.get("name") or ""))
    limit = body.get("file_size_limit")
    info = _new_bucket(
        bucket,
        str(body.get("name") or bucket),
        bool(body.get("public", False)),
        int(limit) if isinstance(limit, int | str) and str(limit).isdigit() else None,
    )
    info["allowed_mime_types"] = body.get("allowed_mime_types")
    if not await to_thread.run_sync(_create_json, store, store.bucket_path(bucket), info):
        raise _duplicate()
    return JSONResponse({"name": bucket})


async def get_bucket(store: Store, request: Request) -> Response:
    _authorize(store, request)
    return JSONResponse(await _bucket(store, _bucket_id(request.path_params["bucket"])))


async def list_buckets(store: Store, request: Request) -> Response:
    _authorize(store, request)
    paths = sorted((store.root / "buckets").glob("*.json"))
    return JSONResponse([json.loads(await anyio.Path(path).read_text()) for path in paths])


# Objects.


async def upload(store: Store, request: Request) -> Response:
    _authorize(store, request)
    bucket, key = _target(request)
    if store.auto_create_buckets and not await anyio.Path(store.bucket_path(bucket)).exists():
        fresh = _new_bucket(bucket, bucket, True, None)
        await to_thread.run_sync(_create_json, store, store.bucket_path(bucket), fresh)
    info = await _bucket(store, bucket)
    limit = min(store.max_bytes, info.get("file_size_limit") or store.max_bytes)
    upsert = request.method == "PUT" or request.headers.get("x-upsert", "").lower() == "true"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 2 * limit + _CHUNK:
        raise _too_large()  # too big to be worth draining

    fd, temp_name = await to_thread.run_sync(lambda: tempfile.mkstemp(dir=store.root / "tmp"))
    temp = Path(temp_name)
    try:
        async with await anyio.open_file(fd, "wb") as file:
            spool = _Spool(file, limit)
            content_type, fields = await _receive(request, spool)
        if spool.size > limit:
            raise _too_large()
        meta = {
            "id": str(uuid.uuid4()),
            "content_type": content_type or "application/octet-stream",
            "cache_control": fields.get("cacheControl") or "3600",
            "size": spool.size,
            "etag": spool.md5.hexdigest(),
            "created_at": datetime.now(UTC).isoformat(),
        }
        if not await to_thread.run_sync(_commit, store, bucket, key, temp, meta, upsert):
            raise _duplicate()
    finally:
        await anyio.Path(temp).unlink(missing_ok=True)
    return JSONResponse({"Key": f"{bucket}/{key}", "Id": meta["id"]})


def _too_large() -> StorageFailure:
    return StorageFailure(413, "Payload too large", "The object exceeded the maximum allowed size")


class _Spool:
    """Counts and checksums what arrives; writes it while it fits under the limit."""

    def __init__(self, file: anyio.AsyncFile[bytes], limit: int) -> None:
        self.file = file
        self.limit = limit
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= self.limit:
            self.md5.update(data)
            await self.file.write(data)


async def _receive(request: Request, spool: _Spool) -> tuple[str | None, dict[str, str]]:
    """Stream the object into `spool`, from a multipart form (storage3, storage-js with a
    File) or a raw body (storage-js with a Blob). Returns its content type and form fields."""
    header = request.headers.get("content-type", "")
    drain_limit = 2 * spool.limit + _CHUNK
    if not header.lower().startswith("multipart/form-data"):
        async for chunk in request.stream():
            await spool.write(chunk)
            if spool.size > drain_limit:
                break
        return header or None, {}

    boundary = _params(header).get("boundary")
    if not boundary:
        raise StorageFailure(400, "Invalid Input", "multipart body without a boundary")
    parser = MultipartParser(boundary.encode("latin-1"))
    content_type: str | None = None
    fields: dict[str, str] = {}
    in_file = file_seen = False
    name, value = "", bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                in_file = not file_seen and (event.filename is not None or event.name == "file")
                file_seen = file_seen or in_file
                content_type = event.content_type if in_file else content_type
                name, value = event.name, bytearray()
            elif isinstance(event, PartEnd):
                if not in_file and name:
                    fields[name] = value.decode("utf-8", "replace")
                in_file = False
            elif in_file:
                await spool.write(event)
            elif len(value) < 8192:
                value += event[:8192]
        if received > drain_limit:
            break
    if spool.size <= spool.limit and not (parser.done and file_seen):
        raise StorageFailure(400, "Invalid Input", "The form has no complete file part")
    return content_type, fields


def _commit(
    store: Store, bucket: str, key: str, temp: Path, meta: dict[str, Any], upsert: bool
) -> bool:
    """Put the spooled file and its metadata in place, both or neither; False when the
    object exists and may not be overwritten."""
    target = store.object_path(bucket, key)
    meta_path = store.meta_path(bucket, key)
    _check_folders(store.root / "objects" / bucket, key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise _collision() from None
    if target.is_dir():
        raise _collision()
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    fd, meta_temp = tempfile.mkstemp(dir=store.root / "tmp")
    with os.fdopen(fd, "w") as file:
        json.dump(meta, file)
    try:
        if not upsert:
            try:
                os.link(temp, target)  # fails if the object exists: no check-then-write race
            except FileExistsError:
                return False
            os.replace(meta_temp, meta_path)
            return True
        # The metadata first: a reader meanwhile sees the old bytes with the new type at
        # worst, never an object without metadata.
        os.replace(meta_temp, meta_path)
        try:
            os.replace(temp, target)
        except (IsADirectoryError, NotADirectoryError) as exc:
            meta_path.unlink(missing_ok=True)
            raise _collision() from exc
    finally:
        Path(meta_temp).unlink(missing_ok=True)
    return True


def _check_folders(base: Path, key: str) -> None:
    """Every folder on the key's way must be a folder, not an object (`a/x` after `a`)."""
    path = base
    for part in key.split("/")[:-1]:
        path = path / part
        if path.exists() and not path.is_dir():
            raise _collision()


def _create_json(store: Store, path: Path, data: dict[str, Any]) -> bool:
    """Write `path` whole unless it exists; False when it does."""
    fd, temp = tempfile.mkstemp(dir=store.root / "tmp")
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(data, file)
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)
    return True


async def _meta(store: Store, bucket: str, key: str) -> dict[str, Any]:
    for path in (store.meta_path(bucket, key), store.legacy_meta_path(bucket, key)):
        try:
            meta: dict[str, Any] = json.loads(await anyio.Path(path).read_text())
            return meta
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
            continue
    return {}


async def public_download(store: Store, request: Request) -> Response:
    bucket, key = _target(request)
    if not (await _bucket(store, bucket)).get("public"):
        raise _no_bucket()  # Storage does not reveal private buckets to public readers
    return await _serve(store, request, bucket, key)


async def download(store: Store, request: Request) -> Response:
    _authorize(store, request)
    bucket, key = _target(request)
    await _bucket(store, bucket)
    return await _serve(store, request, bucket, key)


async def _serve(store: Store, request: Request, bucket: str, key: str) -> Response:
    """Stream the object from one open descriptor, so a concurrent overwrite cannot mix
    the length of one version with the bytes of another."""
    try:
        file = await anyio.open_file(store.object_path(bucket, key), "rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise _not_found() from None
    stat = await to_thread.run_sync(os.fstat, file.wrapped.fileno())
    meta = await _meta(store, bucket, key)
    headers = {
        "content-length": str(stat.st_size),
        "content-type": meta.get("content_type") or "application/octet-stream",
        "cache-control": f"max-age={meta.get('cache_control') or 3600}",
        "last-modified": formatdate(stat.st_mtime, usegmt=True),
        # Served as the type it was stored with, never as what a browser guesses.
        "x-content-type-options": "nosniff",
    }
    if meta.get("etag"):
        headers["etag"] = f'"{meta["etag"]}"'
    if request.method == "HEAD":
        await file.aclose()
        return Response(status_code=200, headers=headers)
    return StreamingResponse(_chunks(file), headers=headers)


async def _chunks(file: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    async with file:
        while chunk := await file.read(_CHUNK):
            yield chunk


async def object_info(store: Store, request: Request) -> Response:
    _authorize(store, request)
    bucket, key = _target(request)
    await _bucket(store, bucket)
    try:
        stat = await anyio.Path(store.object_path(bucket, key)).stat()
    except (FileNotFoundError, NotADirectoryError):
        raise _not_found() from None
    meta = await _meta(store, bucket, key)
    modified = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
    return JSONResponse(
        {
            "id": meta.get("id"),
            "name": key,
            "bucket_id": bucket,
            "size": stat.st_size,
            "content_type": meta.get("content_type"),
            "cache_control": meta.get("cache_control"),
            "etag": meta.get("etag"),
            "last_modified": modified,
            "created_at": meta.get("created_at", modified),
            "metadata": {},
        }
    )


async def list_objects(store: Store, request: Request) -> Response:
    """storage3's `list(path, options)`: the files and folders directly in `prefix`,
    in Storage's reply shape (a folder has no id and no metadata)."""
    _authorize(store, request)
    bucket = _bucket_id(request.path_params["bucket"])
    await _bucket(store, bucket)
    body = await _json_body(request)
    prefix = str(body.get("prefix") or "").strip("/")
    limit, offset = body.get("limit", 100), body.get("offset", 0)
    if not isinstance(limit, int) or not isinstance(offset, int) or limit < 0 or offset < 0:
        raise StorageFailure(400, "Invalid Input", "limit and offset must be integers >= 0")
    sort = body["sortBy"] if isinstance(body.get("sortBy"), dict) else {}
    search = str(body.get("search") or "")
    folder = store.root / "objects" / bucket
    if prefix:
        folder = folder / _object_key(prefix)
    entries = await to_thread.run_sync(_entries, folder, search)
    descending = str(sort.get("order", "asc")).lower() == "desc"
    entries.sort(key=lambda entry: entry[0], reverse=descending)
    listed = []
    for name, stat in entries[offset : offset + limit]:
        if stat is None:
            listed.append(dict.fromkeys(_LISTED, None) | {"name": name})
            continue
        key = f"{prefix}/{name}" if prefix else name
        meta = await _meta(store, bucket, key)
        modified = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
        listed.append(
            {
                "name": name,
                "id": meta.get("id"),
                "updated_at": modified,
                "created_at": meta.get("created_at", modified),
                "last_accessed_at": modified,
                "metadata": {
                    "eTag": f'"{meta.get("etag", "")}"',
                    "size": stat.st_size,
                    "mimetype": meta.get("content_type") or "application/octet-stream",
                    "cacheControl": f"max-age={meta.get('cache_control') or 3600}",
                    "lastModified": modified,
                    "contentLength": stat.st_size,
                    "httpStatusCode": 200,
                },
            }
        )
    return JSONResponse(listed)


_LISTED = ("name", "id", "updated_at", "created_at", "last_accessed_at", "metadata")


def _entries(folder: Path, search: str) -> list[tuple[str, os.stat_result | None]]:
    """(name, stat) of each file in `folder`, (name, None) of each subfolder."""
    try:
        children = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        (child.name, None if child.is_dir() else child.stat())
        for child in children
        if child.name.startswith(search)
    ]


async def remove_objects(store: Store, request: Request) -> Response:
    _authorize(store, request)
    bucket = _bucket_id(request.path_params["bucket"])
    await _bucket(store, bucket)
    prefixes = (await _json_body(request)).get("prefixes")
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise StorageFailure(400, "Invalid Input", "prefixes must be a list of keys")
    keys = [_object_key(prefix) for prefix in prefixes]
    removed = await to_thread.run_sync(_remove, store, bucket, keys)
    return JSONResponse([{"bucket_id": bucket, "name": key} for key in removed])


def _remove(store: Store, bucket: str, keys: list[str]) -> list[str]:
    removed = []
    for key in keys:
        try:
            store.object_path(bucket, key).unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        store.meta_path(bucket, key).unlink(missing_ok=True)
        store.legacy_meta_path(bucket, key).unlink(missing_ok=True)
        removed.append(key)
    return removed


# multipart/form-data, parsed as it streams (python-multipart is not a dependency).


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


class PartEnd:
    pass


_PART_END = PartEnd()


def _params(header: str) -> dict[str, str]:
    found = {}
    for match in _PARAM.finditer(header):
        quoted, bare = match.group(2), match.group(3)
        found[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
    return found


class MultipartParser:
    """Push parser: `feed(chunk)` returns, in order, `PartStart`, body bytes and `PartEnd`
    events. Keeps at most one delimiter's length of body bytes back between chunks."""

    def __init__(self, boundary: bytes, max_header_bytes: int = 16384) -> None:
        self._delimiter = b"\r\n--" + boundary
        # A leading CRLF lets the first boundary match the same delimiter as the rest.
        self._buffer = b"\r\n"
        self._state = "preamble"
        self._max_header_bytes = max_header_bytes

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[PartStart | PartEnd | bytes]:
        events: list[PartStart | PartEnd | bytes] = []
        buffer = self._buffer + data
        keep = len(self._delimiter) - 1
        while True:
            if self._state == "preamble":
                index = buffer.find(self._delimiter)
                if index < 0:
                    buffer = buffer[-keep:]
                    break
                buffer = buffer[index + len(self._delimiter) :]
                self._state = "boundary"
            elif self._state == "boundary":
                buffer = buffer.lstrip(b" \t")  # transport padding after a boundary
                if len(buffer) < 2:
                    break
                if buffer.startswith(b"--"):
                    self._state, buffer = "done", b""
                elif buffer.startswith(b"\r\n"):
                    self._state = "headers"  # keep the CRLF: it starts the header block
                else:
                    raise StorageFailure(400, "Invalid Input", "malformed multipart boundary")
            elif self._state == "headers":
                index = buffer.find(b"\r\n\r\n")
                if index < 0:
                    if len(buffer) > self._max_header_bytes:
                        raise StorageFailure(400, "Invalid Input", "multipart headers too long")
                    break
                events.append(_part_start(buffer[2:index]))
                buffer = buffer[index + 4 :]
                self._state = "body"
            elif self._state == "body":
                index = buffer.find(self._delimiter)
                if index < 0:
                    if len(buffer) > keep:
                        events.append(buffer[:-keep])
                        buffer = buffer[-keep:]
                    break
                if index:
                    events.append(buffer[:index])
                events.append(_PART_END)
                buffer = buffer[index + len(self._delimiter) :]
                self._state = "boundary"
            else:  # done: the epilogue is ignored
                buffer = b""
                break
        self._buffer = buffer
        return events


def _part_start(block: bytes) -> PartStart:
    headers = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    disposition = _params(headers.get("content-disposition", ""))
    return PartStart(
        name=disposition.get("name", ""),
        filename=disposition.get("filename"),
        content_type=headers.get("content-type") or None,
    )
