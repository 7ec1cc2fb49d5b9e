"""Vision-tower outputs per image file, computed once and reused by every prompt that shows the image.

In reranking, one candidate image appears in the pair prompts of many queries; its
features do not depend on the text around it, so the tower runs once per image. The
model receives them through transformers' ``mm_encoder_outputs`` instead of
``pixel_values`` (all families here accept it). Least-recently-used entries are dropped
past ``max_items`` so host memory stays bounded.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Sequence

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from freeret.backbone.families import IMAGE


class VisionFeatureCache:
    """Per-image pooled vision features keyed by image path."""

    def __init__(self, backbone: Any, max_items: int = 512) -> None:
        self.bb, self.max_items = backbone, max_items
        self.encode = backbone.model.model.get_image_features
        self.params = set(inspect.signature(self.encode).parameters)
        self.store: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.misses = 0

    @torch.no_grad()
    def features(self, path: str, image: Image.Image, images_in_prompt: int = 1) -> Any:
        """The tower's pooled output for one image (a tensor, or a 1-tuple of tensors).

        Families whose features depend on how many images share the prompt (LLaVA-OneVision
        drops its any-resolution tiles for multi-image prompts) are keyed by that count too.
        """
        count = images_in_prompt if self.bb.family.image_count_dependent else 1
        key = (path, count)
        if key in self.store:
            self.hits += 1
            self.store.move_to_end(key)
            return self.store[key]
        self.misses += 1
        inputs = self.bb.inputs([self.bb.render_parts([IMAGE] * count + [""])], [[image] * count])
        kwargs = {k: v.to(self.bb.device) for k, v in inputs.items() if k in self.params and isinstance(v, torch.Tensor)}
        pooled = self.encode(**kwargs, return_dict=True).pooler_output
        if isinstance(pooled, (list, tuple)):
            pooled = tuple(pooled[:1])
        self.store[key] = pooled
        if len(self.store) > self.max_items:
            self.store.popitem(last=False)
        return pooled

    def apply(self, inputs: dict[str, Any], paths: Sequence[Sequence[str]], images: Sequence[Sequence[Image.Image]]) -> dict[str, Any]:
        """Swap a batch's ``pixel_values`` for cached features; ``paths``/``images`` per sample, in prompt order."""
        parts = [self.features(p, im, len(row)) for row_p, row in zip(paths, images) for p, im in zip(row_p, row)]
        if isinstance(parts[0], (list, tuple)):
            pooled: Any = tuple(x for part in parts for x in part)
        else:
            pooled = torch.cat(parts)
        out = {k: v for k, v in inputs.items() if k != "pixel_values"}
        out["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
        return out
