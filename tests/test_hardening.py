"""Hardening (issue 13): what an attacker and a crash found, each point replayed.

Over real HTTP against the assembled service (tests.test_abuse's loopback stand-ins)
unless a point concerns one part alone (the storage stand-in, the simulator).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

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
