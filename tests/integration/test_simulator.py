"""The Replicate simulator over real HTTP: API shape, rendered images, counting, knobs."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette

from devstack.simulator import SimulatorConfig, create_simulator_app
from tests.support.background_server import BackgroundServer
from worker.models import GenerationParams, build_replicate_input, expected_size, prediction_request

AUTH = {"Authorization": "Bearer test-token"}


def configure(simulator: httpx.Client, **changes: Any) -> None:
    simulator.post("/_simulator/config", json=changes).raise_for_status()


def generate(simulator: httpx.Client, params: GenerationParams) -> dict[str, Any]:
    path, body = prediction_request(params, build_replicate_input(params, None))
    response = simulator.post(f"/v1{path}", json=body, headers={"Prefer": "wait=5"})
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
    simulator: httpx.Client, model_id: str, width: int, height: int, pil_format: str
) -> None:
    params = GenerationParams(
        prompt="a lighthouse", model_id=model_id, width=width, height=height, num_inference_steps=4
    )
    prediction = generate(simulator, params)
    assert prediction["status"] == "succeeded" and prediction["simulator"] is True
    response = simulator.get(output_url(prediction))
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == pil_format
        assert image.size == expected_size(params)
    assert response.headers["content-type"] == Image.MIME[pil_format]


def test_renders_svg_for_recraft_svg(simulator: httpx.Client) -> None:
    params = GenerationParams(prompt="a <fox> & co", model_id="recraft-ai/recraft-v3-svg")
    prediction = generate(simulator, params)
    url = output_url(prediction)
    assert url.endswith(".svg")
    response = simulator.get(url)
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.text.startswith("<svg ") and 'width="1024" height="1024"' in response.text
    assert "a &lt;fox&gt; &amp; co" in response.text


def test_versioned_prediction_uses_the_known_model(simulator: httpx.Client) -> None:
    params = GenerationParams(
        prompt="p",
        model_id="stability-ai/sdxl",
        model_version="39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
        width=512,
        height=512,
    )
    prediction = generate(simulator, params)
    assert prediction["model"] == "stability-ai/sdxl"
    assert prediction["version"] == params.model_version


def test_lifecycle_get_and_cancel(sim: BackgroundServer, simulator: httpx.Client) -> None:
    configure(simulator, latency_seconds=5)
    params = GenerationParams(prompt="p", model_id="x/anything", width=64, height=64)
    path, body = prediction_request(params, build_replicate_input(params, None))
    created = simulator.post(f"/v1{path}", json=body).json()
    assert created["status"] == "starting" and created["output"] is None
    assert created["urls"]["get"] == f"{sim.url}/v1/predictions/{created['id']}"
    fetched = simulator.get(f"/v1/predictions/{created['id']}").json()
    assert fetched["id"] == created["id"]
    canceled = simulator.post(f"/v1/predictions/{created['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    assert simulator.get(f"/v1/predictions/{created['id']}").json()["status"] == "canceled"
    assert simulator.get("/v1/predictions/nope").status_code == 404


def test_prefer_wait_holds_until_done(simulator: httpx.Client) -> None:
    configure(simulator, latency_seconds=0.3)
    started = time.monotonic()
    prediction = generate(
        simulator, GenerationParams(prompt="p", model_id="a/b", width=8, height=8)
    )
    assert prediction["status"] == "succeeded"
    assert time.monotonic() - started >= 0.3
    assert prediction["metrics"]["predict_time"] == pytest.approx(0.3, abs=0.05)


def test_prefer_wait_gives_up_after_n_seconds(simulator: httpx.Client) -> None:
    configure(simulator, latency_seconds=30)
    response = simulator.post(
        "/v1/models/a/b/predictions",
        json={"input": {"prompt": "p", "width": 8, "height": 8}},
        headers={"Prefer": "wait=1"},
    )
    assert response.json()["status"] in ("starting", "processing")


def test_cancel_after_cancels_a_slow_prediction(simulator: httpx.Client) -> None:
    configure(simulator, latency_seconds=30)
    response = simulator.post(
        "/v1/models/a/b/predictions",
        json={"input": {"prompt": "p", "width": 8, "height": 8}},
        headers={"Prefer": "wait=5", "Cancel-After": "200ms"},
    )
    assert response.json()["status"] == "canceled"


def test_counts_predictions_and_statuses(simulator: httpx.Client) -> None:
    for _ in range(3):
        generate(simulator, GenerationParams(prompt="p", model_id="a/b", width=8, height=8))
    configure(simulator, failure_rate=1.0)
    failed = generate(simulator, GenerationParams(prompt="p", model_id="a/b", width=8, height=8))
    assert failed["status"] == "failed" and "Simulated failure" in failed["error"]
    assert failed["output"] is None
    stats = simulator.get("/_simulator/stats").json()
    assert stats["predictions_created"] == 4
    assert stats["statuses"] == {"succeeded": 3, "failed": 1}
    assert stats["simulator"] is True
    simulator.post("/_simulator/reset").raise_for_status()
    assert simulator.get("/_simulator/stats").json()["predictions_created"] == 0


def test_invalid_input_is_422_in_replicates_shape(simulator: httpx.Client) -> None:
    response = simulator.post(
        "/v1/models/black-forest-labs/flux-schnell/predictions",
        json={"input": {"prompt": "p", "aspect_ratio": "7:4", "num_inference_steps": 30}},
    )
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == 422 and body["title"] == "Input validation failed"
    assert "aspect_ratio" in body["detail"] and "num_inference_steps" in body["detail"]
    missing = simulator.post("/v1/models/recraft-ai/recraft-v3/predictions", json={"input": {}})
    assert missing.status_code == 422 and "prompt: is required" in missing.json()["detail"]
    assert simulator.get("/_simulator/stats").json()["predictions_created"] == 0


def test_requires_a_bearer_token(sim: BackgroundServer) -> None:
    response = httpx.get(f"{sim.url}/v1/predictions/x", timeout=5)
    assert response.status_code == 401
    assert response.json()["status"] == 401


def test_says_it_is_a_simulator_everywhere(simulator: httpx.Client) -> None:
    for response in (
        simulator.get("/no/such/route"),
        simulator.get("/_simulator/stats"),
        simulator.post("/v1/predictions", json={"version": "x", "input": {}}),
        simulator.get("/v1/predictions/none"),
    ):
        assert response.headers["x-replicate-simulator"] == "true"
        assert response.json()["simulator"] is True


def test_rate_limit_and_server_error_knobs(simulator: httpx.Client) -> None:
    configure(simulator, rate_limit_rate=1.0, retry_after_seconds=7)
    limited = simulator.get("/v1/predictions/x")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    configure(simulator, rate_limit_rate=0.0, server_error_rate=1.0)
    assert simulator.get("/v1/predictions/x").status_code == 503
    stats = simulator.get("/_simulator/stats").json()
    assert stats["rate_limited"] == 1 and stats["server_errors"] == 1


def test_output_expires_after_ttl(simulator: httpx.Client) -> None:
    prediction = generate(
        simulator, GenerationParams(prompt="p", model_id="a/b", width=8, height=8)
    )
    assert simulator.get(output_url(prediction)).status_code == 200  # within the hour
    configure(simulator, output_ttl_seconds=0)  # the same prediction, its time now up
    assert simulator.get(output_url(prediction)).status_code == 404


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


def test_runtime_config_rejects_unknown_settings(simulator: httpx.Client) -> None:
    assert simulator.post("/_simulator/config", json={"nope": 1}).status_code == 400
    assert simulator.get("/_simulator/config").json()["latency_seconds"] == 0.05


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


def test_lists_predictions_newest_first_by_cursor(simulator: httpx.Client) -> None:
    configure(simulator, page_size=2)
    created = [
        generate(simulator, GenerationParams(prompt=f"p{i}", model_id="a/b", width=8, height=8))
        for i in range(5)
    ]
    first = simulator.get("/v1/predictions").json()
    assert [p["id"] for p in first["results"]] == [created[4]["id"], created[3]["id"]]
    assert first["results"][0]["input"] == created[4]["input"]
    assert {"id", "status", "created_at", "input", "model", "version", "urls"} <= set(
        first["results"][0]
    )
    # A prediction created meanwhile does not shift the pages that follow.
    generate(simulator, GenerationParams(prompt="late", model_id="a/b", width=8, height=8))
    ids, page = [p["id"] for p in first["results"]], first
    while page["next"]:
        assert page["next"].startswith(str(simulator.base_url).rstrip("/") + "/v1/predictions?")
        page = simulator.get(page["next"]).json()
        ids += [p["id"] for p in page["results"]]
    assert ids == [p["id"] for p in reversed(created)]
    assert simulator.get("/_simulator/stats").json()["list_requests"] == 3


def test_fail_prompts_fails_exactly_those(simulator: httpx.Client) -> None:
    configure(simulator, fail_prompts=["[doomed]"])
    doomed = generate(simulator, GenerationParams(prompt="a [doomed] cat", model_id="a/b"))
    fine = generate(simulator, GenerationParams(prompt="a cat", model_id="a/b"))
    assert doomed["status"] == "failed" and "fail_prompts" in doomed["error"]
    assert fine["status"] == "succeeded"
