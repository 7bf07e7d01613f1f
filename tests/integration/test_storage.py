"""SupabaseStorage (storage3 underneath) against the local Storage server, over real HTTP."""

from __future__ import annotations

import io
import random
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from storage3 import AsyncStorageClient
from storage3.exceptions import StorageApiError

from devstack.postgres import free_port
from devstack.storage import MultipartParser, PartEnd, PartStart, create_storage_app
from tests.support.background_server import BackgroundServer
from worker.storage import StorageError, SupabaseStorage

KEY = "storage-test-service-key"
BUCKET = "generated-images"
LIMIT = 64 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def server(root: Path) -> Iterator[BackgroundServer]:
    storage = create_storage_app(root, KEY, buckets=[BUCKET], max_bytes=LIMIT)
    # Mounted where the main app mounts it, so URLs look like Supabase's.
    with BackgroundServer(Starlette(routes=[Mount("/storage/v1", storage)])) as background:
        yield background


@pytest.fixture
async def storage(server: BackgroundServer) -> AsyncIterator[SupabaseStorage]:
    client = SupabaseStorage(server.url, KEY, BUCKET, timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def raw(server: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{server.url}/storage/v1", timeout=5) as client:
        yield client


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "apikey": key}


async def upload_error(
    url: str, *, key: str = KEY, bucket: str = BUCKET, seconds: float = 5
) -> StorageError:
    """The StorageError a one-byte upload through a fresh client ends with."""
    client = SupabaseStorage(url, key, bucket, timeout=seconds)
    try:
        with pytest.raises(StorageError) as failed:
            await client.upload("u/x.png", io.BytesIO(b"x"), "image/png")
    finally:
        await client.aclose()
    return failed.value


async def test_upload_upserts_and_serves_public_bytes(
    storage: SupabaseStorage, server: BackgroundServer
) -> None:
    path = "user-1/generation-1.webp"
    first, second = b"RIFF....WEBPVP8 " + bytes(range(256)) * 10, b"\x89PNG\r\n\x1a\n" * 500
    with tempfile.TemporaryFile() as spool:  # what the download job hands over
        spool.write(first)
        spool.seek(0)
        await storage.upload(path, spool, "image/webp")
    url = storage.public_url(path)
    assert url == f"{server.url}/storage/v1/object/public/{BUCKET}/{path}"
    async with httpx.AsyncClient(timeout=5) as client:
        reply = await client.get(url)
        assert reply.status_code == 200
        assert reply.content == first
        assert reply.headers["content-type"] == "image/webp"

        with tempfile.NamedTemporaryFile(suffix=".png") as named:
            named.write(second)
            named.flush()
            await storage.upload(path, Path(named.name), "image/png")
        reply = await client.get(url)
        assert reply.content == second
        assert reply.headers["content-type"] == "image/png"

        head = await client.head(url)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(second))
        assert head.content == b""
    assert await storage.exists(path)
    assert not await storage.exists("user-1/missing.webp")


async def test_in_memory_stream_uploads(storage: SupabaseStorage) -> None:
    await storage.upload("u/a.jpeg", io.BytesIO(b"\xff\xd8\xff" + b"x" * 100), "image/jpeg")
    assert await storage.exists("u/a.jpeg")


async def test_duplicate_without_upsert_is_refused(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        client = AsyncStorageClient(f"{server.url}/storage/v1/", auth(), http_client=http)
        bucket = client.from_(BUCKET)
        await bucket.upload("u/once.png", b"first", {"content-type": "image/png"})
        with pytest.raises(StorageApiError) as refused:
            await bucket.upload("u/once.png", b"second", {"content-type": "image/png"})
        assert (str(refused.value.status), refused.value.code) == ("409", "Duplicate")
        assert await bucket.download("u/once.png") == b"first"

        await bucket.remove(["u/once.png"])
        assert not await bucket.exists("u/once.png")


async def test_buckets(server: BackgroundServer, raw: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        client = AsyncStorageClient(f"{server.url}/storage/v1/", auth(), http_client=http)
        assert (await client.get_bucket(BUCKET)).public is True
        await client.create_bucket("private", options={"public": False})
        assert (await client.get_bucket("private")).public is False
        with pytest.raises(StorageApiError):
            await client.create_bucket("private")
        with pytest.raises(StorageApiError):
            await client.get_bucket("nope")
        await client.from_("private").upload("a.png", b"png", {"content-type": "image/png"})
    assert (await raw.get("/object/public/private/a.png")).status_code == 404
    authenticated = await raw.get("/object/authenticated/private/a.png", headers=auth())
    assert authenticated.content == b"png"


async def test_raw_body_upload_keeps_its_content_type(raw: httpx.AsyncClient) -> None:
    reply = await raw.post(
        f"/object/{BUCKET}/u/raw.svg",
        content=b"<svg/>",
        headers={**auth(), "content-type": "image/svg+xml"},
    )
    assert reply.status_code == 200
    assert reply.json()["Key"] == f"{BUCKET}/u/raw.svg"
    public = await raw.get(f"/object/public/{BUCKET}/u/raw.svg")
    assert (public.content, public.headers["content-type"]) == (b"<svg/>", "image/svg+xml")


async def test_wrong_key_is_refused_without_leaking_it(server: BackgroundServer) -> None:
    wrong = "the-wrong-secret-key"
    refused = await upload_error(server.url, key=wrong)
    assert refused.retryable is False
    assert wrong not in str(refused)
    assert "403" in str(refused)


async def test_uploads_need_the_key(raw: httpx.AsyncClient) -> None:
    reply = await raw.post(f"/object/{BUCKET}/u/x.png", content=b"x")
    assert reply.status_code == 401
    assert reply.json()["error"] == "Unauthorized"
    reply = await raw.get(f"/object/{BUCKET}/u/x.png")
    assert reply.status_code == 401


@pytest.mark.parametrize(
    "key",
    ["%2E%2E/%2E%2E/escaped.png", "a/%2E%2E/%2E%2E/%2E%2E/escaped.png", "/abs.png", "a%00b.png",
     "a%5C..%5Cb.png", "a/%2E/b.png", "a//b.png"],
)  # fmt: skip
async def test_path_traversal_is_refused(raw: httpx.AsyncClient, root: Path, key: str) -> None:
    reply = await raw.post(
        f"/object/{BUCKET}/{key}", content=b"x", headers={**auth(), "content-type": "image/png"}
    )
    assert reply.status_code == 400, reply.text
    assert not list(root.parent.rglob("escaped.png"))
    assert (await raw.get(f"/object/public/{BUCKET}/{key}")).status_code == 400


async def test_client_side_traversal_is_a_permanent_error(storage: SupabaseStorage) -> None:
    with pytest.raises(StorageError) as refused:
        await storage.upload("../escaped.png", io.BytesIO(b"x"), "image/png")
    assert refused.value.retryable is False


async def test_size_cap(storage: SupabaseStorage) -> None:
    with pytest.raises(StorageError) as refused:
        await storage.upload("u/big.png", io.BytesIO(b"x" * (LIMIT + 1)), "image/png")
    assert refused.value.retryable is False
    assert "413" in str(refused.value)
    assert not await storage.exists("u/big.png")
    await storage.upload("u/fits.png", io.BytesIO(b"x" * (LIMIT - 1024)), "image/png")


async def test_timeout_is_retryable() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        failed = await upload_error(f"http://{host}:{port}", seconds=0.3)
    assert failed.retryable is True
    assert "timed out" in str(failed)


async def test_unreachable_and_5xx_are_retryable() -> None:
    assert (await upload_error(f"http://127.0.0.1:{free_port()}")).retryable is True

    def unavailable(request: object) -> JSONResponse:
        body = {"statusCode": "503", "error": "Unavailable", "message": "try later"}
        return JSONResponse(body, status_code=503)

    app = Starlette(routes=[Route("/{rest:path}", unavailable, methods=["POST"])])
    with BackgroundServer(app) as down:
        failed = await upload_error(down.url)
    assert failed.retryable is True
    assert "503" in str(failed)


def test_multipart_parser_survives_any_chunking() -> None:
    boundary = b"b0undary"
    payload = bytes(random.Random(7).randrange(256) for _ in range(3000)) + b"\r\n--b0undar"
    body = (
        b"preamble\r\n--b0undary\r\n"
        b'Content-Disposition: form-data; name="cacheControl"\r\n\r\n3600\r\n'
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + payload + b"\r\n--b0undary--\r\nepilogue"
    )
    rng = random.Random(1)
    for _ in range(50):
        parser, events, at = MultipartParser(boundary), [], 0
        while at < len(body):
            step = rng.choice([1, 2, 7, 13, 64, 1000])
            events += parser.feed(body[at : at + step])
            at += step
        assert parser.done
        starts = [e for e in events if isinstance(e, PartStart)]
        assert [(s.name, s.filename, s.content_type) for s in starts] == [
            ("cacheControl", None, None),
            ("file", "x.png", "image/png"),
        ]
        parts: list[bytes] = []
        for event in events:
            if isinstance(event, PartStart):
                parts.append(b"")
            elif not isinstance(event, PartEnd):
                parts[-1] += event
        assert parts == [b"3600", payload]


async def test_large_upload_streams_intact(tmp_path: Path) -> None:
    app = create_storage_app(tmp_path / "big", KEY, buckets=[BUCKET])
    data = random.Random(3).randbytes(3 * 1024 * 1024 + 17)
    with BackgroundServer(Starlette(routes=[Mount("/storage/v1", app)])) as background:
        client = SupabaseStorage(background.url, KEY, BUCKET, timeout=10)
        try:
            with tempfile.TemporaryFile() as spool:
                spool.write(data)
                await client.upload("u/big.webp", spool, "image/webp")
            async with httpx.AsyncClient(timeout=10) as http:
                reply = await http.get(client.public_url("u/big.webp"))
        finally:
            await client.aclose()
    assert reply.content == data
    assert not list((tmp_path / "big" / "tmp").iterdir())  # no temporary file left behind


async def test_missing_bucket(tmp_path: Path) -> None:
    strict = create_storage_app(tmp_path / "strict", KEY, auto_create_buckets=False)
    relaxed = create_storage_app(tmp_path / "relaxed", KEY)  # the embedded default's way
    app = Starlette(routes=[Mount("/strict/storage/v1", strict), Mount("/storage/v1", relaxed)])
    with BackgroundServer(app) as background:
        refused = await upload_error(f"{background.url}/strict", bucket="fresh")
        assert (refused.retryable, "Bucket not found" in str(refused)) == (False, True)
        created = SupabaseStorage(background.url, KEY, "fresh", timeout=5)
        try:
            await created.upload("u/a.png", io.BytesIO(b"a"), "image/png")
            async with httpx.AsyncClient(timeout=5) as http:
                assert (await http.get(created.public_url("u/a.png"))).content == b"a"
        finally:
            await created.aclose()


async def test_without_a_configured_key_nobody_writes(tmp_path: Path) -> None:
    app = create_storage_app(tmp_path / "keyless", "")
    with BackgroundServer(Starlette(routes=[Mount("/storage/v1", app)])) as background:
        refused = await upload_error(background.url, key="any-key")
        assert (refused.retryable, "403" in str(refused)) == (False, True)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(("first", "second"), [("a", "a/x"), ("a/x", "a"), ("a/b", "a/b/c/d")])
@pytest.mark.parametrize("upsert", ["true", "false"])
async def test_a_key_and_a_folder_of_one_name_collide_cleanly(
    server: BackgroundServer, root: Path, first: str, second: str, upsert: str
) -> None:
    """The second upload is a 4xx JSON error and leaves nothing; both still read back."""
    async with httpx.AsyncClient(timeout=5) as http:
        bucket = AsyncStorageClient(f"{server.url}/storage/v1/", auth(), http_client=http).from_(
            BUCKET
        )
        options = {"content-type": "image/png", "x-upsert": upsert}
        await bucket.upload(first, b"first", options)  # type: ignore[arg-type]
        before = _files(root)
        with pytest.raises(StorageApiError) as refused:
            await bucket.upload(second, b"second", options)  # type: ignore[arg-type]
        assert 400 <= int(refused.value.status) < 500, refused.value
        assert _files(root) == before  # nothing written: no object without metadata
        assert await bucket.download(first) == b"first"
        reply = await http.get(f"{server.url}/storage/v1/object/public/{BUCKET}/{second}")
        assert reply.status_code == 404 and reply.json()["error"] == "not_found"
        info = await http.get(
            f"{server.url}/storage/v1/object/info/{BUCKET}/{first}", headers=auth()
        )
        assert info.json()["content_type"] == "image/png"


async def test_metadata_never_collides_with_a_key(server: BackgroundServer) -> None:
    """`a`'s metadata once lived at `a.json`, the folder `a.json/x` needs."""
    async with httpx.AsyncClient(timeout=5) as http:
        bucket = AsyncStorageClient(f"{server.url}/storage/v1/", auth(), http_client=http).from_(
            BUCKET
        )
        await bucket.upload("a", b"a", {"content-type": "image/png"})
        await bucket.upload("a.json/x", b"x", {"content-type": "image/webp"})
        for key, content_type in (("a", "image/png"), ("a.json/x", "image/webp")):
            reply = await http.get(f"{server.url}/storage/v1/object/public/{BUCKET}/{key}")
            assert reply.headers["content-type"] == content_type


async def test_list_lists_and_uploads_nothing(server: BackgroundServer, root: Path) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        client = AsyncStorageClient(f"{server.url}/storage/v1/", auth(), http_client=http)
        bucket = client.from_(BUCKET)
        await bucket.upload("u1/b.png", b"bb", {"content-type": "image/png"})
        await bucket.upload("u1/a.webp", b"a", {"content-type": "image/webp"})
        await bucket.upload("u1/sub/c.png", b"c", {"content-type": "image/png"})
        listed = await bucket.list("u1")
        assert [entry["name"] for entry in listed] == ["a.webp", "b.png", "sub"]
        a, _b, sub = listed
        assert a["id"] and a["metadata"]["mimetype"] == "image/webp"
        assert a["metadata"]["size"] == 1
        assert sub["id"] is None and sub["metadata"] is None
        assert [e["name"] for e in await bucket.list()] == ["u1"]
        assert [e["name"] for e in await bucket.list("u1", {"limit": 1, "offset": 1})] == ["b.png"]
        assert [e["name"] for e in await bucket.list("u1", {"search": "b"})] == ["b.png"]
        assert await bucket.list("nobody") == []
        assert [b.name for b in await client.list_buckets()] == [BUCKET]  # no bucket "list"
    assert not (root / "objects" / "list").exists()


async def test_stored_objects_are_served_nosniff(raw: httpx.AsyncClient) -> None:
    upload = await raw.post(
        f"/object/{BUCKET}/u/x.svg",
        content=b"<svg/>",
        headers=auth() | {"Content-Type": "image/svg+xml"},
    )
    assert upload.status_code == 200
    for path in (f"/object/public/{BUCKET}/u/x.svg", f"/object/{BUCKET}/u/x.svg"):
        reply = await raw.get(path, headers=auth())
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["content-type"] == "image/svg+xml"
