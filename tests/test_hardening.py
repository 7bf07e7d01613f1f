"""Hardening (issue 13): what an attacker and a crash found, each point replayed.

Over real HTTP against the assembled service (tests.test_abuse's loopback stand-ins)
unless a point concerns one part alone (the storage stand-in, the simulator).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from api.app import create_app
from api.background_server import BackgroundServer
from api.dev import DevState, dev_settings, dev_simulator
from tests.conftest import make_user
from tests.test_abuse import FLUX, Service, error_body, serve, snapshot

Conn = psycopg.Connection[dict[str, Any]]
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    """No job runner: whatever changes in the database, a request wrote."""
    yield from serve(database_url, tmp_path)


# -- 1. bodies that do not parse


def test_every_unparsable_body_is_a_400_naming_the_problem(conn: Conn, service: Service) -> None:
    auth = f"Bearer {service.hs256(make_user(conn))}"
    fine = {"prompt": "a cat", "model_id": FLUX}
    bodies = {
        b"[" * 1500: "nests more than",
        b'{"prompt": ' + b"[" * 40 + b"]" * 40 + b', "model_id": "x"}': "nests more than",
        b'{"prompt": "a cat", "x": ' + b'{"a":' * 33 + b"1" + b"}" * 33 + b"}": "nests more",
        b"\xff\xfe{}": "UTF-8",
        b'{"prompt": "a cat", "model_id": "x", "seed": NaN}': "NaN",
        b'{"prompt": "a cat", "seed": ' + b"9" * 5000 + b"}": "digits",
        b'{"prompt": "a cat",}': "must be JSON",
        b'{"prompt": "a cat"': "must be JSON",
        b'"just a string"': "JSON object",
        b"[]": "JSON object",
    }
    before = snapshot(conn)
    for body, problem in bodies.items():
        for name in ("start-generation", "generate-image"):
            response = service.call(
                "POST", name, auth, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (body[:40], response.text)
            assert problem in error_body(response), (body[:40], response.text)
    assert snapshot(conn) == before
    # Brackets inside strings are text, however many; the depth a body needs still passes.
    deep_text = fine | {"prompt": "[" * 2000, "extra": {"a": [[1]]}}
    assert service.call("POST", "start-generation", auth, json=deep_text).status_code == 200


# -- 7. prompts that only look like text


@pytest.mark.parametrize(
    "prompt",
    ["\u00a0\u00a0", "\u200b", "\ufeff", "\x01\x02\x7f", "\u200b \u00a0\ufeff\u2060\u3000"],
)
def test_blank_looking_prompts_are_refused_at_the_door(
    conn: Conn, service: Service, prompt: str
) -> None:
    auth = f"Bearer {service.hs256(make_user(conn))}"
    before = snapshot(conn)
    for name in ("start-generation", "generate-image"):
        response = service.call("POST", name, auth, json={"prompt": prompt, "model_id": FLUX})
        assert response.status_code == 400, (name, response.text)
        assert "prompt" in error_body(response)
    assert snapshot(conn) == before
    visible = service.call(
        "POST", "start-generation", auth, json={"prompt": f"{prompt}a cat", "model_id": FLUX}
    )
    assert visible.status_code == 200, visible.text


# -- 5. the dev simulator


def test_the_dev_simulator_takes_only_its_token_and_the_dev_secret(tmp_path: Path) -> None:
    state = DevState.load(tmp_path)
    settings = dev_settings(
        state, host="127.0.0.1", port=8000, database_url="postgresql:///x", worker_id="w"
    )
    token = settings.replicate_api_token
    assert token is not None
    app = Starlette(routes=[Mount("/replicate", dev_simulator(settings, state))])
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        right = {"Authorization": f"Bearer {token.get_secret_value()}"}
        created = http.post(
            "/replicate/v1/models/black-forest-labs/flux-schnell/predictions",
            json={"input": {"prompt": "a private prompt", "aspect_ratio": "1:1"}},
            headers=right,
        )
        assert created.status_code == 201, created.text
        prediction = created.json()["id"]
        for bearer in ("anything", state.worker_secret, "r8_" + "x" * 37):
            wrong = {"Authorization": f"Bearer {bearer}"}
            for method, path in [
                ("GET", "/replicate/v1/predictions"),
                ("GET", f"/replicate/v1/predictions/{prediction}"),
                ("POST", f"/replicate/v1/predictions/{prediction}/cancel"),
            ]:
                response = http.request(method, path, headers=wrong)
                assert response.status_code == 401, (bearer, path, response.text)
        assert http.get("/replicate/v1/predictions", headers=right).json()["results"]

        secret = {"Authorization": f"Bearer {state.worker_secret}"}
        override = json.dumps({"output_override": "http://169.254.169.254/latest/meta-data"})
        for headers in ({}, right, {"Authorization": "Bearer anything"}):
            for method, path in [
                ("GET", "/replicate/_simulator/stats"),
                ("POST", "/replicate/_simulator/reset"),
                ("GET", "/replicate/_simulator/config"),
            ]:
                assert http.request(method, path, headers=headers).status_code == 401, path
            posted = http.post(
                "/replicate/_simulator/config",
                content=override,
                headers=headers | {"Content-Type": "application/json"},
            )
            assert posted.status_code == 401
        # What a web page can send without a preflight: text/plain, even with the secret.
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            posted = http.post(
                "/replicate/_simulator/config",
                content=override,
                headers=secret | ({"Content-Type": content_type} if content_type else {}),
            )
            assert posted.status_code == 415, (content_type, posted.text)
        config = http.get("/replicate/_simulator/config", headers=secret).json()
        assert config["output_override"] is None
        assert http.get("/replicate/_simulator/stats", headers=secret).status_code == 200


def test_serve_never_mounts_the_simulator() -> None:
    assert "simulator" not in inspect.signature(create_app).parameters
