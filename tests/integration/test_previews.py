"""Previews (worker/images.py, sql/0086): every stored raster image gets the BlurHash of
its own bytes and its true size, on every format the simulator renders; an SVG's is null."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from blurhash import components as hash_components
from blurhash import decode
from blurhash.blurhash import base83_decode
from PIL import Image

from devstack.simulator import render_image
from tests.conftest import make_user
from tests.support.generations import start_generation
from tests.support.stack import Stack
from tests.support.workers import run_worker_until
from worker.images import inspect_image, preview_hash

RASTER = {"webp": "WEBP", "png": "PNG", "jpg": "JPEG"}  # what the simulator saves, by extension


def solid(ext: str, color: tuple[int, int, int], size: tuple[int, int]) -> io.BytesIO:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=RASTER[ext], quality=95)
    out.seek(0)
    return out


def average_color(blurhash: str) -> tuple[int, int, int]:
    """The hash's DC component: the image's average colour, in sRGB."""
    value = base83_decode(blurhash[2:6])
    return value >> 16, (value >> 8) & 255, value & 255


@pytest.mark.parametrize("ext", sorted(RASTER))
def test_the_hash_holds_the_images_colour(ext: str) -> None:
    source = solid(ext, (200, 40, 90), (640, 360))
    hashed = preview_hash(source, inspect_image(source))
    assert hashed is not None
    assert all(abs(a - b) <= 3 for a, b in zip(average_color(hashed), (200, 40, 90), strict=True))
    assert source.tell() == 0  # the spool is handed back rewound, for the upload


@pytest.mark.parametrize("ext", sorted(RASTER))
@pytest.mark.parametrize(
    ("width", "height", "components"), [(1024, 768, (4, 3)), (512, 896, (3, 4))]
)
def test_simulator_images_get_a_hash_shaped_like_them(
    ext: str, width: int, height: int, components: tuple[int, int]
) -> None:
    source = io.BytesIO(render_image(width, height, ext, "a lighthouse", seed=3))
    info = inspect_image(source)
    assert (info.width, info.height) == (width, height)
    hashed = preview_hash(source, info)
    assert hashed is not None
    assert hash_components(hashed) == components
    assert len(decode(hashed, 8, 6)) == 6  # a well-formed hash decodes
    other = preview_hash(io.BytesIO(render_image(width, height, ext, "a lighthouse", 4)), info)
    assert other != hashed  # it says something about the picture


def test_an_svg_has_no_hash() -> None:
    source = io.BytesIO(render_image(300, 200, "svg", "a lighthouse", seed=3))
    info = inspect_image(source)
    assert (info.format, info.width, info.height) == ("svg", 300, 200)
    assert preview_hash(source, info) is None


def test_a_file_whose_pixels_are_broken_is_refused() -> None:
    whole = solid("png", (1, 2, 3), (400, 300)).getvalue()
    source = io.BytesIO(whole[: len(whole) // 2])
    with pytest.raises(Exception, match="not a readable image"):
        preview_hash(source, inspect_image(source))


# One model per format the simulator returns (devstack/simulator.py, native formats).
FORMAT_MODELS = {
    "webp": "black-forest-labs/flux-schnell",
    "png": "ideogram-ai/ideogram-v3-turbo",
    "jpeg": "bytedance/seedream-3",
    "svg": "recraft-ai/recraft-v3-svg",
}


async def test_stored_images_carry_the_hash_of_their_stored_bytes(
    conn: psycopg.Connection[Any], database_url: str, stack: Stack
) -> None:
    user = make_user(conn)
    ids = [start_generation(conn, user, model) for model in FORMAT_MODELS.values()]
    rows = await run_worker_until(stack.settings("postgres"), database_url, ids)
    assert {row["status"] for row in rows.values()} == {"completed"}

    images = conn.execute("select * from images where generation_id = any(%s)", (ids,)).fetchall()
    assert {image["format"] for image in images} == set(FORMAT_MODELS)
    async with httpx.AsyncClient(timeout=10) as http:
        for image in images:
            stored = io.BytesIO((await http.get(image["public_url"])).content)
            info = inspect_image(stored)
            assert (image["width"], image["height"]) == (info.width, info.height)
            assert image["blurhash"] == preview_hash(stored, info)
            assert (image["blurhash"] is None) == (image["format"] == "svg")
    assert all(isinstance(gid, uuid.UUID) for gid in ids)
