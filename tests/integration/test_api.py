"""The HTTP service over real HTTP on 127.0.0.1: the old clients' calls, auth refusals,
validation, the worker trigger, the cron path and the legacy endpoint."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from supabase import create_client

from tests.conftest import http_response, make_user
from tests.support.served import Served, serve_app
from tests.support.stack import Stack
from tests.support.tokens import JWT_SECRET, WORKER_SECRET

FLUX = "black-forest-labs/flux-schnell"


def rows(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    generations = conn.execute("select count(*) from image_generations").fetchone()
    jobs = conn.execute("select count(*) from job_queue").fetchone()
    assert generations is not None and jobs is not None
    return generations["count"], jobs["count"]


def wait_for_status(
    conn: psycopg.Connection[Any], generation_id: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "select * from image_generations where id = %s", (generation_id,)
        ).fetchone()
        assert row is not None
        if row["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


def test_supabase_client_starts_a_generation_that_completes(
    conn: psycopg.Connection[Any], served: Served
) -> None:
    user = make_user(conn)
    client = create_client(served.url, "anon-key-of-the-project")
    client.functions.set_auth(served.token(user))
    answer = client.functions.invoke(
        "start-generation", invoke_options={"body": {"prompt": "a lighthouse", "model_id": FLUX}}
    )
    body = answer if isinstance(answer, dict) else json.loads(answer)
    assert set(body) == {"success", "generation_id", "job_id", "status", "message"}
    assert body["success"] is True and body["status"] == "queued"
    assert body["message"] == "Image generation started. You will be notified when complete."
    job = conn.execute(
        "select created_by, job_type from job_queue where id = %s", (body["job_id"],)
    ).fetchone()
    assert job == {"created_by": user, "job_type": "generate-image"}

    generation = wait_for_status(conn, body["generation_id"])
    assert generation["status"] == "completed", generation["error_message"]
    image = conn.execute(
        "select * from images where generation_id = %s", (body["generation_id"],)
    ).fetchone()
    download = httpx.get(image["public_url"], timeout=10)
    assert download.status_code == 200 and len(download.content) == image["file_size"]


def test_cors_preflight_and_headers(served: Served) -> None:
    for name in ("start-generation", "process-jobs", "process-generation", "generate-image"):
        response = httpx.options(f"{served.url}/functions/v1/{name}")
        assert response.status_code == 200 and response.text == "ok"
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["access-control-allow-headers"] == (
            "authorization, x-client-info, apikey, content-type, idempotency-key"
        )
    refused = served.post("start-generation", {})
    assert refused.headers["access-control-allow-origin"] == "*"


def _rsa_public_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_auth_refusals_write_nothing(conn: psycopg.Connection[Any], served: Served) -> None:
    user = make_user(conn)
    now = int(time.time())
    unsigned = jwt.encode({"sub": str(user), "aud": "authenticated", "exp": now + 60}, "", "none")
    forged = {
        "no token": None,
        "expired": served.token(user, exp=now - 120, iat=now - 720),
        "wrong audience": served.token(user, aud="anon"),
        "wrong issuer": served.token(user, iss="https://evil.example/auth/v1"),
        "wrong key": jwt.encode(
            {
                "sub": str(user),
                "aud": "authenticated",
                "role": "authenticated",
                "exp": now + 60,
                "iss": served.issuer,
            },
            "another-secret-0123456789abcdef0123456789",
            "HS256",
        ),
        "alg none": unsigned,
        "HS/RS confusion": _hs_with_public_key(user, served.issuer, now),
        "garbage": "not.a.token",
    }
    for case, token in forged.items():
        response = served.post("start-generation", {"prompt": "x", "model_id": FLUX}, token)
        assert response.status_code == 401, case
        assert set(response.json()) == {"error"}, case
    assert rows(conn) == (0, 0)


def _hs_with_public_key(user: uuid.UUID, issuer: str, now: int) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-key"}).encode())
    payload = b64(
        json.dumps(
            {
                "sub": str(user),
                "aud": "authenticated",
                "role": "authenticated",
                "exp": now + 60,
                "iss": issuer,
            }
        ).encode()
    )
    signature = hmac.new(_rsa_public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_id": FLUX}, "prompt"),
        ({"prompt": "", "model_id": FLUX}, "prompt"),
        ({"prompt": "x" * 4001, "model_id": FLUX}, "prompt"),
        ({"prompt": "x"}, "model_id"),
        ({"prompt": "x", "model_id": "nobody/unknown"}, "model_id"),
        ({"prompt": "x", "model_id": FLUX, "width": "wide"}, "width"),
        ({"prompt": "x", "model_id": FLUX, "width": 64}, "width"),
        ({"prompt": "x", "model_id": FLUX, "height": 99999}, "height"),
        ({"prompt": "x", "model_id": FLUX, "num_inference_steps": 50}, "num_inference_steps"),
        ({"prompt": "x", "model_id": FLUX, "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "model_id": FLUX, "seed": -5}, "seed"),
        ({"prompt": 42, "model_id": FLUX}, "prompt"),
        (
            {"prompt": "x", "model_id": FLUX, "source_image_url": "https://example.com/a.png"},
            "source_image_url",
        ),
        (
            {
                "prompt": "x",
                "model_id": "black-forest-labs/flux-dev",
                "source_image_url": "https://example.com/a.png",
                "strength": 1.5,
            },
            "strength",
        ),
        (
            {
                "prompt": "x",
                "model_id": "black-forest-labs/flux-dev",
                "source_image_url": "file:///etc/passwd",
            },
            "source_image_url",
        ),
    ],
)
def test_validation_names_the_field_and_writes_nothing(
    conn: psycopg.Connection[Any], served: Served, body: dict[str, Any], field: str
) -> None:
    user = make_user(conn)
    response = served.post("start-generation", body, served.token(user))
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert field in response.json()["error"]
    assert rows(conn) == (0, 0)


def test_bad_bodies_are_400_not_500(conn: psycopg.Connection[Any], served: Served) -> None:
    token = served.token(make_user(conn))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for raw in (b"{", b"[]", b"null", b"\xff\xfe"):
        response = httpx.post(
            f"{served.url}/functions/v1/start-generation", content=raw, headers=headers
        )
        assert response.status_code == 400 and "error" in response.json()
    huge = httpx.post(
        f"{served.url}/functions/v1/start-generation",
        content=b"{" + b" " * 100_000 + b"}",
        headers=headers,
    )
    assert huge.status_code == 413 and "error" in huge.json()
    assert httpx.get(f"{served.url}/functions/v1/nothing-here").json() == {"error": "Not found"}
    assert httpx.delete(f"{served.url}/functions/v1/start-generation").status_code == 405
    assert rows(conn) == (0, 0)


def test_process_jobs_requires_the_secret_and_answers_at_once(
    conn: psycopg.Connection[Any], served: Served
) -> None:
    assert served.post("process-jobs", {}).status_code == 401
    assert served.post("process-jobs", {}, "wrong-secret").status_code == 401
    served.stack.configure_simulator(latency_seconds=3.0)
    user = make_user(conn)
    ids = [
        served.post(
            "start-generation", {"prompt": "x", "model_id": FLUX}, served.token(user)
        ).json()
        for _ in range(2)
    ]
    response = served.post("process-jobs", {}, WORKER_SECRET)
    # Answered while the claimed jobs run (each takes the simulator 3 s), not after.
    statuses = conn.execute(
        "select status from image_generations where id = any(%s)",
        ([started["generation_id"] for started in ids],),
    ).fetchall()
    assert {row["status"] for row in statuses} <= {"queued", "processing"}, statuses
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "processed", "errors", "message"}
    assert body["message"] == f"Processed {body['processed']} job(s) with {body['errors']} error(s)"
    for started_generation in ids:
        assert wait_for_status(conn, started_generation["generation_id"])["status"] == "completed"


def test_the_cron_command_gets_a_queued_job_processed(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack
) -> None:
    # Poll once a minute, no LISTEN: only the cron path can wake this runner in time.
    with serve_app(stack, listen_for_jobs=False, poll_interval_seconds=60) as served:
        time.sleep(0.5)  # the runner's first (empty) claim happens at start-up
        user = make_user(conn)
        generation = served.post(
            "start-generation", {"prompt": "x", "model_id": FLUX}, served.token(user)
        )
        generation_id = generation.json()["generation_id"]
        conn.execute("select imagegen.put_setting('worker_url', %s)", (served.url,))
        conn.execute("select imagegen.put_setting('worker_secret', %s)", (WORKER_SECRET,))
        command = "select public.invoke_worker()"  # what cron.job holds (see test_cron_sql)
        request_id = conn.execute(command).fetchone()["invoke_worker"]
        reply = http_response(conn, request_id)
        assert reply["status_code"] == 200 and '"processed":1' in reply["content"].replace(" ", "")
        assert wait_for_status(conn, generation_id)["status"] == "completed"


def test_legacy_generate_image_both_shapes(conn: psycopg.Connection[Any], served: Served) -> None:
    user = make_user(conn)
    token = served.token(user)
    plain = served.post("generate-image", {"prompt": "a cat", "model_id": FLUX}, token)
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert set(body) == {"success", "url", "format", "generation_time"} and body["format"] == "webp"
    assert httpx.get(body["url"]).status_code == 200

    # With a generation_id the images row is written and the generation completed.
    generation_id = conn.execute(
        "insert into image_generations (user_id, prompt, model, status) values (%s, 'a dog', 'flux-schnell', 'processing') returning id",
        (user,),
    ).fetchone()["id"]
    linked = served.post(
        "generate-image",
        {"prompt": "a dog", "model_id": FLUX, "generation_id": str(generation_id)},
        token,
    )
    assert linked.status_code == 200, linked.text
    body = linked.json()
    assert set(body) == {"success", "image", "generation_time"}
    assert body["image"]["generation_id"] == str(generation_id)
    assert httpx.get(body["image"]["public_url"]).status_code == 200
    status = conn.execute(
        "select status from image_generations where id = %s", (generation_id,)
    ).fetchone()
    assert status["status"] == "completed"
    refused = served.post("generate-image", {"prompt": "x", "model_id": FLUX}, None)
    assert refused.status_code == 401


def test_process_generation(served: Served) -> None:
    assert served.post("process-generation", {"prompt": "x", "model_id": FLUX}).status_code == 401
    ok = served.post(
        "process-generation",
        {"prompt": "x", "model_id": FLUX, "width": 1440, "height": 810},
        WORKER_SECRET,
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert set(body) == {
        "success",
        "output_url",
        "format",
        "width",
        "height",
        "generation_time_seconds",
    }
    assert body["height"] == 1024 and body["width"] > 1024  # 16:9 at 1024 on the short side
    bad = served.post("process-generation", {"prompt": "x"}, WORKER_SECRET)
    assert bad.status_code == 400 and "error" in bad.json()


def test_health_and_metrics(served: Served) -> None:
    health = httpx.get(f"{served.url}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": True, "runner": "running"}
    metrics = httpx.get(f"{served.url}/metrics").text
    for name in (
        "imagegen_queue_depth",
        "imagegen_jobs_finished_total",
        "imagegen_job_duration_seconds",
        "imagegen_claim_latency_seconds",
        "imagegen_jobs_in_flight",
        "imagegen_http_request_duration_seconds",
    ):
        assert name in metrics
    assert httpx.get(f"{served.url}/openapi.json").json()["paths"]


# Models named either way, and only their own version (upgrade issue, point 3)


def test_start_generation_takes_the_models_id_or_its_replicate_id(
    conn: psycopg.Connection[Any], served: Served
) -> None:
    user = make_user(conn)
    model = conn.execute("select id from models where replicate_id = %s", (FLUX,)).fetchone()
    for model_id in (str(model["id"]), FLUX):  # the web app sends the uuid
        answer = served.post(
            "start-generation", {"prompt": "a fox", "model_id": model_id}, served.token(user)
        )
        assert answer.status_code == 200, answer.text
        row = wait_for_status(conn, answer.json()["generation_id"])
        assert (row["status"], row["model_id"], row["model"]) == (
            "completed",
            model["id"],
            "flux-schnell",
        )


@pytest.mark.parametrize("endpoint", ["start-generation", "generate-image"])
def test_a_foreign_model_version_is_a_400_naming_the_field_and_writes_nothing(
    conn: psycopg.Connection[Any], served: Served, endpoint: str
) -> None:
    user = make_user(conn)
    sdxl = conn.execute("select version from models where name = 'sdxl'").fetchone()["version"]
    foreign = "0" * 64  # any other Replicate model, at any price
    for model_id, version in ((FLUX, foreign), ("stability-ai/sdxl", foreign), (FLUX, sdxl)):
        body = {"prompt": "x", "model_id": model_id, "model_version": version}
        response = served.post(endpoint, body, served.token(user))
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"}
        assert response.json()["error"].startswith("model_version")
    assert rows(conn) == (0, 0)
    assert served.stack.predictions_created() == 0
    own = {"prompt": "x", "model_id": "stability-ai/sdxl", "model_version": sdxl}
    assert served.post("start-generation", own, served.token(user)).status_code == 200


def test_the_legacy_path_takes_the_models_id(conn: psycopg.Connection[Any], served: Served) -> None:
    model = conn.execute("select id from models where replicate_id = %s", (FLUX,)).fetchone()
    body = {"prompt": "a cat", "model_id": str(model["id"])}
    answer = served.post("generate-image", body, served.token(make_user(conn)))
    assert answer.status_code == 200, answer.text
    assert answer.json()["format"] == "webp"


# The old cron's credential (upgrade issue, point 4)


def service_role_key(secret: str = JWT_SECRET, **claims: Any) -> str:
    """Shaped as a Supabase project's service-role key: no subject, no audience."""
    payload = {"iss": "supabase", "ref": "picture", "role": "service_role", "iat": 1756258955}
    payload |= {"exp": int(time.time()) + 10 * 365 * 86400} | claims
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


def test_process_jobs_accepts_the_service_role_key_the_old_cron_sends(
    conn: psycopg.Connection[Any], served: Served
) -> None:
    accepted = served.post("process-jobs", {}, service_role_key())
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["success"] is True
    user = make_user(conn)
    refused = [
        served.token(user),  # a signed-in user's token
        service_role_key(secret="another-projects-secret-0123456789abcdef"),
        service_role_key(exp=int(time.time()) - 3600),
        service_role_key(role="anon"),  # the anon key
        service_role_key(exp=None),
    ]
    for token in refused:
        response = served.post("process-jobs", {}, token)
        assert response.status_code == 401, token
        assert set(response.json()) == {"error"}
