"""Model input builders: what each Replicate model family receives (docs/CONTRACT.md §4).

Families are data: a table matched by substring of `model_id`, in the contract's order,
first match wins. Each row names a small pure function building the base input, how an
image-to-image source is passed, whether a seed is sent, and how the output is sized.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from worker.errors import JobError

Input = dict[str, Any]
T = TypeVar("T")

DEFAULT_WIDTH = 1024
DEFAULT_HEIGHT = 1024
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5

# flux-schnell accepts only these; other sizes snap to the nearest.
FLUX_SCHNELL_RATIOS = (
    "1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21",
)  # fmt: skip
ASPECT_RATIO_SHORT_SIDE = 1024

CONTENT_TYPES = {
    "webp": "image/webp",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "svg": "image/svg+xml",
}

_WEBP_90 = {"output_format": "webp", "output_quality": 90}


class InvalidParameters(JobError, ValueError):
    """The generation parameters cannot be sent to any model; retrying cannot help."""

    retryable = False


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    model_id: str
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    model_version: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    source_image_url: str | None = None
    strength: float | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> GenerationParams:
        """From a `generate-image` job payload (docs/CONTRACT.md §1) or a request body.
        Missing or null values take the defaults; a 0 stays 0 (guidance 0 is valid)."""
        try:
            params = cls(
                prompt=str(_required(payload, "prompt")),
                model_id=str(_required(payload, "model_id")),
                model_version=_text(payload.get("model_version")),
                width=int(_value(payload, "width", DEFAULT_WIDTH)),
                height=int(_value(payload, "height", DEFAULT_HEIGHT)),
                num_inference_steps=int(_value(payload, "num_inference_steps", DEFAULT_STEPS)),
                guidance_scale=float(_value(payload, "guidance_scale", DEFAULT_GUIDANCE_SCALE)),
                seed=_optional(payload, "seed", int),
                negative_prompt=_text(payload.get("negative_prompt")),
                source_image_url=_text(payload.get("source_image_url")),
                strength=_optional(payload, "strength", float),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidParameters):
                raise
            raise InvalidParameters(f"Invalid generation parameters: {exc}") from exc
        if params.width <= 0 or params.height <= 0:
            raise InvalidParameters("width and height must be positive")
        return params


def _required(payload: Mapping[str, Any], key: str) -> Any:
    value = payload.get(key)
    if value is None or value == "":
        raise InvalidParameters(f"{key} is required")
    return value


def _value(payload: Mapping[str, Any], key: str, default: Any) -> Any:
    value = payload.get(key)
    return default if value is None or value == "" else value


def _optional(payload: Mapping[str, Any], key: str, kind: Callable[[Any], T]) -> T | None:
    value = payload.get(key)
    return None if value is None or value == "" else kind(value)


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


# Aspect ratios and sizes.


def aspect_ratio(width: int, height: int) -> str:
    """width:height reduced by their gcd, e.g. 1920x1080 -> "16:9"."""
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def _ratio_value(ratio: str) -> float:
    w, _, h = ratio.partition(":")
    return int(w) / int(h)


def snap_aspect_ratio(width: int, height: int, allowed: tuple[str, ...]) -> str:
    """The allowed ratio nearest to width:height; compared in log scale so that a
    portrait size and its landscape mirror snap to mirrored ratios."""
    exact = aspect_ratio(width, height)
    if exact in allowed:
        return exact
    target = math.log(width / height)
    return min(allowed, key=lambda ratio: abs(math.log(_ratio_value(ratio)) - target))


def seedream_size_class(width: int, height: int) -> str:
    if width <= 1024 and height <= 1024:
        return "1K"
    if width >= 4096 or height >= 4096:
        return "4K"
    return "2K"


def _round_half_up(value: float) -> int:
    return int(value + 0.5)


def _size_from_aspect_ratio(replicate_input: Mapping[str, Any]) -> tuple[int, int]:
    w, _, h = str(replicate_input["aspect_ratio"]).partition(":")
    a, b = int(w), int(h)
    if a >= b:
        return _round_half_up(ASPECT_RATIO_SHORT_SIDE * a / b), ASPECT_RATIO_SHORT_SIDE
    return ASPECT_RATIO_SHORT_SIDE, _round_half_up(ASPECT_RATIO_SHORT_SIDE * b / a)


def _size_from_width_height(replicate_input: Mapping[str, Any]) -> tuple[int, int]:
    return int(replicate_input["width"]), int(replicate_input["height"])


def _size_from_size_string(replicate_input: Mapping[str, Any]) -> tuple[int, int]:
    w, _, h = str(replicate_input["size"]).partition("x")
    return int(w), int(h)


# Base inputs, one per family (no seed, no source image: the table adds those).


def _flux_schnell(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "num_inference_steps": p.num_inference_steps,
        "guidance": p.guidance_scale,
        "num_outputs": 1,
        "aspect_ratio": snap_aspect_ratio(p.width, p.height, FLUX_SCHNELL_RATIOS),
        **_WEBP_90,
    }


def _flux_dev(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "num_inference_steps": p.num_inference_steps,
        "guidance_scale": p.guidance_scale,
        "num_outputs": 1,
        "width": p.width,
        "height": p.height,
        **_WEBP_90,
    }


def _ideogram(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "aspect_ratio": aspect_ratio(p.width, p.height),
        "model": "turbo",
        "style_type": "auto",
    }


def _imagen(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "aspect_ratio": aspect_ratio(p.width, p.height),
        "safety_tolerance": 2,
        "output_format": "png",
    }


def _sdxl_lightning(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "width": p.width,
        "height": p.height,
        "num_inference_steps": 4,
        "guidance_scale": 0,
        "disable_safety_checker": False,
        **_WEBP_90,
    }


def _sdxl(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "width": p.width,
        "height": p.height,
        "num_inference_steps": p.num_inference_steps,
        "guidance_scale": p.guidance_scale,
        "refine": "expert_ensemble_refiner",
        "high_noise_frac": 0.8,
        **_WEBP_90,
    }


def _seedream_4(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "size": seedream_size_class(p.width, p.height),
        "width": p.width,
        "height": p.height,
        "max_images": 1,
        "aspect_ratio": aspect_ratio(p.width, p.height),
    }


def _width_height_steps_guidance(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "width": p.width,
        "height": p.height,
        "num_inference_steps": p.num_inference_steps,
        "guidance_scale": p.guidance_scale,
    }


def _flux_pro(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "aspect_ratio": aspect_ratio(p.width, p.height),
        **_WEBP_90,
        "safety_tolerance": 2,
    }


def _recraft_svg(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "width": p.width,
        "height": p.height,
        "output_format": "svg",
        "style": "vector_illustration",
    }


def _recraft(p: GenerationParams) -> Input:
    return {"prompt": p.prompt, "size": f"{p.width}x{p.height}", "style": "realistic_image"}


def _sd35(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "aspect_ratio": aspect_ratio(p.width, p.height),
        "cfg": p.guidance_scale,
        "steps": p.num_inference_steps,
        **_WEBP_90,
    }


def _qwen(p: GenerationParams) -> Input:
    return {
        "prompt": p.prompt,
        "aspect_ratio": aspect_ratio(p.width, p.height),
        "num_inference_steps": p.num_inference_steps,
        "guidance": p.guidance_scale,
        "go_fast": True,
        "image_size": "optimize_for_quality",
        **_WEBP_90,
        "enhance_prompt": False,
        "disable_safety_checker": False,
    }


# How each image-to-image family takes its source image (a data URI) and strength.


def _image_prompt_strength_inverted(image: str, strength: float | None) -> Input:
    # flux-dev's prompt_strength is how much of the prompt wins, our strength the image's.
    extra = {} if strength is None else {"prompt_strength": round(1 - strength, 6)}
    return {"image": image, **extra}


def _image_strength(image: str, strength: float | None) -> Input:
    return {"image": image, **({} if strength is None else {"strength": strength})}


def _image_prompt_strength(image: str, strength: float | None) -> Input:
    return {"image": image, **({} if strength is None else {"prompt_strength": strength})}


def _image_input_list(image: str, _strength: float | None) -> Input:
    return {"image_input": [image]}


SizeRule = Callable[[Mapping[str, Any]], tuple[int, int]]
ImageRule = Callable[[str, float | None], Input]


@dataclass(frozen=True)
class Family:
    name: str
    matches: tuple[str, ...]
    build: Callable[[GenerationParams], Input]
    size: SizeRule
    seed: bool = True
    image: ImageRule | None = None


# docs/CONTRACT.md §4, in its order: first match wins ("sdxl-lightning" before "sdxl", ...).
FAMILIES: tuple[Family, ...] = (
    Family("flux-schnell", ("flux-schnell",), _flux_schnell, _size_from_aspect_ratio, seed=False),
    Family(
        "flux-dev",
        ("flux-krea-dev", "flux-dev"),
        _flux_dev,
        _size_from_width_height,
        seed=False,
        image=_image_prompt_strength_inverted,
    ),
    Family("ideogram", ("ideogram",), _ideogram, _size_from_aspect_ratio),
    Family("imagen", ("imagen",), _imagen, _size_from_aspect_ratio, seed=False),
    Family(
        "sdxl-lightning",
        ("sdxl-lightning",),
        _sdxl_lightning,
        _size_from_width_height,
        image=_image_strength,
    ),
    Family("sdxl", ("sdxl",), _sdxl, _size_from_width_height, image=_image_prompt_strength),
    Family(
        "seedream-4",
        ("seedream-4",),
        _seedream_4,
        _size_from_width_height,
        seed=False,
        image=_image_input_list,
    ),
    Family("seedream", ("seedream",), _width_height_steps_guidance, _size_from_width_height),
    Family("flux-1.1-pro", ("flux-1.1-pro",), _flux_pro, _size_from_aspect_ratio),
    Family("recraft-v3-svg", ("recraft-v3-svg",), _recraft_svg, _size_from_width_height),
    Family("recraft", ("recraft",), _recraft, _size_from_size_string, seed=False),
    Family(
        "stable-diffusion-3.5", ("stable-diffusion-3.5", "sd-3-5"), _sd35, _size_from_aspect_ratio
    ),
    Family("qwen", ("qwen",), _qwen, _size_from_aspect_ratio),
)
DEFAULT_FAMILY = Family("default", (), _width_height_steps_guidance, _size_from_width_height)


def family_for(model_id: str) -> Family:
    model = model_id.lower()
    return next(
        (family for family in FAMILIES if any(m in model for m in family.matches)),
        DEFAULT_FAMILY,
    )


def takes_source_image(model_id: str) -> bool:
    """Whether the family sends a source image (others ignore `source_image_url`)."""
    return family_for(model_id).image is not None


def build_replicate_input(params: GenerationParams, image_data_uri: str | None) -> Input:
    """The `input` object for Replicate; `image_data_uri` is the fetched source image."""
    family = family_for(params.model_id)
    replicate_input = family.build(params)
    if image_data_uri is not None and family.image is not None:
        replicate_input |= family.image(image_data_uri, params.strength)
    if family.seed and params.seed is not None:
        replicate_input["seed"] = params.seed
    return replicate_input


def prediction_request(params: GenerationParams, replicate_input: Input) -> tuple[str, Input]:
    """(path under the API base, JSON body): a version when given, else the model's
    own endpoint (official models take no version)."""
    if params.model_version:
        return "/predictions", {"version": params.model_version, "input": replicate_input}
    owner, _, name = params.model_id.partition("/")
    if not owner or not name or "/" in name:
        raise InvalidParameters(f"model_id must be owner/name, got {params.model_id!r}")
    return f"/models/{owner}/{name}/predictions", {"input": replicate_input}


def output_size(model_id: str, replicate_input: Mapping[str, Any]) -> tuple[int, int]:
    """What an image generated from this input measures (the simulator renders this)."""
    return family_for(model_id).size(replicate_input)


def expected_size(params: GenerationParams) -> tuple[int, int]:
    return output_size(params.model_id, build_replicate_input(params, None))


def output_format(model_id: str, output_url: str) -> str:
    """webp, png, jpeg or svg: what the stored file will be (docs/CONTRACT.md §4)."""
    family = family_for(model_id).name
    if family == "recraft-v3-svg":
        return "svg"
    if family == "imagen":
        return "png"
    path = urlsplit(output_url).path.lower()
    if path.endswith(".png"):
        return "png"
    if path.endswith((".jpg", ".jpeg")):
        return "jpeg"
    return "webp"


def first_output_url(output: Any) -> str | None:
    """Replicate outputs are a URL, a list of them, or an object with `url`. Anything
    else (a caption, a number, a file: or data: URI) is no image we can fetch: None."""
    if isinstance(output, list):
        output = output[0] if output else None
    if isinstance(output, Mapping):
        output = output.get("url")
    if not isinstance(output, str):
        return None
    parts = urlsplit(output.strip())
    return output.strip() if parts.scheme in ("http", "https") and parts.netloc else None
