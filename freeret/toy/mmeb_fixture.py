"""The toy MMEB (``dataset.source=fixture``, what ``mode=fast`` selects): a miniature built from the 8 bundled smoke
images, one JSONL per subset.

Rows follow each dataset config's modalities and instructions (``query_modality``,
``target_modality``, ``query_instruction``, ``meta_task``), so every MMEB config runs end
to end offline; with 8 candidates per row the scores say nothing about the method.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from freeret.paths import cache_dir
from freeret.toy.smoke import CAPTIONS, build_smoke_set

VERSION = "v1"


def fixture_root() -> Path:
    """Where the miniature lives (in the FreeRet cache)."""
    return cache_dir() / f"mmeb_fixture-{VERSION}"


def _image(root: Path, subset: str, name: str, crop: bool) -> str:
    """Relative path (under eval_images) of a bundled image, or of its centre crop for grounding targets."""
    rel = Path(subset) / f"{name}{'_crop' if crop else ''}.png"
    out = root / "eval_images" / rel
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(build_smoke_set().parent / "images" / f"{name}.png") as img:
            w, h = img.size
            (img.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)) if crop else img.copy()).save(out)
    return str(rel)


def _side(root: Path, cfg: Mapping[str, Any], role: str, name: str) -> tuple[str, str]:
    """(text, image path) of one query or target about bundled image ``name``."""
    modality = str(cfg.get(f"{role}_modality", "text"))
    instruction = str(cfg.get(f"{role}_instruction") or "")
    meta = cfg.get("meta_task")
    image = _image(root, str(cfg["subset"]), name, crop=meta == "grounding" and role == "target") if "image" in modality else ""
    if role == "query":
        content = {"classification": "", "vqa": "What is shown?", "grounding": name}.get(str(meta), CAPTIONS[name])
    else:
        content = name if meta in ("classification", "vqa") else CAPTIONS[name]
    if "text" not in modality:
        content = ""
    text = " ".join(t for t in (instruction, content) if t)
    return (f"<|image_1|>\n{text}" if image and text else text), image


def build_mmeb_fixture(cfg: Mapping[str, Any], root: Path | None = None) -> Path:
    """Write ``<root>/<subset>.jsonl`` for this dataset config (once); return the root."""
    root = root or fixture_root()
    subset = str(cfg["subset"])
    out = root / f"{subset}.jsonl"
    if out.exists():
        return root
    names = list(CAPTIONS)
    rows = []
    for i, name in enumerate(names):
        order = [name] + names[i + 1:] + names[:i]
        q_text, q_image = _side(root, cfg, "query", name)
        targets = [_side(root, cfg, "target", n) for n in order]
        rows.append({"id": f"{subset}-{name}", "qry_text": q_text, "qry_img_path": q_image,
                     "tgt_text": [t for t, _ in targets], "tgt_img_path": [im for _, im in targets]})
    root.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, out)
    return root
