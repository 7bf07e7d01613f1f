"""A generation's life in SQL (sql/0001_baseline.sql, section 6) on the real cluster."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import make_user, signed_in
from tests.support.generations import SCHNELL, exact, finish, start
from tests.support.queue import claim_jobs

Conn = psycopg.Connection[dict[str, Any]]

FLUX_DEV = "black-forest-labs/flux-dev"

# docs/CONTRACT.md §1: what the generate-image job's payload carries.
PAYLOAD_KEYS = {
    "generation_id",
    "user_id",
    "prompt",
    "negative_prompt",
    "model_id",
    "model_version",
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "seed",
    "source_image_url",
    "strength",
}


def generation(conn: Conn, generation_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute("select * from image_generations where id = %s", (generation_id,)).fetchone()
    assert row is not None
    return row


def job(conn: Conn, job_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute("select * from job_queue where id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def claim(conn: Conn, worker: str, job_type: str = "generate-image") -> dict[str, Any]:
    """claim_jobs of one `job_type` job, asserted to be there."""
    rows = claim_jobs(conn, worker, job_types=[job_type])
    assert rows
    return rows[0]


def counts(conn: Conn) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from image_generations) as g,"
        " (select count(*) from job_queue) as j, (select count(*) from images) as i"
    ).fetchone()
    assert row is not None
    return row["g"], row["j"], row["i"]


def downloading(conn: Conn, job_id: uuid.UUID, worker: str, **overrides: Any) -> uuid.UUID | None:
    arguments = {
        "job_id": job_id,
        "worker": worker,
        "url": "https://replicate.delivery/out/abc.webp",
        "format": "webp",
        "width": 1024,
        "height": 768,
        "seconds": 3.5,
    } | overrides
    row = conn.execute(
        "select generation_downloading(%(job_id)s, %(worker)s, %(url)s, %(format)s,"
        " %(width)s, %(height)s, %(seconds)s) as id",
        exact(arguments),
    ).fetchone()
    assert row is not None
    download_id: uuid.UUID | None = row["id"]
    return download_id


# start_generation


def test_start_generation_writes_the_row_and_the_job_together(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = start(
        conn,
        user_id,
        model_id=FLUX_DEV,
        width=768,
        height=512,
        num_inference_steps=20,
        guidance_scale=3.5,
        seed=42,
        negative_prompt="blurry",
        source_image_url="https://images.example.test/cat.png",
        strength=0.6,
        style="cinematic",
    )
    assert set(started) == {"generation_id", "job_id"}
    row = generation(conn, started["generation_id"])
    assert row["user_id"] == user_id
    assert row["status"] == "queued"
    assert row["prompt"] == "a lighthouse at dusk"
    assert row["negative_prompt"] == "blurry"
    assert row["model"] == "flux-dev"
    # The models row (a uuid, as on the old database); the job carries the Replicate id.
    assert (
        row["model_id"]
        == conn.execute("select id from models where replicate_id = %s", (FLUX_DEV,)).fetchone()[
            "id"
        ]
    )
    assert row["style"] == "cinematic"
    assert (row["width"], row["height"], row["steps"]) == (768, 512, 20)
    assert float(row["guidance_scale"]) == 3.5
    assert row["seed"] == 42
    assert row["source_image_url"] == "https://images.example.test/cat.png"
    assert float(row["generation_strength"]) == 0.6
    assert row["retry_count"] == 0

    queued = job(conn, started["job_id"])
    assert queued["job_type"] == "generate-image"
    assert queued["status"] == "pending"
    assert queued["created_by"] == user_id
    assert queued["max_attempts"] == 3
    payload = queued["payload"]
    assert set(payload) == PAYLOAD_KEYS
    assert payload == {
        "generation_id": str(started["generation_id"]),
        "user_id": str(user_id),
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "model_id": FLUX_DEV,
        "model_version": None,
        "width": 768,
        "height": 512,
        "num_inference_steps": 20,
        "guidance_scale": 3.5,
        "seed": 42,
        "source_image_url": "https://images.example.test/cat.png",
        "strength": 0.6,
    }
    assert counts(conn) == (1, 1, 0)


def test_start_generation_takes_the_models_defaults(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id, model_id=SCHNELL)
    row = generation(conn, started["generation_id"])
    assert row["model"] == "flux-schnell"
    assert (row["width"], row["height"], row["steps"]) == (1024, 1024, 4)
    assert float(row["guidance_scale"]) == 0
    assert row["seed"] is None and row["generation_strength"] is None
    payload = job(conn, started["job_id"])["payload"]
    assert set(payload) == PAYLOAD_KEYS
    assert payload["num_inference_steps"] == 4
    assert payload["seed"] is None and payload["source_image_url"] is None


def test_start_generation_uses_the_models_version_and_its_default_strength(
    conn: Conn, user_id: uuid.UUID
) -> None:
    conn.execute(
        "insert into models (name, display_name, replicate_id, version, default_width,"
        " default_height, default_steps, default_guidance_scale, default_strength,"
        " supports_img2img, strength_min, strength_max)"
        " values ('house-model', 'House', 'acme/house-model', 'v-hash', 512, 640, 12, 2.5,"
        " 0.35, true, 0.1, 0.9)"
    )
    started = start(
        conn, user_id, model_id="acme/house-model", source_image_url="http://x.test/a.jpg"
    )
    row = generation(conn, started["generation_id"])
    assert row["model"] == "house-model"
    assert (row["width"], row["height"], row["steps"]) == (512, 640, 12)
    assert float(row["guidance_scale"]) == 2.5
    assert float(row["generation_strength"]) == 0.35
    payload = job(conn, started["job_id"])["payload"]
    assert payload["model_version"] == "v-hash"
    assert payload["strength"] == 0.35


def test_start_generation_carries_the_priority(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id, priority=4)
    assert generation(conn, started["generation_id"])["priority"] == 4
    assert job(conn, started["job_id"])["priority"] == 4


REFUSALS: list[tuple[str, dict[str, Any]]] = [
    ("prompt", {"prompt": None}),
    ("prompt", {"prompt": ""}),
    ("prompt", {"prompt": "   \t"}),
    ("prompt", {"prompt": "x" * 4001}),
    # Nothing visible (sql/0100): NBSP, zero-width space and joiner, BOM, controls.
    ("prompt", {"prompt": "\u00a0\u200b\u2060\ufeff\x01\u3000"}),
    ("model_id", {"model_id": "m" * 201}),
    ("model_version", {"model_version": "v" * 201}),
    ("negative_prompt", {"negative_prompt": "x" * 4001}),
    ("style", {"style": "s" * 101}),
    ("model_id", {"model_id": None}),
    ("model_id", {"model_id": " "}),
    ("model_id", {"model_id": "nobody/unknown-model"}),
    # Sizes beyond the model's own limits are fitted (tests/compat/test_sizes.py).
    ("width", {"width": 127}),
    ("width", {"width": 8193}),
    ("width", {"width": 0}),
    ("height", {"height": 100_000}),
    ("height", {"height": -1}),
    ("num_inference_steps", {"num_inference_steps": 0}),
    ("num_inference_steps", {"num_inference_steps": 5}),  # flux-schnell allows at most 4
    ("guidance_scale", {"guidance_scale": -0.1}),
    ("guidance_scale", {"guidance_scale": 50.5}),
    ("seed", {"seed": -1}),
    ("seed", {"seed": 4_294_967_296}),
    ("source_image_url", {"source_image_url": "https://x.test/a.png"}),  # no img2img
    ("source_image_url", {"model_id": FLUX_DEV, "source_image_url": "file:///etc/passwd"}),
    ("source_image_url", {"model_id": FLUX_DEV, "source_image_url": "ftp://x.test/a.png"}),
    ("source_image_url", {"model_id": FLUX_DEV, "source_image_url": "https://x.test/a b"}),
    (
        "source_image_url",
        {"model_id": FLUX_DEV, "source_image_url": "https://x.test/" + "a" * 2048},
    ),
    ("strength", {"model_id": FLUX_DEV, "source_image_url": "https://x.test/a", "strength": 1.5}),
    ("strength", {"model_id": FLUX_DEV, "source_image_url": "https://x.test/a", "strength": -1}),
    ("strength", {"strength": 0.5}),  # strength without a source image
]


@pytest.mark.parametrize(("field", "arguments"), REFUSALS)
def test_start_generation_refuses_invalid_input_and_writes_nothing(
    conn: Conn, user_id: uuid.UUID, field: str, arguments: dict[str, Any]
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        start(conn, user_id, **arguments)
    assert refused.value.sqlstate == "22023"
    assert refused.value.diag.column_name == field
    assert refused.value.diag.message_primary
    assert counts(conn) == (0, 0, 0)


def test_start_generation_refuses_an_unknown_user(conn: Conn) -> None:
    for user in (uuid.uuid4(), None):
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            start(conn, user)  # type: ignore[arg-type]
        assert refused.value.diag.column_name == "user_id"
    assert counts(conn) == (0, 0, 0)


def test_start_generation_refuses_an_inactive_model(conn: Conn, user_id: uuid.UUID) -> None:
    conn.execute("update models set is_active = false where replicate_id = %s", (SCHNELL,))
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        start(conn, user_id)
    assert refused.value.diag.column_name == "model_id"
    assert "not available" in refused.value.diag.message_primary  # type: ignore[operator]
    assert counts(conn) == (0, 0, 0)


def test_start_generation_accepts_the_limits_themselves(conn: Conn, user_id: uuid.UUID) -> None:
    start(conn, user_id, width=256, height=1440, num_inference_steps=4, seed=4_294_967_295)
    start(conn, user_id, prompt="x" * 4000, guidance_scale=50, seed=0)
    assert counts(conn) == (2, 2, 0)


# begin_generation and record_prediction


def test_begin_generation_moves_to_processing_for_the_holder_only(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = start(conn, user_id)
    claim(conn, "worker-a")
    not_held = conn.execute("select * from begin_generation(%s, 'worker-b')", (started["job_id"],))
    assert not_held.fetchall() == []
    assert generation(conn, started["generation_id"])["status"] == "queued"

    rows = conn.execute(
        "select * from begin_generation(%s, 'worker-a')", (started["job_id"],)
    ).fetchall()
    assert [row["id"] for row in rows] == [started["generation_id"]]
    assert rows[0]["status"] == "processing"
    assert rows[0]["retry_count"] == 0
    assert generation(conn, started["generation_id"])["status"] == "processing"


def test_begin_generation_returns_nothing_for_another_worker_or_an_ended_generation(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = start(conn, user_id)
    claim(conn, "worker-a")
    other = conn.execute("select * from begin_generation(%s, 'worker-b')", (started["job_id"],))
    assert other.fetchall() == []
    conn.execute(
        "update image_generations set status = 'completed' where id = %s",
        (started["generation_id"],),
    )
    ended = conn.execute("select * from begin_generation(%s, 'worker-a')", (started["job_id"],))
    assert ended.fetchall() == []
    assert generation(conn, started["generation_id"])["status"] == "completed"


def test_a_retry_resumes_the_saved_prediction(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    job_id = started["job_id"]
    claim(conn, "worker-a")
    conn.execute("select begin_generation(%s, 'worker-a')", (job_id,))

    wrong = conn.execute("select record_prediction(%s, 'worker-b', 'pred-x') as ok", (job_id,))
    assert wrong.fetchone() == {"ok": False}
    saved = conn.execute("select record_prediction(%s, 'worker-a', 'pred-1') as ok", (job_id,))
    assert saved.fetchone() == {"ok": True}
    assert generation(conn, started["generation_id"])["replicate_prediction_id"] == "pred-1"

    # The first worker dies; the next attempt sees the prediction to resume.
    conn.execute("update job_queue set locked_until = now() - interval '1 second'")
    claim(conn, "worker-b")
    (resumed,) = conn.execute(
        "select * from begin_generation(%s, 'worker-b')", (job_id,)
    ).fetchall()
    assert resumed["replicate_prediction_id"] == "pred-1"
    assert resumed["retry_count"] == 1
    stale = conn.execute("select record_prediction(%s, 'worker-a', 'pred-2') as ok", (job_id,))
    assert stale.fetchone() == {"ok": False}
    assert generation(conn, started["generation_id"])["replicate_prediction_id"] == "pred-1"


# generation_downloading


def test_generation_downloading_hands_over_to_a_priority_download_job(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = start(conn, user_id)
    claim(conn, "worker-a")
    conn.execute("select begin_generation(%s, 'worker-a')", (started["job_id"],))

    download_id = downloading(conn, started["job_id"], "worker-a")

    assert download_id is not None
    generate = job(conn, started["job_id"])
    assert generate["status"] == "completed"
    assert generate["result"]["output_url"] == "https://replicate.delivery/out/abc.webp"
    download = job(conn, download_id)
    assert download["job_type"] == "download-image"
    assert download["priority"] == 1
    assert download["status"] == "pending"
    assert download["created_by"] == user_id
    assert download["payload"] == {
        "generation_id": str(started["generation_id"]),
        "user_id": str(user_id),
        "output_url": "https://replicate.delivery/out/abc.webp",
        "format": "webp",
        "width": 1024,
        "height": 768,
        "generation_time_seconds": 3.5,
    }
    row = generation(conn, started["generation_id"])
    assert row["status"] == "downloading"
    assert float(row["generation_time_seconds"]) == 3.5

    # Download jobs come before waiting generate jobs.
    start(conn, user_id, priority=0)
    first = conn.execute("select * from claim_jobs('w', 1)").fetchone()
    assert first is not None and first["id"] == download_id


def test_generation_downloading_is_fenced(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    claim(conn, "worker-a")
    conn.execute("select begin_generation(%s, 'worker-a')", (started["job_id"],))
    assert downloading(conn, started["job_id"], "worker-b") is None
    assert job(conn, started["job_id"])["status"] == "processing"
    assert generation(conn, started["generation_id"])["status"] == "processing"
    assert counts(conn) == (1, 1, 0)

    assert downloading(conn, started["job_id"], "worker-a") is not None
    # A repeated hand-over (the job is completed now) does nothing.
    assert downloading(conn, started["job_id"], "worker-a") is None
    assert counts(conn) == (1, 2, 0)


# finish_generation


def test_finish_generation_stores_the_image_and_completes_both(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = start(conn, user_id, negative_prompt="fog", style="noir")
    gid = started["generation_id"]
    claim(conn, "worker-a")
    conn.execute("select begin_generation(%s, 'worker-a')", (started["job_id"],))
    download_id = downloading(conn, started["job_id"], "worker-a")
    assert download_id is not None
    claim(conn, "worker-b", "download-image")

    (image,) = finish(conn, gid, user_id, job_id=download_id, worker_id="worker-b")

    assert image["generation_id"] == gid
    assert image["user_id"] == user_id
    assert image["filename"] == f"{gid}.webp"
    assert image["storage_path"] == f"{user_id}/{gid}.webp"
    assert image["public_url"] == f"https://cdn.test/generated-images/{user_id}/{gid}.webp"
    assert image["file_size"] == 12345
    assert (image["width"], image["height"], image["format"]) == (1024, 768, "webp")
    assert (image["prompt"], image["negative_prompt"]) == ("a lighthouse at dusk", "fog")
    assert (image["model"], image["style"]) == ("flux-schnell", "noir")
    assert (image["is_public"], image["is_favorite"], image["rating"]) == (False, False, None)

    row = generation(conn, gid)
    assert row["status"] == "completed"
    assert row["completed_at"] is not None
    assert row["error_message"] is None
    assert (row["width"], row["height"]) == (1024, 768)
    assert float(row["generation_time_seconds"]) == 3.5
    done = job(conn, download_id)
    assert done["status"] == "completed"
    assert done["result"] == {
        "storage_path": image["storage_path"],
        "public_url": image["public_url"],
    }


def test_finish_generation_keeps_one_image_per_generation(conn: Conn, user_id: uuid.UUID) -> None:
    gid = start(conn, user_id)["generation_id"]
    finish(conn, gid, user_id, user_id=user_id)
    (again,) = finish(
        conn, gid, user_id, user_id=user_id, format="png", storage_path=f"{user_id}/{gid}.png"
    )
    assert again["filename"] == f"{gid}.png"
    rows = conn.execute("select * from images where generation_id = %s", (gid,)).fetchall()
    assert [row["id"] for row in rows] == [again["id"]]
    assert rows[0]["storage_path"] == f"{user_id}/{gid}.png"
    # The database itself refuses a second row.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "insert into images (generation_id, user_id, filename, storage_path, public_url)"
            " values (%s, %s, 'x', 'x', 'x')",
            (gid, user_id),
        )


def test_finish_generation_without_a_job_sets_the_generation_time(
    conn: Conn, user_id: uuid.UUID
) -> None:
    gid = start(conn, user_id)["generation_id"]
    finish(conn, gid, user_id, user_id=user_id)
    row = generation(conn, gid)
    assert row["status"] == "completed"
    assert row["generation_time_seconds"] is not None and row["generation_time_seconds"] >= 0


def test_legacy_finish_generation_refuses_another_users_generation(
    conn: Conn, user_id: uuid.UUID
) -> None:
    gid = start(conn, user_id)["generation_id"]
    intruder = make_user(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        finish(conn, gid, user_id, user_id=intruder)
    assert refused.value.diag.column_name == "generation_id"
    assert generation(conn, gid)["status"] == "queued"
    assert counts(conn) == (1, 1, 0)


def test_finish_generation_refuses_an_unknown_generation(conn: Conn, user_id: uuid.UUID) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        finish(conn, uuid.uuid4(), user_id)
    assert refused.value.diag.column_name == "generation_id"
    assert counts(conn) == (0, 0, 0)


def test_finish_generation_is_fenced(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    claim(conn, "worker-a")
    download_id = downloading(conn, started["job_id"], "worker-a")
    claim(conn, "worker-b", "download-image")
    assert finish(conn, started["generation_id"], user_id, job_id=download_id, worker_id="x") == []
    assert generation(conn, started["generation_id"])["status"] == "downloading"
    assert job(conn, download_id)["status"] == "processing"  # type: ignore[arg-type]
    assert counts(conn) == (1, 2, 0)


# fail_generation


def test_fail_generation_waits_for_the_last_attempt(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    job_id, gid = started["job_id"], started["generation_id"]
    statuses = []
    for attempt in range(1, 4):
        claim(conn, "w")
        conn.execute("select begin_generation(%s, 'w')", (job_id,))
        status = conn.execute(
            "select fail_generation(%s, 'w', %s, '{\"http\": 502}') as s",
            (job_id, f"Replicate error {attempt}"),
        ).fetchone()
        assert status is not None
        statuses.append(status["s"])
        row = generation(conn, gid)
        if attempt < 3:
            assert row["status"] == "processing"
            assert row["error_message"] is None
        conn.execute("update job_queue set scheduled_at = now() where id = %s", (job_id,))
    assert statuses == ["pending", "pending", "failed"]
    row = generation(conn, gid)
    assert row["status"] == "failed"
    assert row["error_message"] == "Replicate error 3"
    assert row["retry_count"] == 2
    assert job(conn, job_id)["error_details"] == {"http": 502}


def test_fail_generation_with_a_permanent_error_fails_at_once(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = start(conn, user_id)
    claim(conn, "w")
    status = conn.execute(
        "select fail_generation(%s, 'w', 'NSFW content detected', p_retryable => false) as s",
        (started["job_id"],),
    ).fetchone()
    assert status == {"s": "failed"}
    row = generation(conn, started["generation_id"])
    assert (row["status"], row["error_message"]) == ("failed", "NSFW content detected")


def test_fail_generation_is_fenced(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    claim(conn, "worker-a")
    before = job(conn, started["job_id"])
    status = conn.execute(
        "select fail_generation(%s, 'worker-b', 'late', p_retryable => false) as s",
        (started["job_id"],),
    ).fetchone()
    assert status == {"s": None}
    assert job(conn, started["job_id"]) == before
    assert generation(conn, started["generation_id"])["status"] == "queued"


def test_a_failing_download_fails_the_generation_at_the_end(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    claim(conn, "w")
    download_id = downloading(conn, started["job_id"], "w")
    claim(conn, "w", "download-image")
    status = conn.execute(
        "select fail_generation(%s, 'w', 'The image could not be stored', p_retryable => false)"
        " as s",
        (download_id,),
    ).fetchone()
    assert status == {"s": "failed"}
    row = generation(conn, started["generation_id"])
    assert (row["status"], row["error_message"]) == ("failed", "The image could not be stored")


# cancel_generation


def test_the_owner_cancels_a_generation_and_its_job(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    with signed_in(conn, user_id):
        cancelled = conn.execute(
            "select cancel_generation(%s) as ok", (started["generation_id"],)
        ).fetchone()
    assert cancelled == {"ok": True}
    row = generation(conn, started["generation_id"])
    assert (row["status"], row["error_message"]) == ("failed", "Cancelled by user")
    queued = job(conn, started["job_id"])
    assert queued["status"] == "cancelled"
    assert queued["completed_at"] is not None
    assert conn.execute("select * from claim_jobs('w', 10)").fetchall() == []


def test_cancel_stops_a_running_job_and_fences_its_worker(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    claim(conn, "w")
    conn.execute("select begin_generation(%s, 'w')", (started["job_id"],))
    with signed_in(conn, user_id):
        conn.execute("select cancel_generation(%s)", (started["generation_id"],))
    assert job(conn, started["job_id"])["status"] == "cancelled"
    assert downloading(conn, started["job_id"], "w") is None
    assert generation(conn, started["generation_id"])["status"] == "failed"
    assert counts(conn) == (1, 1, 0)


def test_only_the_owner_cancels(conn: Conn, user_id: uuid.UUID) -> None:
    started = start(conn, user_id)
    other = make_user(conn)
    with signed_in(conn, other):
        refused = conn.execute(
            "select cancel_generation(%s) as ok", (started["generation_id"],)
        ).fetchone()
    assert refused == {"ok": False}
    assert generation(conn, started["generation_id"])["status"] == "queued"
    assert job(conn, started["job_id"])["status"] == "pending"

    # Without a signed-in user (auth.uid() is null) nothing is cancelled either.
    anonymous = conn.execute(
        "select cancel_generation(%s) as ok", (started["generation_id"],)
    ).fetchone()
    assert anonymous == {"ok": False}


def test_a_finished_generation_cannot_be_cancelled(conn: Conn, user_id: uuid.UUID) -> None:
    gid = start(conn, user_id)["generation_id"]
    finish(conn, gid, user_id, user_id=user_id)
    with signed_in(conn, user_id):
        assert conn.execute("select cancel_generation(%s) as ok", (gid,)).fetchone() == {
            "ok": False
        }
    assert generation(conn, gid)["status"] == "completed"


def test_cancel_leaves_the_users_other_generations_alone(conn: Conn, user_id: uuid.UUID) -> None:
    first = start(conn, user_id)
    second = start(conn, user_id)
    with signed_in(conn, user_id):
        conn.execute("select cancel_generation(%s)", (first["generation_id"],))
    assert generation(conn, second["generation_id"])["status"] == "queued"
    assert job(conn, second["job_id"])["status"] == "pending"


# One rule, on the job: a generation fails when its job finally fails or is cancelled


def active(conn: Conn, user_id: uuid.UUID) -> int:
    row = conn.execute("select imagegen.active_generations(%s) as n", (user_id,)).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(
    "ending",
    [
        "select cancel_job(%(job)s, 'Stopped by an operator')",
        "select complete_job(%(job)s, 'Stopped by an operator', p_retryable => false)",
        "update job_queue set status = 'failed', error_message = 'Stopped by an operator'"
        " where id = %(job)s",
    ],
    ids=["cancel_job", "complete_job_permanent_error", "operator_update"],
)
def test_a_generation_fails_with_its_job_however_the_job_ends(
    conn: Conn, user_id: uuid.UUID, ending: str
) -> None:
    started = start(conn, user_id)
    claim(conn, "w1")
    assert active(conn, user_id) == 1
    conn.execute(ending, {"job": started["job_id"]})
    row = generation(conn, started["generation_id"])
    assert (row["status"], row["error_message"]) == ("failed", "Stopped by an operator")
    assert active(conn, user_id) == 0  # admission no longer counts it


def test_a_retried_or_completed_job_leaves_its_generation_alone(
    conn: Conn, user_id: uuid.UUID
) -> None:
    started = start(conn, user_id)
    claim(conn, "w1")
    conn.execute("select complete_job(%s, 'a transient error')", (started["job_id"],))
    assert job(conn, started["job_id"])["status"] == "pending"
    assert generation(conn, started["generation_id"])["status"] == "queued"
    finished = start(conn, user_id)
    conn.execute(
        "update image_generations set status = 'completed' where id = %s",
        (finished["generation_id"],),
    )
    conn.execute("select cancel_job(%s)", (finished["job_id"],))
    assert generation(conn, finished["generation_id"])["status"] == "completed"
