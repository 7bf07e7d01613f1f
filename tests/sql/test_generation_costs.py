"""Where the money goes (sql/0121_generation_costs.sql): the provider's figures and the
estimated cost on each generation, and the operators' view of them."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import make_user
from tests.support.generations import SCHNELL

Conn = psycopg.Connection[dict[str, Any]]
FIGURES = {
    "prediction_id": "pred-1",
    "status": "succeeded",
    "metrics": {"predict_time": 1.25, "total_time": 1.5},
    "history": [
        {"status": "starting", "at": "2026-12-03T10:00:00Z"},
        {"status": "processing", "at": "2026-12-03T10:00:00.25Z"},
        {"status": "succeeded", "at": "2026-12-03T10:00:01.5Z"},
    ],
}


def downloading(conn: Conn, user_id: uuid.UUID, figures: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """A generation handed over to its download with `figures`: (its id, the download job)."""
    row = conn.execute(
        "select generation_id from start_generation(%s, 'a red fox', %s)", (user_id, SCHNELL)
    ).fetchone()
    assert row is not None
    (job,) = conn.execute("select * from claim_jobs('w', 1)").fetchall()
    download = conn.execute(
        "select generation_downloading(%s, 'w', 'https://r.test/o.webp', 'webp', 8, 8, 2,"
        " p_provider_metrics => %s) as id",
        (job["id"], None if figures is None else Jsonb(figures)),
    ).fetchone()
    assert download is not None and download["id"] is not None
    return row["generation_id"], download["id"]


def finish(conn: Conn, generation_id: uuid.UUID, download_id: uuid.UUID) -> None:
    conn.execute("select * from claim_jobs('w', 1)")
    assert conn.execute(
        "select * from finish_generation(%s, 'u/x.webp', 'https://cdn.test/x', 10, 8, 8,"
        " 'webp', %s, 'w')",
        (generation_id, download_id),
    ).fetchall()


def costs(conn: Conn, generation_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(
        "select provider_metrics, predict_time, estimated_cost from image_generations"
        " where id = %s",
        (generation_id,),
    ).fetchone()
    assert row is not None
    return row


def test_the_hand_over_keeps_the_providers_figures(conn: Conn, user_id: uuid.UUID) -> None:
    generation_id, _ = downloading(conn, user_id, FIGURES)
    row = costs(conn, generation_id)
    assert row["provider_metrics"] == FIGURES
    assert row["predict_time"] == Decimal("1.25")
    assert row["estimated_cost"] is None  # not completed yet


@pytest.mark.parametrize(
    "metrics", [{}, {"predict_time": "1.25"}, {"predict_time": None}], ids=["none", "text", "null"]
)
def test_a_predict_time_that_is_not_a_number_is_kept_but_not_counted(
    conn: Conn, user_id: uuid.UUID, metrics: dict[str, Any]
) -> None:
    figures = FIGURES | {"metrics": metrics}
    generation_id, _ = downloading(conn, user_id, figures)
    row = costs(conn, generation_id)
    assert (row["provider_metrics"], row["predict_time"]) == (figures, None)


def test_completing_prices_the_generation_at_its_models_cost(
    conn: Conn, user_id: uuid.UUID
) -> None:
    conn.execute(
        "update models set cost_per_generation = 0.003 where replicate_id = %s", (SCHNELL,)
    )
    generation_id, download_id = downloading(conn, user_id, FIGURES)
    finish(conn, generation_id, download_id)
    # A later change of price leaves what was estimated at completion.
    conn.execute("update models set cost_per_generation = 1 where replicate_id = %s", (SCHNELL,))
    row = costs(conn, generation_id)
    assert (row["estimated_cost"], row["predict_time"]) == (Decimal("0.003"), Decimal("1.25"))


def test_a_cancelled_generation_is_not_priced(conn: Conn, user_id: uuid.UUID) -> None:
    conn.execute(
        "update models set cost_per_generation = 0.003 where replicate_id = %s", (SCHNELL,)
    )
    generation_id, _ = downloading(conn, user_id, FIGURES)
    conn.execute(
        "select imagegen.cancel_generation(%s, %s) as outcome", (generation_id, user_id)
    ).fetchone()
    row = costs(conn, generation_id)
    # Replicate bills the prediction that ran; we did not deliver, so no estimate.
    assert (row["predict_time"], row["estimated_cost"]) == (Decimal("1.25"), None)


def test_the_view_sums_cost_and_time_per_user_model_and_day(conn: Conn) -> None:
    conn.execute(
        "update models set cost_per_generation = 0.003 where replicate_id = %s", (SCHNELL,)
    )
    alice, bob = make_user(conn), make_user(conn)
    for user, done in [(alice, True), (alice, True), (alice, False), (bob, True)]:
        generation_id, download_id = downloading(conn, user, FIGURES)
        if done:
            finish(conn, generation_id, download_id)
        else:
            conn.execute("select imagegen.cancel_generation(%s, %s)", (generation_id, user))
    conn.execute("select start_generation(%s, 'still queued', %s)", (bob, SCHNELL))
    rows = conn.execute(
        "select user_id, model, day = (now() at time zone 'UTC')::date as today, generations,"
        " succeeded, failed, predict_seconds, estimated_cost from generation_costs"
    ).fetchall()
    assert {row.pop("user_id"): row for row in rows} == {
        alice: {
            "model": "flux-schnell",
            "today": True,
            "generations": 3,
            "succeeded": 2,
            "failed": 1,
            "predict_seconds": Decimal("3.75"),
            "estimated_cost": Decimal("0.006"),
        },
        bob: {
            "model": "flux-schnell",
            "today": True,
            "generations": 2,
            "succeeded": 1,
            "failed": 0,
            "predict_seconds": Decimal("1.25"),
            "estimated_cost": Decimal("0.003"),
        },
    }


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_the_view_is_for_operators_only(conn: Conn, user_id: uuid.UUID, role: str) -> None:
    downloading(conn, user_id, FIGURES)
    claims = json.dumps({"role": role, "sub": str(user_id)})
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute(f"set local role {role}")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        conn.execute("select * from generation_costs")
    with conn.transaction():
        conn.execute("set local role service_role")
        assert conn.execute("select sum(generations) as n from generation_costs").fetchone() == {
            "n": 1
        }
