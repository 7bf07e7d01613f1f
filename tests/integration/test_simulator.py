"""The Replicate simulator over real HTTP: API shape, rendered images, counting, knobs."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette

from devstack.simulator import SimulatorConfig, create_simulator_app
from tests.support.background_server import BackgroundServer
from worker.models import GenerationParams, build_replicate_input, expected_size, prediction_request

AUTH = {"Authorization": "Bearer test-token"}


DEFAULTS = SimulatorConfig(latency_seconds=0.05)


@pytest.fixture(scope="module")
def sim() -> Iterator[BackgroundServer]:
    with BackgroundServer(create_simulator_app(DEFAULTS)) as server:
        yield server


@pytest.fixture
def client(sim: BackgroundServer) -> Iterator[httpx.Client]:
    """A client of a simulator reset to DEFAULTS (one server per module keeps tests fast)."""
    with httpx.Client(base_url=sim.url, headers=AUTH, timeout=10) as http:
        configure(http, **dataclasses.asdict(DEFAULTS))
        http.post("/_simulator/reset").raise_for_status()
        yield http


def configure(client: httpx.Client, **changes: Any) -> None:
    client.post("/_simulator/config", json=changes).raise_for_status()


def generate(client: httpx.Client, params: GenerationParams) -> dict[str, Any]:
    path, body = prediction_request(params, build_replicate_input(params, None))
    response = client.post(f"/v1{path}", json=body, headers={"Prefer": "wait=5"})
    assert response.status_code == 201, response.text
    return dict(response.json())


def output_url(prediction: dict[str, Any]) -> str:
    output = prediction["output"]
    return str(output[0] if isinstance(output, list) else output)


@pytest.mark.parametrize(
    ("model_id", "width", "height", "pil_format"),
    [
        ("black-forest-labs/flux-schnell", 1344, 768, "WEBP"),
        ("black-forest-labs/flux-dev", 512, 640, "WEBP"),
        ("ideogram-ai/ideogram-v3-turbo", 768, 512, "PNG"),
        ("google/imagen-4", 512, 512, "PNG"),
        ("bytedance/sdxl-lightning-4step", 512, 512, "WEBP"),
        ("stability-ai/sdxl", 640, 512, "WEBP"),
        ("bytedance/seedream-4", 1024, 768, "JPEG"),
        ("bytedance/seedream-3", 512, 768, "JPEG"),
        ("black-forest-labs/flux-1.1-pro", 1024, 576, "WEBP"),
        ("recraft-ai/recraft-v3", 1024, 1024, "WEBP"),
        ("stability-ai/stable-diffusion-3.5-large", 1024, 512, "WEBP"),
        ("qwen/qwen-image", 512, 1024, "WEBP"),
        ("playgroundai/playground-v2.5-1024px-aesthetic", 640, 480, "PNG"),
    ],
)
def test_renders_the_expected_size_and_format(
    client: httpx.Client, model_id: str, width: int, height: int, pil_format: str
) -> None:
    params = GenerationParams(
        prompt="a lighthouse", model_id=model_id, width=width, height=height, num_inference_steps=4
    )
    prediction = generate(client, params)
    assert prediction["status"] == "succeeded" and prediction["simulator"] is True
    response = client.get(output_url(prediction))
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == pil_format
        assert image.size == expected_size(params)
    assert response.headers["content-type"] == Image.MIME[pil_format]


def test_renders_svg_for_recraft_svg(client: httpx.Client) -> None:
    params = GenerationParams(prompt="a <fox> & co", model_id="recraft-ai/recraft-v3-svg")
    prediction = generate(client, params)
    url = output_url(prediction)
    assert url.endswith(".svg")
    response = client.get(url)
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.text.startswith("<svg ") and 'width="1024" height="1024"' in response.text
    assert "a &lt;fox&gt; &amp; co" in response.text


def test_versioned_prediction_uses_the_known_model(client: httpx.Client) -> None:
    params = GenerationParams(
        prompt="p",
        model_id="stability-ai/sdxl",
        model_version="39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
        width=512,
        height=512,
    )
    prediction = generate(client, params)
    assert prediction["model"] == "stability-ai/sdxl"
    assert prediction["version"] == params.model_version


def test_lifecycle_get_and_cancel(sim: BackgroundServer, client: httpx.Client) -> None:
    configure(client, latency_seconds=5)
    params = GenerationParams(prompt="p", model_id="x/anything", width=64, height=64)
    path, body = prediction_request(params, build_replicate_input(params, None))
    created = client.post(f"/v1{path}", json=body).json()
    assert created["status"] == "starting" and created["output"] is None
    assert created["urls"]["get"] == f"{sim.url}/v1/predictions/{created['id']}"
    fetched = client.get(f"/v1/predictions/{created['id']}").json()
    assert fetched["id"] == created["id"]
    canceled = client.post(f"/v1/predictions/{created['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    assert client.get(f"/v1/predictions/{created['id']}").json()["status"] == "canceled"
    assert client.get("/v1/predictions/nope").status_code == 404


def test_prefer_wait_holds_until_done(client: httpx.Client) -> None:
    configure(client, latency_seconds=0.3)
    started = time.monotonic()
    prediction = generate(client, GenerationParams(prompt="p", model_id="a/b", width=8, height=8))
    assert prediction["status"] == "succeeded"
    assert time.monotonic() - started >= 0.3
    assert prediction["metrics"]["predict_time"] == pytest.approx(0.3, abs=0.05)


def test_prefer_wait_gives_up_after_n_seconds(client: httpx.Client) -> None:
    configure(client, latency_seconds=30)
    response = client.post(
        "/v1/models/a/b/predictions",
        json={"input": {"prompt": "p", "width": 8, "height": 8}},
        headers={"Prefer": "wait=1"},
    )
    assert response.json()["status"] in ("starting", "processing")


def test_cancel_after_cancels_a_slow_prediction(client: httpx.Client) -> None:
    configure(client, latency_seconds=30)
    response = client.post(
        "/v1/models/a/b/predictions",
        json={"input": {"prompt": "p", "width": 8, "height": 8}},
        headers={"Prefer": "wait=5", "Cancel-After": "200ms"},
    )
    assert response.json()["status"] == "canceled"


def test_counts_predictions_and_statuses(client: httpx.Client) -> None:
    for _ in range(3):
        generate(client, GenerationParams(prompt="p", model_id="a/b", width=8, height=8))
    configure(client, failure_rate=1.0)
    failed = generate(client, GenerationParams(prompt="p", model_id="a/b", width=8, height=8))
    assert failed["status"] == "failed" and "Simulated failure" in failed["error"]
    assert failed["output"] is None
    stats = client.get("/_simulator/stats").json()
    assert stats["predictions_created"] == 4
    assert stats["statuses"] == {"succeeded": 3, "failed": 1}
    assert stats["simulator"] is True
    client.post("/_simulator/reset").raise_for_status()
    assert client.get("/_simulator/stats").json()["predictions_created"] == 0


def test_invalid_input_is_422_in_replicates_shape(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/black-forest-labs/flux-schnell/predictions",
        json={"input": {"prompt": "p", "aspect_ratio": "7:4", "num_inference_steps": 30}},
    )
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == 422 and body["title"] == "Input validation failed"
    assert "aspect_ratio" in body["detail"] and "num_inference_steps" in body["detail"]
    missing = client.post("/v1/models/recraft-ai/recraft-v3/predictions", json={"input": {}})
    assert missing.status_code == 422 and "prompt: is required" in missing.json()["detail"]
    assert client.get("/_simulator/stats").json()["predictions_created"] == 0


def test_requires_a_bearer_token(sim: BackgroundServer) -> None:
    response = httpx.get(f"{sim.url}/v1/predictions/x", timeout=5)
    assert response.status_code == 401
    assert response.json()["status"] == 401


def test_says_it_is_a_simulator_everywhere(client: httpx.Client) -> None:
    for response in (
        client.get("/no/such/route"),
        client.get("/_simulator/stats"),
        client.post("/v1/predictions", json={"version": "x", "input": {}}),
        client.get("/v1/predictions/none"),
    ):
        assert response.headers["x-replicate-simulator"] == "true"
        assert response.json()["simulator"] is True


def test_rate_limit_and_server_error_knobs(client: httpx.Client) -> None:
    configure(client, rate_limit_rate=1.0, retry_after_seconds=7)
    limited = client.get("/v1/predictions/x")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    configure(client, rate_limit_rate=0.0, server_error_rate=1.0)
    assert client.get("/v1/predictions/x").status_code == 503
    stats = client.get("/_simulator/stats").json()
    assert stats["rate_limited"] == 1 and stats["server_errors"] == 1


def test_output_expires_after_ttl(client: httpx.Client) -> None:
    prediction = generate(client, GenerationParams(prompt="p", model_id="a/b", width=8, height=8))
    assert client.get(output_url(prediction)).status_code == 200  # within the hour
    configure(client, output_ttl_seconds=0)  # the same prediction, its time now up
    assert client.get(output_url(prediction)).status_code == 404


def test_seed_makes_runs_reproducible() -> None:
    def run() -> list[tuple[str, str]]:
        config = SimulatorConfig(latency_seconds=0, failure_rate=0.5, seed=42)
        with (
            BackgroundServer(create_simulator_app(config)) as server,
            httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as http,
        ):
            params = GenerationParams(prompt="p", model_id="a/b", width=8, height=8)
            return [(p["id"], p["status"]) for p in (generate(http, params) for _ in range(8))]

    first = run()
    assert first == run()
    assert {status for _, status in first} == {"succeeded", "failed"}


def test_runtime_config_rejects_unknown_settings(client: httpx.Client) -> None:
    assert client.post("/_simulator/config", json={"nope": 1}).status_code == 400
    assert client.get("/_simulator/config").json()["latency_seconds"] == 0.05


def test_output_urls_follow_the_mount_path() -> None:
    outer = Starlette()
    outer.mount("/replicate", create_simulator_app(SimulatorConfig(latency_seconds=0)))
    with (
        BackgroundServer(outer) as server,
        httpx.Client(base_url=f"{server.url}/replicate", headers=AUTH, timeout=10) as http,
    ):
        prediction = generate(
            http, GenerationParams(prompt="p", model_id="a/b", width=16, height=16)
        )
        url = output_url(prediction)
        assert url.startswith(f"{server.url}/replicate/files/")
        assert http.get(url).status_code == 200


def test_lists_predictions_newest_first_by_cursor(client: httpx.Client) -> None:
    configure(client, page_size=2)
    created = [
        generate(client, GenerationParams(prompt=f"p{i}", model_id="a/b", width=8, height=8))
        for i in range(5)
    ]
    first = client.get("/v1/predictions").json()
    assert [p["id"] for p in first["results"]] == [created[4]["id"], created[3]["id"]]
    assert first["results"][0]["input"] == created[4]["input"]
    assert {"id", "status", "created_at", "input", "model", "version", "urls"} <= set(
        first["results"][0]
    )
    # A prediction created meanwhile does not shift the pages that follow.
    generate(client, GenerationParams(prompt="late", model_id="a/b", width=8, height=8))
    ids, page = [p["id"] for p in first["results"]], first
    while page["next"]:
        assert page["next"].startswith(str(client.base_url).rstrip("/") + "/v1/predictions?")
        page = client.get(page["next"]).json()
        ids += [p["id"] for p in page["results"]]
    assert ids == [p["id"] for p in reversed(created)]
    assert client.get("/_simulator/stats").json()["list_requests"] == 3


def test_fail_prompts_fails_exactly_those(client: httpx.Client) -> None:
    configure(client, fail_prompts=["[doomed]"])
    doomed = generate(client, GenerationParams(prompt="a [doomed] cat", model_id="a/b"))
    fine = generate(client, GenerationParams(prompt="a cat", model_id="a/b"))
    assert doomed["status"] == "failed" and "fail_prompts" in doomed["error"]
    assert fine["status"] == "succeeded"
