"""What a stored image is: its format and dimensions, read from its own bytes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

import blurhash
import py_svg_hush
from PIL import Image, UnidentifiedImageError

from worker.errors import PermanentJobError

_PIL_FORMATS = {"WEBP": "webp", "PNG": "png", "JPEG": "jpeg"}
_SVG_ROOT = re.compile(rb"<svg\b[^>]*>", re.IGNORECASE | re.DOTALL)
_SVG_LENGTH = re.compile(rb'\b(width|height)\s*=\s*["\']\s*([0-9.]+)\s*(px)?\s*["\']')
_SVG_VIEWBOX = re.compile(
    rb'\bviewBox\s*=\s*["\']\s*[-0-9.]+[ ,]+[-0-9.]+[ ,]+([0-9.]+)[ ,]+([0-9.]+)'
)


# A BlurHash is computed from a thumbnail this many pixels on its longer side: the hash
# keeps only a few cosine components, so more pixels change nothing visible but the cost.
PREVIEW_EDGE = 32
# Components along the longer and the shorter side (BlurHash's recommended 4 by 3).
PREVIEW_COMPONENTS = (4, 3)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def inspect_image(source: BinaryIO) -> ImageInfo:
    """Format and size from the header (Pillow reads no pixels); SVG from its root tag."""
    source.seek(0)
    head = source.read(8192)
    source.seek(0)
    if root := _SVG_ROOT.search(head):
        return _svg_info(root.group(0))
    try:
        with Image.open(source) as image:
            fmt = _PIL_FORMATS.get(image.format or "")
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise PermanentJobError("The model returned a file that is not a readable image") from exc
    finally:
        source.seek(0)
    if fmt is None:
        raise PermanentJobError(f"The model returned an unsupported image format: {image.format}")
    return ImageInfo(fmt, width, height)


def preview_hash(source: BinaryIO, info: ImageInfo) -> str | None:
    """The BlurHash of a raster image, from the bytes being stored (decoded at thumbnail
    size: JPEG's draft mode decodes at a fraction of full scale). None for an SVG, which
    would need a renderer (docs/CONTRACT.md, "images")."""
    if info.format == "svg":
        return None
    source.seek(0)
    try:
        with Image.open(source) as image:
            image.draft("RGB", (PREVIEW_EDGE, PREVIEW_EDGE))
            image.thumbnail((PREVIEW_EDGE, PREVIEW_EDGE))
            thumbnail = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:  # a header fine, its pixels not
        raise PermanentJobError("The model returned a file that is not a readable image") from exc
    finally:
        source.seek(0)
    width, height = thumbnail.size
    pixels = list(thumbnail.get_flattened_data())
    rows = [pixels[y * width : (y + 1) * width] for y in range(height)]
    longer, shorter = PREVIEW_COMPONENTS
    x, y = (longer, shorter) if width >= height else (shorter, longer)
    return str(blurhash.encode(rows, components_x=x, components_y=y))


def _svg_info(root: bytes) -> ImageInfo:
    sizes = {name.decode(): float(value) for name, value, _ in _SVG_LENGTH.findall(root)}
    if viewbox := _SVG_VIEWBOX.search(root):
        sizes.setdefault("width", float(viewbox.group(1)))
        sizes.setdefault("height", float(viewbox.group(2)))
    width, height = round(sizes.get("width", 0)), round(sizes.get("height", 0))
    if width <= 0 or height <= 0:
        raise PermanentJobError("The model returned an SVG without a size")
    return ImageInfo("svg", width, height)


def sanitize_svg(spool: BinaryIO) -> int:
    """Rewrite the SVG in `spool` without scripts, event handlers, external references
    or anything else svg-hush does not know to be inert; returns its new size. Stored
    SVGs are served from our storage's origin, where a script would run as ours."""
    spool.seek(0)
    try:
        clean = py_svg_hush.filter_svg(spool.read())
    except ValueError as exc:  # malformed XML, or not XML at all
        raise PermanentJobError("The model returned an SVG that is not well-formed") from exc
    spool.seek(0)
    spool.truncate()
    spool.write(clean)
    spool.seek(0)
    return len(clean)
