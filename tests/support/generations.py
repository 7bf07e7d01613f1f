"""Generations started and finished in SQL, as the API and the worker call the functions."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]

SCHNELL = "black-forest-labs/flux-schnell"


def exact(arguments: dict[str, Any]) -> dict[str, Any]:
    """Floats as Decimal: the functions take numeric, which double precision does not reach."""
    return {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in arguments.items()}


def start(conn: Conn, user_id: uuid.UUID, **kwargs: Any) -> dict[str, Any]:
    """start_generation with named arguments; prompt and model_id have defaults here."""
    arguments = {"user_id": user_id, "prompt": "a lighthouse at dusk", "model_id": SCHNELL}
    arguments = exact(arguments | kwargs)
    names = ", ".join(f"p_{name} => %({name})s" for name in arguments)
    row = conn.execute(f"select * from start_generation({names})", arguments).fetchone()
    assert row is not None
    return row


def start_generation(
    conn: Conn, user_id: uuid.UUID, model_id: str, prompt: str | None = None, **params: Any
) -> uuid.UUID:
    """start(), its generation's id; the prompt names the model unless given."""
    prompt = prompt or f"a test image for {model_id}"
    row = start(conn, user_id, model_id=model_id, prompt=prompt, **params)
    return uuid.UUID(str(row["generation_id"]))


def finish(
    conn: Conn, generation_id: uuid.UUID, owner: uuid.UUID, **kwargs: Any
) -> list[dict[str, Any]]:
    """finish_generation with named arguments; the file lies at the owner's path."""
    arguments = {
        "generation_id": generation_id,
        "storage_path": f"{owner}/{generation_id}.webp",
        "public_url": f"https://cdn.test/generated-images/{owner}/{generation_id}.webp",
        "file_size": 12345,
        "width": 1024,
        "height": 768,
        "format": "webp",
    } | kwargs
    names = ", ".join(f"p_{name} => %({name})s" for name in arguments)
    return conn.execute(f"select * from finish_generation({names})", arguments).fetchall()
