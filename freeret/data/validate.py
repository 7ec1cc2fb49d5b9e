"""Check every unique item before embedding: bad ones are recorded, not fatal (unless ``strict``).

Images are opened with PIL's decompression-bomb guard, fully decoded, flattened to RGB
(CMYK, palette, LA/RGBA on white, 16-bit scaled to 8-bit), animated images reduced to their
first frame and images above ``max_pixels`` resized down keeping the aspect ratio. Texts longer
than the model's context are cut to it. Failures and notes go to ``<run_dir>/errors.jsonl`` and
``<run_dir>/warnings.jsonl``; rows whose query or positive failed count as misses.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from freeret.data.retrieval_set import RetrievalSet, Row
from freeret.errors import DataError

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


@dataclass
class Report:
    """What the checks found: failed items and rows (errors) and notes (warnings)."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    failed_items: set[str] = field(default_factory=set)
    bad_rows: int = 0

    def counts(self) -> dict[str, int]:
        """Numbers for the results file."""
        return {"failed_items": len(self.failed_items), "bad_rows": self.bad_rows, "warnings": len(self.warnings)}

    def write(self, run_dir: Path, dataset: str) -> None:
        """Write ``errors.jsonl`` and ``warnings.jsonl`` under ``run_dir`` (atomically; empty files when clean).

        Every record names its dataset; a benchmark's datasets share the two files, and a rerun of one
        dataset replaces only that dataset's records.
        """
        from freeret.eval.results import write_text_atomic

        for name, records in (("errors.jsonl", self.errors), ("warnings.jsonl", self.warnings)):
            path = run_dir / name
            kept = []
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("dataset") != dataset]
            mine = [json.dumps({"dataset": dataset, **r}, sort_keys=True) for r in records]
            write_text_atomic(path, "".join(line + "\n" for line in kept + mine))


def _rows_of(rset: RetrievalSet) -> dict[str, list[str]]:
    """Item key -> ids of the rows that use it."""
    uses: dict[str, list[str]] = {}
    for row in rset.rows:
        for key in (row.query, *row.candidates):
            uses.setdefault(key, []).append(row.id)
    return uses


def check_set(
    rset: RetrievalSet,
    strict: bool = False,
    max_pixels: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    cut_tokens: Callable[[str, int], str] | None = None,
    max_text_tokens: int | None = None,
) -> Report:
    """Check rows and items of ``rset`` in place (long texts are cut); ``strict`` raises at the first failure."""
    from freeret.data.visual import is_clip, load_clip  # visual.py opens its frames with open_image

    report = Report()
    for problem in rset.problems:
        level = problem.get("level", "error")
        if strict and level == "error":
            raise DataError(f"{problem['where']}: {problem['reason']} (strict=true; set strict=false to record and go on)")
        (report.warnings if level == "warning" else report.errors).append({"kind": "row", **problem})
        report.bad_rows += level == "error"
    uses = _rows_of(rset)
    for key, item in list(rset.items.items()):
        base = {"kind": "item", "item": key, "role": item.role, "image": item.image, "rows": uses.get(key, [])}
        notes: list[str] = []
        reason = None
        if item.image is not None and is_clip(item.image):
            try:
                load_clip(item.image)
            except (ImageProblem, DataError, OSError) as exc:
                reason = f"video clip cannot be read: {exc}"
        elif item.image is not None:
            try:
                open_image(item.image, max_pixels, notes)
            except ImageProblem as exc:
                reason = str(exc)
        elif not item.text.strip():
            reason = "empty item: no text and no image"
        if reason is None and count_tokens and max_text_tokens and item.text:
            n = count_tokens(item.text)
            if n > max_text_tokens:
                rset.items[key] = replace(item, text=cut_tokens(item.text, max_text_tokens) if cut_tokens else item.text)
                notes.append(f"text of {n} tokens ({len(item.text)} characters) truncated to {max_text_tokens} tokens "
                             "to fit the model's context")
        if reason is not None:
            if strict:
                raise DataError(f"item {key} ({item.role}, rows {', '.join(base['rows'][:3])}): {reason} "
                                "(strict=true; set strict=false to record and go on)")
            report.errors.append({**base, "reason": reason})
            report.failed_items.add(key)
        report.warnings += [{**base, "reason": note} for note in notes]
    return report


def usable_rows(rset: RetrievalSet, failed: set[str]) -> tuple[RetrievalSet, list[str]]:
    """(the set restricted to rows that can be scored, ids of rows that are misses).

    A row is a miss when its query or its positive failed; a failed negative is dropped from the row.
    """
    rows: list[Row] = []
    missed: list[str] = []
    for row in rset.rows:
        if row.query in failed or row.candidates[0] in failed:
            missed.append(row.id)
            continue
        rows.append(replace(row, candidates=tuple(k for k in row.candidates if k not in failed)))
    keys = {k for r in rows for k in (r.query, *r.candidates)}
    items = {k: v for k, v in rset.items.items() if k in keys}
    return RetrievalSet(name=rset.name, rows=rows, items=items, problems=rset.problems), missed


def fold_misses(metrics: Mapping[str, float], scored: int, missed: int) -> dict[str, float]:
    """Averages over ``scored`` rows turned into averages over all rows, the ``missed`` ones scoring 0."""
    total = scored + missed
    return {k: (v * scored / total if total else 0.0) for k, v in metrics.items()}
