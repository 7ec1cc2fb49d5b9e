"""The toy smoke set (``dataset.kind=smoke``, ``dataset=smoke_mm``): 8 images bundled with scikit-image and scikit-learn.

Image->caption and caption->image rows in the MMEB format; built once into the cache.
It exercises the image path end to end; it is far too small for a benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from freeret.data.retrieval_set import RetrievalSet, load_mmeb
from freeret.paths import cache_dir

CAPTIONS: dict[str, str] = {
    "astronaut": "a portrait of an astronaut in a spacesuit in front of a flag",
    "coffee": "a cup of coffee on a saucer",
    "chelsea": "a ginger cat looking to the side",
    "rocket": "a rocket on a launch pad",
    "camera": "a black and white photo of a man with a camera on a tripod",
    "coins": "a grid of old coins",
    "china": "a chinese temple with a pagoda roof",
    "flower": "a close-up of a pink flower",
}
VERSION = "v1"


def smoke_image(name: str) -> np.ndarray:
    """The bundled image ``name`` (a key of ``CAPTIONS``) as its package ships it."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    return getattr(skimage.data, name)()


def build_smoke_set(root: Path | None = None) -> Path:
    """Write images and ``smoke.jsonl`` (once); return the JSONL path."""
    root = root or cache_dir() / f"smoke_mm-{VERSION}"
    out = root / "smoke.jsonl"
    if out.exists():
        return out
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(CAPTIONS)
    for name in names:
        img = Image.fromarray(smoke_image(name)).convert("RGB")
        img.thumbnail((128, 128))
        img.save(root / "images" / f"{name}.png")
    rows = []
    for i, name in enumerate(names):
        order = [name] + names[i + 1 :] + names[:i]
        rows.append({"id": f"i2t-{name}", "qry_text": "", "qry_img_path": f"images/{name}.png",
                     "tgt_text": [CAPTIONS[n] for n in order], "tgt_img_path": [""] * len(order)})
        rows.append({"id": f"t2i-{name}", "qry_text": CAPTIONS[name], "qry_img_path": "",
                     "tgt_text": [""] * len(order), "tgt_img_path": [f"images/{n}.png" for n in order]})
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(out)
    return out


def load_smoke_set(cfg: Mapping[str, Any]) -> RetrievalSet:
    """``dataset.kind=smoke``: the smoke set as a RetrievalSet (built on first use)."""
    name = str(cfg.get("name", "smoke"))
    return load_mmeb(name, build_smoke_set(), limit=cfg.get("limit"), pool=str(cfg.get("pool", "rows")))
