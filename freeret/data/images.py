"""Open images as the pipeline uses them: PIL's decompression-bomb guard, full decoding, 8-bit RGB, a pixel budget.

Every mode is flattened to RGB (CMYK, palette, LA/RGBA on white, 16-bit scaled to 8-bit), an animated image is
reduced to its first frame, and an image above the run's budget (``images.max_pixels``, set once per run with
:func:`set_image_limit`) is resized down keeping its aspect ratio. :class:`ImageProblem` says why an image cannot
be used; :mod:`freeret.data.validate` records it against the item.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 4096 * 4096  # images above this many pixels are resized down (aspect kept)
BOMB_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's guard: above it an image is refused unread
_limits = {"max_pixels": DEFAULT_MAX_PIXELS}


class ImageProblem(Exception):
    """An image that cannot be used; the message is the reason recorded for it."""


def set_image_limit(max_pixels: int | None) -> None:
    """Set the resize budget every later ``open_image`` call uses (the run's ``images.max_pixels``)."""
    _limits["max_pixels"] = int(max_pixels or DEFAULT_MAX_PIXELS)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: str, max_pixels: int | None = None, notes: list[str] | None = None) -> Image.Image:
    """Open, fully decode and normalise one image; ImageProblem says why it cannot be used."""
    budget = int(max_pixels or _limits["max_pixels"])
    p = Path(path)
    if not p.is_file():
        raise ImageProblem(f"image file not found: {path}")
    if p.stat().st_size == 0:
        raise ImageProblem(f"image file is empty (0 bytes): {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                frames = int(getattr(img, "n_frames", 1) or 1)
                if frames > 1:
                    img.seek(0)
                    if notes is not None:
                        notes.append(f"animated image with {frames} frames: the first frame is used")
                img.load()
                out = _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(f"image refused by the decompression-bomb guard ({exc})") from exc
    except ImageProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise ImageProblem(f"image cannot be decoded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if w * h > budget:
        scale = math.sqrt(budget / (w * h))
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        out = out.resize(size, Image.Resampling.BICUBIC)
        if notes is not None:
            notes.append(f"image of {w}x{h} pixels resized to {size[0]}x{size[1]} (images.max_pixels={budget})")
    return out
