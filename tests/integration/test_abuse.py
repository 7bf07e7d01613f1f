"""Abuse (issue 5, part 6): what an attacker can try against the running service.

Over real HTTP against the app, with a loopback stand-in for Supabase (JWKS with an EC
and an RSA key, Storage) and the Replicate simulator:
- forged tokens against every user endpoint, wrong worker secrets against the worker
  endpoints: 401 {"error"} and nothing written;
- cross-user reads, writes and cancels over HTTP and through RLS;
- oversized bodies and prompts;
- SSRF through source_image_url in every form we know, with a listener proving that
  nothing connects;
- every log line of a run with real secrets, scanned for them.
tests/integration/test_auth.py checks the verifier alone, tests/integration/test_source_image.py the fetch alone,
tests/sql/test_security_sql.py the grants: this file checks the assembled service.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

import worker.source_image
from devstack.simulator import SimulatorConfig
from tests.conftest import as_role, make_user
from tests.support.background_server import BackgroundServer
from tests.support.outbound import Listener, Outbound, keep_fetches_local
from tests.support.served import Served, error_body, traces
from tests.support.served import serve as served_stack
from tests.support.tokens import (
    EC_KEY,
    EC_KID,
    JWT_SECRET,
    RSA_KEY,
    RSA_KID,
    WORKER_SECRET,
    handmade,
)
from tests.support.torture import TortureReport
from worker.logs import configure_logging
from worker.source_image import is_public_address

Conn = psycopg.Connection[dict[str, Any]]
# HS512 with the project secret is one of the forgeries; PyJWT warns about its length.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

REPLICATE_TOKEN = "r8_abuse_replicate_token_0123456789"
FLUX = "black-forest-labs/flux-schnell"
FLUX_DEV = "black-forest-labs/flux-dev"  # takes a source image
USER_ENDPOINTS = [
    ("POST", "start-generation"),
    ("POST", "generate-image"),
    ("GET", "get-generation"),
]
WORKER_ENDPOINTS = [
    ("POST", "process-jobs"),
    ("GET", "process-jobs"),
    ("POST", "process-generation"),
]


def serve(
    database_url: str, tmp_path: Path, *, run_jobs: bool = False
) -> AbstractContextManager[Served]:
    """The app and its stack, with real-looking secrets for the log scan."""
    return served_stack(
        database_url,
        tmp_path / "storage",
        SimulatorConfig(latency_seconds=0.0),
        run_jobs=run_jobs,
        replicate_api_token=REPLICATE_TOKEN,
    )


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Served]:
    """No job runner: whatever changes in the database, a request wrote."""
    with serve(database_url, tmp_path) as running:
        yield running


# -- forged tokens and worker secrets


def _rsa_public_pem() -> bytes:
    return RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def forged_tokens(service: Served, user: uuid.UUID) -> dict[str, str | None]:
    """Authorization header values that must all be refused (None: no header)."""
    now = int(time.time())
    genuine = service.es256(user)
    header, _, signature = genuine.split(".")
    other_payload = service.es256(uuid.uuid4()).split(".")[1]
    hs_genuine = service.token(user)
    hs_header, _, hs_signature = hs_genuine.split(".")
    elevated = service.token(user, role="service_role").split(".")[1]
    stranger = ec.generate_private_key(ec.SECP256R1())
    bearer = {
        "alg none": handmade({"alg": "none", "typ": "JWT"}, service.claims(user), None),
        "alg none with kid": handmade({"alg": "none", "kid": EC_KID}, service.claims(user), None),
        "alg None": handmade({"alg": "None"}, service.claims(user), None),
        "HS256 signed with the RSA public key": handmade(
            {"alg": "HS256", "kid": RSA_KID}, service.claims(user), _rsa_public_pem()
        ),
        "HS256 with the wrong secret": jwt.encode(
            service.claims(user), "not-the-project-secret-0123456789abcdef", algorithm="HS256"
        ),
        "HS512 with the secret": jwt.encode(service.claims(user), JWT_SECRET, algorithm="HS512"),
        "RS256 claiming the EC kid": jwt.encode(
            service.claims(user), RSA_KEY, algorithm="RS256", headers={"kid": EC_KID}
        ),
        "ES256 by another key, same kid": service.es256(user, key=stranger),
        "ES256 with an unknown kid": service.es256(user, kid="not-a-kid"),
        "ES256 without kid": jwt.encode(service.claims(user), EC_KEY, algorithm="ES256"),
        "expired": service.es256(user, exp=now - 120, iat=now - 720),
        "expired (HS256)": service.token(user, exp=now - 120, iat=now - 720),
        "not yet valid (nbf)": service.es256(user, nbf=now + 600),
        "issued in the future (iat)": service.rs256(user, iat=now + 600),
        "no expiry": service.token(user, exp=None),
        "wrong audience": service.es256(user, aud="anon"),
        "no audience": service.es256(user, aud=None),
        "wrong issuer": service.es256(user, iss="https://evil.example/auth/v1"),
        "no issuer": service.token(user, iss=None),
        "anon role": service.token(user, role="anon"),
        "service_role role": service.rs256(user, role="service_role"),
        "subject not a uuid": service.token(user, sub="admin"),
        "tampered payload (ES256)": f"{header}.{other_payload}.{signature}",
        "tampered payload (HS256, role raised)": f"{hs_header}.{elevated}.{hs_signature}",
        "signature stripped": f"{header}.{genuine.split('.')[1]}.",
        "garbage": "not.a.token",
        "garbage base64": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA",
        "one segment": "abcdef",
        "huge": "a" * 20_000,
        "the worker secret": WORKER_SECRET,
        "the JWT secret": JWT_SECRET,
        "the service role key": service.stack.service_role_key,
    }
    headers: dict[str, str | None] = {name: f"Bearer {token}" for name, token in bearer.items()}
    headers |= {
        "no header": None,
        "empty header": "",
        "Bearer and nothing": "Bearer",
        "Basic scheme with a valid token": f"Basic {genuine}",
        "token without scheme": genuine,
    }
    return headers


@pytest.mark.torture
def test_forged_tokens_are_refused_everywhere_and_write_nothing(
    conn: Conn, service: Served, torture_report: TortureReport
) -> None:
    user = make_user(conn)
    generation_id = conn.execute(
        "select generation_id from start_generation(%s, 'mine', %s)", (user, FLUX)
    ).fetchone()["generation_id"]
    # The genuine tokens work, so the refusals below are about the forgery alone.
    for token in (service.es256(user), service.rs256(user), service.token(user)):
        answer = service.call(
            "GET", "get-generation", f"Bearer {token}", params={"id": str(generation_id)}
        )
        assert answer.status_code == 200, answer.text
    before = traces(conn)
    predictions = service.stack.predictions_created()
    cases = forged_tokens(service, user)
    refused = 0
    for case, header in cases.items():
        for method, name in USER_ENDPOINTS:
            params = {"id": str(generation_id)} if name == "get-generation" else None
            kwargs: dict[str, Any] = {"params": params} if params else {}
            if name == "generate-image":
                kwargs["json"] = {
                    "prompt": "x",
                    "model_id": FLUX,
                    "generation_id": str(generation_id),
                }
            response = service.call(method, name, header, **kwargs)
            assert response.status_code == 401, (case, name, response.text)
            message = error_body(response)
            if header and len(header) > 30:
                assert header.split()[-1][:40] not in message
            refused += 1
    assert traces(conn) == before
    assert service.stack.predictions_created() == predictions
    torture_report.record(
        "abuse: forged tokens x user endpoints", forgeries=len(cases), refused_401=refused
    )


@pytest.mark.torture
def test_worker_endpoints_need_the_exact_secret(
    conn: Conn, service: Served, torture_report: TortureReport
) -> None:
    user = make_user(conn)
    conn.execute("select * from start_generation(%s, 'queued', %s)", (user, FLUX))
    before = traces(conn)
    predictions = service.stack.predictions_created()
    wrong: dict[str, str | None] = {
        "no header": None,
        "empty": "",
        "secret without Bearer": WORKER_SECRET,
        "wrong secret": "Bearer not-the-worker-secret",
        "secret prefix": f"Bearer {WORKER_SECRET[:-1]}",
        "secret plus more": f"Bearer {WORKER_SECRET}x",
        "Basic scheme": f"Basic {WORKER_SECRET}",
        "a valid user token": f"Bearer {service.token(user)}",
        "the JWT secret": f"Bearer {JWT_SECRET}",
        "the service role key": f"Bearer {service.stack.service_role_key}",
        "the Replicate token": f"Bearer {REPLICATE_TOKEN}",
    }
    for case, header in wrong.items():
        for method, name in WORKER_ENDPOINTS:
            response = service.call(method, name, header)
            assert response.status_code == 401, (case, method, name, response.text)
            assert error_body(response) == "Missing or invalid worker secret"
    assert traces(conn) == before
    assert service.stack.predictions_created() == predictions
    assert service.call("POST", "process-jobs", f"Bearer {WORKER_SECRET}").status_code == 200
    torture_report.record(
        "abuse: wrong worker secrets", cases=len(wrong), endpoints=len(WORKER_ENDPOINTS)
    )


# -- cross-user access


def test_cross_user_reads_and_writes_over_http(conn: Conn, service: Served) -> None:
    alice, bob = make_user(conn), make_user(conn)
    bobs = conn.execute(
        "select generation_id from start_generation(%s, 'bob private prompt', %s)", (bob, FLUX)
    ).fetchone()["generation_id"]
    token = f"Bearer {service.token(alice)}"
    read = service.call("GET", "get-generation", token, params={"id": str(bobs)})
    assert read.status_code == 404 and error_body(read) == "Generation not found"
    assert "bob private prompt" not in read.text
    own = service.call(
        "GET", "get-generation", f"Bearer {service.token(bob)}", params={"id": str(bobs)}
    )
    assert own.status_code == 200 and own.json()["prompt"] == "bob private prompt"

    # The legacy endpoint completing someone else's generation: refused before any work.
    before, predictions = traces(conn), service.stack.predictions_created()
    for generation_id in (bobs, uuid.uuid4()):
        hijack = service.call(
            "POST",
            "generate-image",
            token,
            json={"prompt": "x", "model_id": FLUX, "generation_id": str(generation_id)},
        )
        assert hijack.status_code == 400 and "generation" in error_body(hijack).lower()
    assert traces(conn) == before
    assert service.stack.predictions_created() == predictions  # nobody paid for it
    assert not any(service.stack.storage_root.rglob(f"*{bobs}*"))


TABLES = {
    "image_generations": "id",
    "images": "id",
    "job_queue": "id",
}


def test_cross_user_access_through_rls(conn: Conn) -> None:
    """As PostgREST runs the apps' queries: each verb on each table, and the one function
    a user may call, against another user's rows."""
    alice, bob = make_user(conn), make_user(conn)
    started = conn.execute(
        "select * from start_generation(%s, 'bob secret', %s)", (bob, FLUX)
    ).fetchone()
    finished = conn.execute(
        "select * from start_generation(%s, 'bob done', %s)", (bob, FLUX)
    ).fetchone()
    # The legacy finish (no job): the job is done, the generation completes.
    conn.execute("select complete_job(%s)", (finished["job_id"],))
    image = conn.execute(
        "select * from finish_generation(%s, 'p', 'https://cdn.test/x', 1, 1, 1, 'webp')",
        (finished["generation_id"],),
    ).fetchone()
    bobs = {
        "image_generations": started["generation_id"],
        "images": image["id"],
        "job_queue": started["job_id"],
    }
    before = {
        table: conn.execute(f"select * from {table} where id = %s", (row_id,)).fetchone()
        for table, row_id in bobs.items()
    }
    for table, row_id in bobs.items():
        statements = [
            (f"select * from {table} where id = %s", "read"),
            (f"select * from {table}", "read"),
            (f"update {table} set created_at = now() where id = %s", "write"),
            (f"delete from {table} where id = %s", "write"),
        ]
        for sql, kind in statements:
            with as_role(conn, "authenticated", alice):
                try:
                    with conn.transaction():
                        cursor = conn.execute(sql, (row_id,) if "%s" in sql else None)
                        rows = cursor.fetchall() if kind == "read" else []
                        affected = cursor.rowcount
                except psycopg.errors.InsufficientPrivilege:
                    continue
                if kind == "read":
                    assert all(
                        row.get("user_id", row.get("created_by")) == alice for row in rows
                    ), sql
                else:
                    assert affected == 0, sql
    with as_role(conn, "authenticated", alice):
        cancelled = conn.execute(
            "select cancel_generation(%s) as ok", (started["generation_id"],)
        ).fetchone()
        assert cancelled == {"ok": False}
    after = {
        table: conn.execute(f"select * from {table} where id = %s", (row_id,)).fetchone()
        for table, row_id in bobs.items()
    }
    assert after == before
    # The owner can cancel, so the refusal above was about ownership.
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": str(bob), "role": "authenticated"}),),
        )
        assert conn.execute(
            "select cancel_generation(%s) as ok", (started["generation_id"],)
        ).fetchone() == {"ok": True}


# -- sizes


def test_oversized_bodies_and_prompts(conn: Conn, service: Served) -> None:
    user = make_user(conn)
    user_auth, worker_auth = f"Bearer {service.token(user)}", f"Bearer {WORKER_SECRET}"
    posts = [
        ("start-generation", user_auth),
        ("generate-image", user_auth),
        ("process-generation", worker_auth),
    ]
    before = traces(conn)
    big = json.dumps({"prompt": "x", "model_id": FLUX, "pad": "y" * (64 * 1024)}).encode()
    for name, auth in posts:
        headers = {"Content-Type": "application/json"}
        response = service.call("POST", name, auth, content=big, headers=headers)
        assert response.status_code == 413 and error_body(response), name

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield big[:1000]
            yield big[1000:]

        streamed = service.call("POST", name, auth, content=chunks(), headers=headers)
        assert streamed.status_code == 413 and error_body(streamed), name
        for field in ("prompt", "negative_prompt"):
            body = {"prompt": "x", "model_id": FLUX, field: "p" * 4001}
            response = service.call("POST", name, auth, json=body)
            assert response.status_code == 400 and field in error_body(response), (name, field)
    assert traces(conn) == before
    # The limits are exact: 4000 characters (of 4 bytes each, 16 KB) is fine.
    ok = service.call(
        "POST", "start-generation", user_auth, json={"prompt": "🦊" * 4000, "model_id": FLUX}
    )
    assert ok.status_code == 200, ok.text


# -- server-side request forgery


MAPPED_NAMES = {
    "loopback.attacker.test": "127.0.0.1",
    "private.attacker.test": "10.1.2.3",
    "metadata.attacker.test": "169.254.169.254",
    "v6loopback.attacker.test": "::1",
    "mixed.attacker.test": "93.184.216.34,192.168.0.10",  # one public, one private
}


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Outbound:
    return keep_fetches_local(monkeypatch, MAPPED_NAMES)


def ssrf_urls(port: int) -> dict[str, str]:
    """Every way we know to name an internal address; {port} is the listener's."""
    return {
        "loopback": f"http://127.0.0.1:{port}/a.png",
        "loopback elsewhere in 127/8": f"http://127.0.0.53:{port}/a.png",
        "localhost": f"http://localhost:{port}/a.png",
        "LOCALHOST with a dot": f"http://LOCALHOST.:{port}/a.png",
        "decimal": f"http://2130706433:{port}/a.png",
        "hex": f"http://0x7f000001:{port}/a.png",
        "octal": f"http://017700000001:{port}/a.png",
        "short form": f"http://127.1:{port}/a.png",
        "0.0.0.0": f"http://0.0.0.0:{port}/a.png",  # noqa: S104
        "IPv6 loopback": f"http://[::1]:{port}/a.png",
        "IPv6 unspecified": f"http://[::]:{port}/a.png",
        "IPv4-mapped loopback": f"http://[::ffff:127.0.0.1]:{port}/a.png",
        "IPv4-mapped loopback, hex": f"http://[::ffff:7f00:1]:{port}/a.png",
        "10/8": "http://10.0.0.1/a.png",
        "172.16/12": "http://172.16.5.4/a.png",
        "172.31": "http://172.31.255.254/a.png",
        "192.168/16": "http://192.168.1.1/a.png",
        "cloud metadata": "http://169.254.169.254/latest/meta-data/",
        "metadata, IPv4-mapped": "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "IPv6 link-local": "http://[fe80::1]/a.png",
        "IPv6 unique local": "http://[fc00::1]/a.png",
        "IPv6 unique local fd": "https://[fd12:3456::1]/a.png",
        "carrier-grade NAT": "http://100.64.0.1/a.png",
        "name -> 127.0.0.1": f"http://loopback.attacker.test:{port}/a.png",
        "name -> 10.1.2.3": "http://private.attacker.test/a.png",
        "name -> metadata": "http://metadata.attacker.test/latest/meta-data/",
        "name -> ::1": f"http://v6loopback.attacker.test:{port}/a.png",
        "name -> public and private": "http://mixed.attacker.test/a.png",
    }


def _process_generation(service: Served, url: str) -> httpx.Response:
    body = {"prompt": "x", "model_id": FLUX_DEV, "source_image_url": url, "strength": 0.5}
    return service.call("POST", "process-generation", f"Bearer {WORKER_SECRET}", json=body)


@pytest.mark.torture
def test_ssrf_targets_are_refused_before_connecting(
    conn: Conn,
    service: Served,
    listener: Listener,
    resolver: Outbound,
    torture_report: TortureReport,
) -> None:
    predictions = service.stack.predictions_created()
    urls = ssrf_urls(listener.port)
    for case, url in urls.items():
        response = _process_generation(service, url)
        assert response.status_code == 400, (case, response.text)
        assert response.json()["success"] is False
        assert "private or reserved" in error_body(response), (case, response.text)
    # Schemes other than http(s) never get past validation.
    for url in ("file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://127.0.0.1/a.png",
                "dict://127.0.0.1:11211/", "data:image/png;base64,AAAA", "//127.0.0.1/a.png"):  # fmt: skip
        response = _process_generation(service, url)
        assert response.status_code == 400 and "source_image_url" in error_body(response), url
    assert listener.hits == [], "a forged URL reached the listener"
    assert httpx.get(f"{listener.url}/control").status_code == 200  # it does listen
    assert listener.hits == ["127.0.0.1 /control"]
    listener.hits.clear()
    assert resolver.refused == [], f"tried to connect out: {resolver.refused}"
    assert service.stack.predictions_created() == predictions  # refused before Replicate
    torture_report.record(
        "abuse: SSRF forms via process-generation", urls=len(urls) + 6, reached=len(listener.hits)
    )


@pytest.fixture
def public_looking(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.2 that the address policy treats as public (every other
    address keeps the real policy): it redirects wherever ?to= says."""
    seen: list[str] = []
    allowed = ipaddress.ip_address("127.0.0.2")

    async def redirect(request: Request) -> Response:
        seen.append(request.query_params["to"])
        return RedirectResponse(request.query_params["to"], status_code=302)

    app = Starlette(routes=[Route("/redirect", redirect)])
    # The fetch's default policy, widened by exactly this one address.
    kwdefaults = worker.source_image.fetch_source_image.__kwdefaults__
    assert kwdefaults is not None
    monkeypatch.setitem(
        kwdefaults,
        "address_allowed",
        lambda address: address == allowed or is_public_address(address),
    )
    with BackgroundServer(app, host="127.0.0.2") as server:
        yield server.url, seen


@pytest.mark.torture
def test_redirects_to_internal_addresses_are_refused(
    conn: Conn,
    service: Served,
    listener: Listener,
    resolver: Outbound,
    public_looking: tuple[str, list[str]],
    torture_report: TortureReport,
) -> None:
    public, seen = public_looking
    targets = ssrf_urls(listener.port)
    for case, target in targets.items():
        response = _process_generation(service, f"{public}/redirect?to={target}")
        assert response.status_code == 400, (case, response.text)
        assert "private or reserved" in error_body(response), (case, response.text)
    for target in ("file:///etc/passwd", "gopher://127.0.0.1:70/x"):
        response = _process_generation(service, f"{public}/redirect?to={target}")
        assert response.status_code == 400 and "http:// or https://" in error_body(response)
    assert len(seen) == len(targets) + 2  # the redirecting server was reached every time
    assert listener.hits == [], "a redirect reached the listener"
    assert resolver.refused == [], f"tried to connect out: {resolver.refused}"
    torture_report.record(
        "abuse: SSRF via redirects", redirects=len(seen), reached=len(listener.hits)
    )


def test_ssrf_through_the_queue_fails_the_generation(
    conn: Conn, database_url: str, tmp_path: Path, listener: Listener, resolver: Outbound
) -> None:
    """The asynchronous path: start-generation accepts the URL (it is http), the job
    refuses it and the generation fails with the reason, never retried."""
    user = make_user(conn)
    with serve(database_url, tmp_path, run_jobs=True) as service:
        token = f"Bearer {service.token(user)}"
        ids = []
        for url in (f"http://2130706433:{listener.port}/a.png", "http://169.254.169.254/"):
            body = {"prompt": "x", "model_id": FLUX_DEV, "source_image_url": url}
            started = service.call("POST", "start-generation", token, json=body)
            assert started.status_code == 200, started.text
            ids.append(started.json()["generation_id"])
        deadline = time.monotonic() + 30
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = conn.execute(
                "select g.status, g.error_message, j.attempts from image_generations g"
                " join job_queue j on j.payload ->> 'generation_id' = g.id::text"
                " where g.id = any(%s::uuid[])",
                (ids,),
            ).fetchall()
            if all(row["status"] == "failed" for row in rows):
                break
            time.sleep(0.1)
        assert [row["status"] for row in rows] == ["failed", "failed"], rows
        assert all("private or reserved" in row["error_message"] for row in rows), rows
        assert all(row["attempts"] == 1 for row in rows), rows
    assert listener.hits == [] and resolver.refused == []


# -- secrets in logs

_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}")


@pytest.fixture
def captured_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The production log setup (JSON lines) writing into a buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging("debug", "json")
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


def test_no_secret_reaches_the_logs(
    conn: Conn,
    database_url: str,
    tmp_path: Path,
    listener: Listener,
    resolver: Outbound,
    captured_logs: io.StringIO,
    caplog: pytest.LogCaptureFixture,
    torture_report: TortureReport,
) -> None:
    caplog.set_level("DEBUG")
    user = make_user(conn)
    tokens: list[str] = []
    with serve(database_url, tmp_path, run_jobs=True) as service:
        token = service.token(user)
        tokens += [token, service.es256(user), service.rs256(user)]
        auth = f"Bearer {token}"
        ok = service.call("POST", "start-generation", auth)
        assert ok.status_code == 200
        service.call("GET", "get-generation", auth, params={"id": ok.json()["generation_id"]})
        service.call("POST", "generate-image", f"Bearer {tokens[1]}")
        # Failures are what gets logged: refused tokens, a failing model, SSRF, a dead
        # generation id, a prompt carrying a token, a database error.
        for forged in forged_tokens(service, user).values():
            service.call("POST", "start-generation", forged)
        service.stack.configure_simulator(fail_prompts=["explode"])
        failing = {"prompt": f"explode {token}", "model_id": FLUX}
        service.call("POST", "start-generation", auth, json=failing)
        service.call("POST", "generate-image", auth, json=failing)
        service.call("POST", "process-generation", f"Bearer {WORKER_SECRET}", json=failing)
        _process_generation(service, f"http://127.0.0.1:{listener.port}/?token={token}")
        service.call(
            "POST",
            "generate-image",
            auth,
            json={"prompt": "x", "model_id": FLUX, "generation_id": str(uuid.uuid4())},
        )
        service.call("POST", "process-jobs", f"Bearer {WORKER_SECRET}", params={"wait": "1"})
        service.call("POST", "process-jobs", f"Bearer {token}")
        time.sleep(1.0)  # the runner's lines
    logs = captured_logs.getvalue() + "\n".join(record.getMessage() for record in caplog.records)
    assert len(logs.splitlines()) >= 5, logs  # the run did log
    assert "failed" in logs
    secrets = {
        "user token": tokens,
        "service role key": [service.stack.service_role_key],
        "Replicate token": [REPLICATE_TOKEN],
        "worker secret": [WORKER_SECRET],
        "JWT secret": [JWT_SECRET],
    }
    for what, values in secrets.items():
        for value in values:
            assert value not in logs, f"the {what} is in the logs"
            assert value[:24] not in logs, f"part of the {what} is in the logs"
    assert _JWT_SHAPE.findall(logs) == [], "a JWT-shaped string is in the logs"
    torture_report.record(
        "abuse: secrets in logs",
        lines=len(logs.splitlines()),
        secrets=sum(map(len, secrets.values())),
    )
