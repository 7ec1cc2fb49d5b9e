"""Golden vectors: frozen h^Attn_L embeddings (text and image prompts) of every seeded tiny family, a seeded tiny
Gemma 3 (whose attention point differs) and the real SmolLM2, so that an upgrade that moves a hook point (or
changes what the model computes before it) fails here.

Tolerance: each vector's largest absolute difference must stay within ``RELATIVE`` (1e-5) of its largest absolute
component (SmolLM2's h^Attn_L has a component near 600, the tiny models' stay near 0.1; batching alone moves
SmolLM2's by ~1e-7 of that, a moved hook point by orders of magnitude more). Renew on purpose with
``FREERET_UPDATE_SNAPSHOTS=1`` (the files record the torch and transformers versions that wrote them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.backbone import Backbone
from freeret.backbone.families import Family, vision_families
from freeret.backbone.prefix import PrefixCache
from freeret.embed.layers import LayerSpec
from helpers import REPO, golden_mismatches, tiny_gemma3

GOLDEN = REPO / "tests" / "golden"
RELATIVE = 1e-5
ATTN_LAST = LayerSpec("attn", -1)
TEXTS = ["a domestic animal that barks and is kept as a pet", "ship"]
IMAGE_TEXT = "What is in the image?"


def _image() -> Image.Image:
    """A fixed 56x56 colour pattern (no file, no resampling)."""
    y, x = np.mgrid[0:56, 0:56]
    return Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))


def vectors(bb: Backbone) -> dict[str, torch.Tensor]:
    """h^Attn_L of the text prompts (one left-padded batch, plain and through the prefix cache) and, for vision
    families, of an image prompt."""
    inputs = bb.inputs([bb.render(t) for t in TEXTS])
    plain = bb.embed(inputs, ATTN_LAST)
    cache = PrefixCache(bb.model, min_prefix=2, family=bb.family)
    out = {f"text_{i}": v for i, v in enumerate(plain)}
    out.update({f"text_{i}_prefix_cache": v for i, v in enumerate(bb.embed(inputs, ATTN_LAST, cache))})
    assert cache.stats.prefix_forwards == 1  # the shared-prefix routine ran
    if bb.family.multimodal:
        out["image_0"] = bb.embed(bb.inputs([bb.render(IMAGE_TEXT, n_images=1)], [[_image()]]), ATTN_LAST)[0]
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def _mismatches(name: str, got: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative max differences above ``RELATIVE`` (or a renewal when FREERET_UPDATE_SNAPSHOTS=1)."""
    return golden_mismatches(GOLDEN / f"attn_last_{name}.safetensors", got,
                             {"texts": json.dumps(TEXTS), "image_text": IMAGE_TEXT}, RELATIVE)


def _backbone(name: str, smollm: Backbone) -> Backbone:
    if name == "smollm2_135m":
        return smollm
    if name == "tiny_gemma3":
        return tiny_gemma3(smollm)
    family = name.removeprefix("tiny_")
    return load_backbone(ModelSpec(name=name, family=family, source="tiny"))


MODELS = ["smollm2_135m", "tiny_gemma3", *(f"tiny_{f}" for f in vision_families())]


@pytest.mark.parametrize("name", MODELS)
def test_attn_last_vectors_are_frozen(name, smollm):
    bad = _mismatches(name, vectors(_backbone(name, smollm)))
    assert not bad, f"{name}: h^Attn_L moved beyond {RELATIVE} (relative max difference per vector): {bad}"


@pytest.mark.parametrize("name", ["smollm2_135m", "tiny_gemma3", "tiny_qwen2_vl"])
def test_a_moved_hook_point_fails_the_comparison(name, smollm, monkeypatch):
    """Reading one module later (the MLP's input: h^Attn after the pre-MLP norm) must not pass as the same point."""
    bb = _backbone(name, smollm)
    monkeypatch.setattr(Family, "attn_point", lambda self, layer: layer.mlp)
    monkeypatch.delenv("FREERET_UPDATE_SNAPSHOTS", raising=False)
    got = vectors(bb)
    bad = _mismatches(name, got)
    assert set(bad) == set(got) and min(bad.values()) > 100 * RELATIVE, bad
