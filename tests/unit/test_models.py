"""The Replicate input of every model family, exactly as docs/CONTRACT.md §4 lists it."""

from __future__ import annotations

from typing import Any

import pytest

from worker.models import (
    CONTENT_TYPES,
    FAMILIES,
    FLUX_SCHNELL_RATIOS,
    GenerationParams,
    InvalidParameters,
    aspect_ratio,
    build_replicate_input,
    expected_size,
    family_for,
    first_output_url,
    output_format,
    prediction_request,
    snap_aspect_ratio,
    takes_source_image,
)

IMAGE = "data:image/png;base64,iVBORw0KGgo="


def params(model_id: str, **overrides: Any) -> GenerationParams:
    values: dict[str, Any] = {
        "prompt": "a red fox",
        "model_id": model_id,
        "width": 1344,
        "height": 768,
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
    }
    return GenerationParams.from_payload(values | overrides)


def test_from_payload_defaults_and_nulls() -> None:
    p = GenerationParams.from_payload(
        {"prompt": "x", "model_id": "a/b", "width": None, "seed": None, "model_version": ""}
    )
    assert (p.width, p.height, p.num_inference_steps, p.guidance_scale) == (1024, 1024, 30, 7.5)
    assert p.seed is None and p.model_version is None and p.strength is None


def test_from_payload_keeps_zeroes_and_converts_strings() -> None:
    p = GenerationParams.from_payload(
        {"prompt": "x", "model_id": "a/b", "guidance_scale": 0, "seed": "0", "strength": "0.25"}
    )
    assert p.guidance_scale == 0 and p.seed == 0 and p.strength == 0.25


@pytest.mark.parametrize(
    "payload",
    [
        {"model_id": "a/b"},
        {"prompt": "x"},
        {"prompt": "x", "model_id": "a/b", "width": "wide"},
        {"prompt": "x", "model_id": "a/b", "width": 0},
    ],
)
def test_from_payload_refuses_bad_payloads(payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameters) as caught:
        GenerationParams.from_payload(payload)
    assert caught.value.retryable is False


def test_aspect_ratio_is_reduced_by_gcd() -> None:
    assert aspect_ratio(1920, 1080) == "16:9"
    assert aspect_ratio(1344, 768) == "7:4"
    assert aspect_ratio(1000, 700) == "10:7"


@pytest.mark.parametrize(
    ("size", "snapped"),
    [
        ((1024, 1024), "1:1"),
        ((1920, 1080), "16:9"),
        ((1344, 768), "16:9"),  # 7:4
        ((768, 1344), "9:16"),  # mirrored
        ((2048, 1024), "16:9"),  # 2:1
        ((3000, 1000), "21:9"),  # 3:1
        ((1000, 3000), "9:21"),
        ((1100, 1000), "1:1"),
        ((1200, 1000), "5:4"),
        ((1000, 1300), "3:4"),
        ((1200, 800), "3:2"),
    ],
)
def test_flux_schnell_snaps_to_the_nearest_allowed_ratio(
    size: tuple[int, int], snapped: str
) -> None:
    assert snap_aspect_ratio(*size, FLUX_SCHNELL_RATIOS) == snapped
    assert (
        build_replicate_input(params("x/flux-schnell", width=size[0], height=size[1]), None)[
            "aspect_ratio"
        ]
        == snapped
    )


def test_flux_schnell() -> None:
    p = params("black-forest-labs/flux-schnell", seed=7, num_inference_steps=4, guidance_scale=0)
    assert build_replicate_input(p, IMAGE) == {
        "prompt": "a red fox",
        "num_inference_steps": 4,
        "guidance": 0,
        "num_outputs": 1,
        "aspect_ratio": "16:9",
        "output_format": "webp",
        "output_quality": 90,
    }
    assert expected_size(p) == (1820, 1024)
    assert expected_size(params("x/flux-schnell", width=800, height=1000)) == (1024, 1280)
    assert expected_size(params("x/flux-schnell", width=1000, height=1000)) == (1024, 1024)


@pytest.mark.parametrize(
    "model_id", ["black-forest-labs/flux-dev", "black-forest-labs/flux-krea-dev"]
)
def test_flux_dev_and_krea(model_id: str) -> None:
    p = params(model_id, seed=3)
    base = {
        "prompt": "a red fox",
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
        "num_outputs": 1,
        "width": 1344,
        "height": 768,
        "output_format": "webp",
        "output_quality": 90,
    }
    assert build_replicate_input(p, None) == base
    img2img = params(model_id, source_image_url="https://x.test/a.png", strength=0.7)
    assert build_replicate_input(img2img, IMAGE) == base | {
        "image": IMAGE,
        "prompt_strength": pytest.approx(0.3),
    }
    assert expected_size(p) == (1344, 768)


def test_ideogram() -> None:
    p = params("ideogram-ai/ideogram-v3-turbo")
    expected = {
        "prompt": "a red fox",
        "aspect_ratio": "7:4",
        "model": "turbo",
        "style_type": "auto",
    }
    assert build_replicate_input(p, None) == expected
    assert build_replicate_input(params("ideogram-ai/ideogram-v3-turbo", seed=0), None) == (
        expected | {"seed": 0}
    )
    assert expected_size(p) == (1792, 1024)


def test_imagen() -> None:
    p = params("google/imagen-4", seed=5, width=1024, height=1024)
    assert build_replicate_input(p, IMAGE) == {
        "prompt": "a red fox",
        "aspect_ratio": "1:1",
        "safety_tolerance": 2,
        "output_format": "png",
    }
    assert expected_size(p) == (1024, 1024)


def test_sdxl_lightning() -> None:
    p = params("bytedance/sdxl-lightning-4step", seed=11, num_inference_steps=30)
    base = {
        "prompt": "a red fox",
        "width": 1344,
        "height": 768,
        "num_inference_steps": 4,
        "guidance_scale": 0,
        "disable_safety_checker": False,
        "output_format": "webp",
        "output_quality": 90,
        "seed": 11,
    }
    assert build_replicate_input(p, None) == base
    img2img = params("bytedance/sdxl-lightning-4step", seed=11, strength=0.6)
    assert build_replicate_input(img2img, IMAGE) == base | {"image": IMAGE, "strength": 0.6}


def test_sdxl() -> None:
    p = params("stability-ai/sdxl", strength=0.65)
    base = {
        "prompt": "a red fox",
        "width": 1344,
        "height": 768,
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
        "refine": "expert_ensemble_refiner",
        "high_noise_frac": 0.8,
        "output_format": "webp",
        "output_quality": 90,
    }
    assert build_replicate_input(p, None) == base
    assert build_replicate_input(p, IMAGE) == base | {"image": IMAGE, "prompt_strength": 0.65}
    assert build_replicate_input(params("stability-ai/sdxl", seed=9), None)["seed"] == 9


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (1024, 1024, "1K"),
        (512, 1024, "1K"),
        (1025, 1024, "2K"),
        (2048, 2048, "2K"),
        (4095, 4095, "2K"),
        (4096, 2048, "4K"),
        (2048, 4096, "4K"),
    ],
)
def test_seedream_4_size_classes(width: int, height: int, size: str) -> None:
    p = params("bytedance/seedream-4", width=width, height=height, seed=1)
    assert build_replicate_input(p, None) == {
        "prompt": "a red fox",
        "size": size,
        "width": width,
        "height": height,
        "max_images": 1,
        "aspect_ratio": aspect_ratio(width, height),
    }
    assert expected_size(p) == (width, height)


def test_seedream_4_image_input_is_a_list() -> None:
    p = params("bytedance/seedream-4", source_image_url="https://x.test/a.png", strength=0.5)
    assert build_replicate_input(p, IMAGE)["image_input"] == [IMAGE]
    assert "image" not in build_replicate_input(p, IMAGE)


def test_seedream_3() -> None:
    p = params("bytedance/seedream-3", seed=4)
    assert build_replicate_input(p, IMAGE) == {
        "prompt": "a red fox",
        "width": 1344,
        "height": 768,
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
        "seed": 4,
    }


@pytest.mark.parametrize(
    "model_id", ["black-forest-labs/flux-1.1-pro", "black-forest-labs/flux-1.1-pro-ultra"]
)
def test_flux_pro(model_id: str) -> None:
    assert build_replicate_input(params(model_id, seed=2, width=768, height=1344), None) == {
        "prompt": "a red fox",
        "aspect_ratio": "4:7",
        "output_format": "webp",
        "output_quality": 90,
        "safety_tolerance": 2,
        "seed": 2,
    }
    assert expected_size(params(model_id, width=768, height=1344)) == (1024, 1792)


def test_recraft_svg() -> None:
    p = params("recraft-ai/recraft-v3-svg", seed=8, width=1024, height=1024)
    assert build_replicate_input(p, None) == {
        "prompt": "a red fox",
        "width": 1024,
        "height": 1024,
        "output_format": "svg",
        "style": "vector_illustration",
        "seed": 8,
    }


def test_recraft() -> None:
    p = params("recraft-ai/recraft-v3", seed=8, width=1365, height=1024)
    assert build_replicate_input(p, IMAGE) == {
        "prompt": "a red fox",
        "size": "1365x1024",
        "style": "realistic_image",
    }
    assert expected_size(p) == (1365, 1024)


@pytest.mark.parametrize(
    "model_id", ["stability-ai/stable-diffusion-3.5-large", "someone/sd-3-5-turbo"]
)
def test_stable_diffusion_35(model_id: str) -> None:
    assert build_replicate_input(params(model_id, seed=6), None) == {
        "prompt": "a red fox",
        "aspect_ratio": "7:4",
        "cfg": 3.5,
        "steps": 28,
        "output_format": "webp",
        "output_quality": 90,
        "seed": 6,
    }


def test_qwen() -> None:
    assert build_replicate_input(params("qwen/qwen-image", seed=1), None) == {
        "prompt": "a red fox",
        "aspect_ratio": "7:4",
        "num_inference_steps": 28,
        "guidance": 3.5,
        "go_fast": True,
        "image_size": "optimize_for_quality",
        "output_format": "webp",
        "output_quality": 90,
        "enhance_prompt": False,
        "disable_safety_checker": False,
        "seed": 1,
    }


def test_anything_else() -> None:
    p = params("playgroundai/playground-v2.5-1024px-aesthetic", negative_prompt="blurry")
    expected = {
        "prompt": "a red fox",
        "width": 1344,
        "height": 768,
        "num_inference_steps": 28,
        "guidance_scale": 3.5,
    }
    assert build_replicate_input(p, IMAGE) == expected
    assert build_replicate_input(
        params("playgroundai/playground-v2.5-1024px-aesthetic", seed=12), None
    ) == expected | {"seed": 12}
    assert family_for("anyone/anything").name == "default"
    assert expected_size(p) == (1344, 768)


def test_first_match_wins_in_contract_order() -> None:
    assert family_for("bytedance/sdxl-lightning-4step").name == "sdxl-lightning"
    assert family_for("stability-ai/sdxl").name == "sdxl"
    assert family_for("bytedance/seedream-4").name == "seedream-4"
    assert family_for("bytedance/seedream-3").name == "seedream"
    assert family_for("recraft-ai/recraft-v3-svg").name == "recraft-v3-svg"
    assert family_for("recraft-ai/recraft-v3").name == "recraft"
    assert family_for("black-forest-labs/flux-krea-dev").name == "flux-dev"


def test_source_image_families() -> None:
    with_image = [f.name for f in FAMILIES if takes_source_image(f.matches[0])]
    assert with_image == ["flux-dev", "sdxl-lightning", "sdxl", "seedream-4"]


def test_prediction_request_versioned_and_by_model() -> None:
    versioned = params("stability-ai/sdxl", model_version="39ed52f2")
    replicate_input = build_replicate_input(versioned, None)
    assert prediction_request(versioned, replicate_input) == (
        "/predictions",
        {"version": "39ed52f2", "input": replicate_input},
    )
    official = params("black-forest-labs/flux-schnell")
    assert prediction_request(official, {"prompt": "p"}) == (
        "/models/black-forest-labs/flux-schnell/predictions",
        {"input": {"prompt": "p"}},
    )
    with pytest.raises(InvalidParameters):
        prediction_request(params("no-owner"), {})


@pytest.mark.parametrize(
    ("model_id", "url", "fmt"),
    [
        ("recraft-ai/recraft-v3-svg", "https://r.test/out.webp", "svg"),
        ("google/imagen-4", "https://r.test/out.jpg", "png"),
        ("x/flux-schnell", "https://r.test/out.png", "png"),
        ("x/flux-schnell", "https://r.test/out.JPG", "jpeg"),
        ("x/flux-schnell", "https://r.test/out.jpeg?sig=1", "jpeg"),
        ("x/flux-schnell", "https://r.test/out.webp", "webp"),
        ("x/flux-schnell", "https://r.test/out", "webp"),
        ("x/flux-schnell", "https://r.test/a.png/out.gif", "webp"),
    ],
)
def test_output_format(model_id: str, url: str, fmt: str) -> None:
    assert output_format(model_id, url) == fmt
    assert fmt in CONTENT_TYPES


def test_content_types() -> None:
    assert CONTENT_TYPES == {
        "webp": "image/webp",
        "png": "image/png",
        "jpeg": "image/jpeg",
        "svg": "image/svg+xml",
    }


def test_first_output_url() -> None:
    assert first_output_url("https://a/1.webp") == "https://a/1.webp"
    assert first_output_url(["https://a/1.png", "https://a/2.png"]) == "https://a/1.png"
    assert first_output_url({"url": "https://a/1.jpg"}) == "https://a/1.jpg"
    assert first_output_url([{"url": "https://a/1.jpg"}]) == "https://a/1.jpg"
    assert first_output_url([]) is None
    assert first_output_url(None) is None
