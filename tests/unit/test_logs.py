"""One redactor (worker/logs.py: redact_text) with one marker, used by the log processor
and by the clients whose error texts may echo their own credentials."""

from __future__ import annotations

from storage3.exceptions import StorageApiError

from worker.logs import redact_text, register_secrets
from worker.storage import SupabaseStorage

MARK = "[redacted]"


def test_one_marker_for_every_kind_of_secret() -> None:
    register_secrets(["registered-secret-value"])
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = f"a registered-secret-value, a given-key, {jwt}, Bearer abc.def"
    assert redact_text(text, "given-key", None) == f"a {MARK}, a {MARK}, {MARK}, Bearer {MARK}"


async def test_storage_errors_redact_the_key_with_the_same_marker() -> None:
    key = "storage-service-key-echoed"
    storage = SupabaseStorage("http://127.0.0.1:9", key, "bucket", timeout=1)
    try:
        echoed = StorageApiError(f"bad key {key}", "Unauthorized", 403)
        error = storage._error("upload", "u/a.png", echoed)
    finally:
        await storage.aclose()
    assert key not in str(error)
    assert MARK in str(error)
