"""Idempotent submits over HTTP (sql/0110_idempotent_requests.sql): the same
`Idempotency-Key` sent to two API servers on one database at once starts one generation,
and both answer the same."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devstack.postgres import free_port
from tests.conftest import make_user
from tests.support import tokens
from tests.support.stack import Stack
from tests.support.tokens import JWT_SECRET
from tests.support.workers import spawn_api

FLUX = "black-forest-labs/flux-schnell"
BODY = {"prompt": "a lighthouse", "model_id": FLUX}
BATCH = {"prompts": [{"text": "a fox"}, {"text": "a hare"}], "shared_settings": {"model_id": FLUX}}


@pytest.fixture
def servers(stack: Stack, tmp_path: Path) -> Iterator[list[str]]:
    """Two API processes (`imagegen api`, each its own pool) on one database; API only: the
    generations stay queued, so the rows counted are the starts'."""
    # One client sends every request of the race at once: the per-client cap is lifted.
    settings = stack.settings(supabase_jwt_secret=JWT_SECRET, max_requests_in_flight_per_client=64)
    ports = [free_port(), free_port()]
    processes = []
    try:
        for n, port in enumerate(ports):
            processes.append(spawn_api(settings, port, tmp_path / f"api-{n}.log"))
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def post(url: str, name: str, token: str, body: Any, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{url}/functions/v1/{name}", json=body, headers=headers, timeout=30)


def token_for(stack: Stack, user: uuid.UUID) -> str:
    return tokens.hs256(tokens.claims(user, f"{stack.url}/auth/v1"))


def generations(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) as n from image_generations").fetchone()
    assert row is not None
    return int(row["n"])


def test_one_key_sent_to_two_servers_at_once_starts_one_generation(
    conn: psycopg.Connection[Any], stack: Stack, servers: list[str]
) -> None:
    user = make_user(conn)
    token = token_for(stack, user)
    keys = [f"submit-{n}" for n in range(20)]
    answers: dict[tuple[str, int], httpx.Response] = {}
    start = threading.Barrier(len(keys) * 2)

    def send(key: str, server: int) -> None:
        start.wait()
        answers[key, server] = post(servers[server], "start-generation", token, BODY, key)

    threads = [
        threading.Thread(target=send, args=(key, server)) for key in keys for server in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert generations(conn) == len(keys)
    for key in keys:
        first, second = answers[key, 0], answers[key, 1]
        assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
        assert first.json() == second.json()
        # One of the two started it, the other answered its answer again.
        replayed = sorted(str(r.headers.get("idempotent-replayed")) for r in (first, second))
        assert replayed == ["None", "true"]
    assert len({answers[key, 0].json()["generation_id"] for key in keys}) == len(keys)


def test_a_repeated_key_writes_nothing_and_another_body_is_a_422(
    conn: psycopg.Connection[Any], stack: Stack, servers: list[str]
) -> None:
    user = make_user(conn)
    token = token_for(stack, user)
    first = post(servers[0], "start-generation", token, BODY, "k1")
    again = post(servers[1], "start-generation", token, BODY | {"seed": None}, "k1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    other = post(servers[1], "start-generation", token, BODY | {"prompt": "a barn"}, "k1")
    assert other.status_code == 422
    assert other.json() == {"error": "Idempotency-Key was already used with a different request"}
    assert generations(conn) == 1
    # Without a key, each request starts its own, as before.
    post(servers[0], "start-generation", token, BODY, None)
    post(servers[0], "start-generation", token, BODY, None)
    assert generations(conn) == 3


def test_a_batch_with_a_key_is_started_once(
    conn: psycopg.Connection[Any], stack: Stack, servers: list[str]
) -> None:
    user = make_user(conn)
    token = token_for(stack, user)
    first = post(servers[0], "batch-generate", token, BATCH, "batch-1")
    again = post(servers[1], "batch-generate", token, BATCH, "batch-1")
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json()
    assert first.json()["batch"]["total_count"] == 2
    assert generations(conn) == 2
    other = post(servers[1], "batch-generate", token, BATCH | {"batch_name": "other"}, "batch-1")
    assert other.status_code == 422


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_a_400_and_starts_nothing(
    conn: psycopg.Connection[Any], stack: Stack, servers: list[str], key: str
) -> None:
    user = make_user(conn)
    headers = [
        (b"Authorization", f"Bearer {token_for(stack, user)}".encode()),
        (b"Content-Type", b"application/json"),
        (b"Idempotency-Key", key.encode("latin-1")),  # as a browser sends a non-ASCII one
    ]
    answer = httpx.post(
        f"{servers[0]}/functions/v1/start-generation",
        content=json.dumps(BODY).encode(),
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("Idempotency-Key: ")
    assert generations(conn) == 0


def test_browsers_may_send_the_header(servers: list[str]) -> None:
    preflight = httpx.options(f"{servers[0]}/functions/v1/start-generation", timeout=10)
    assert "idempotency-key" in preflight.headers["access-control-allow-headers"]
