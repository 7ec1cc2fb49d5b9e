"""Vision-tower outputs per image, computed once and reused by every prompt that shows the image.

In reranking, one candidate image appears in the pair prompts of many queries; its features do not depend on
the text around it, so the tower runs once per image and the model receives them through transformers'
``mm_encoder_outputs`` instead of ``pixel_values`` (all families here accept it). The prompts themselves are
built from each image's :class:`~freeret.backbone.image_records.ImageRecord` (processed once, pixels dropped
after the tower ran), so a cached image is neither decoded nor preprocessed again.

Where it lives: the features stay on the model's device (GPU memory on a GPU), the records' small metadata on
the host. The bound is in bytes of features (``pipeline.vision_cache_mb``): an image costs tokens x hidden x
dtype bytes (Qwen2.5-VL-7B in bf16 at ~1 megapixel: ~1,300 tokens x 3,584 x 2 B, ~9 MB; LLaVA-OneVision's
any-resolution tiles and InternVL's tiles several times that), and the least recently used images go first.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from freeret.backbone.image_records import ImageRecord, frame_key, preprocess_visual, record_inputs
from freeret.data.visual import frame_count

MiB = 2**20


@dataclass
class CacheStats:
    """What the cache did: lookups served, tower runs, evictions, images decoded and processed by the caller."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    records_received: int = 0  # processed elsewhere (DataLoader workers) and handed in
    images_preprocessed: int = 0  # decoded and processed here, in the caller's process


@dataclass
class _Entry:
    features: Any  # a tensor, or a 1-tuple of tensors, on the model's device
    record: ImageRecord  # without pixels
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        parts = self.features if isinstance(self.features, (list, tuple)) else [self.features]
        self.nbytes = sum(t.numel() * t.element_size() for t in parts)


class VisionFeatureCache:
    """Per-image vision features on the model's device, least recently used dropped past ``max_mb`` MiB.

    Keys are (image key, images in the prompt): families whose features depend on how many images share a
    prompt (LLaVA-OneVision drops its any-resolution tiles for multi-image prompts) are keyed by that count too.
    """

    def __init__(self, backbone: Any, max_mb: float = 2048) -> None:
        self.bb, self.max_bytes = backbone, int(max_mb * MiB)
        self.encode = backbone.family.image_encoder(backbone.model)
        self.params = set(inspect.signature(self.encode).parameters)
        self.store: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self.nbytes = 0
        self.stats = CacheStats()
        self.pending: dict[tuple[str, int], list[ImageRecord]] = {}

    @property
    def hits(self) -> int:
        return self.stats.hits

    @property
    def misses(self) -> int:
        return self.stats.misses

    def count(self, images_in_prompt: int) -> int:
        """The count part of a key: images in the prompt where features depend on it, else 1."""
        return images_in_prompt if self.bb.family.image_count_dependent else 1

    def receive(self, records: Mapping[tuple[str, int], list[ImageRecord]]) -> None:
        """Records of visuals processed elsewhere (by DataLoader workers), used instead of decoding here."""
        self.pending.update(records)
        self.stats.records_received += sum(len(r) for r in records.values())

    @torch.no_grad()
    def _features(self, record: ImageRecord) -> Any:
        device = self.bb.device
        kwargs = {k: v.to(device) for k, v in record.processed.items() if k in self.params and isinstance(v, torch.Tensor)}
        pooled = self.encode(**kwargs, return_dict=True).pooler_output
        return tuple(pooled[:1]) if isinstance(pooled, (list, tuple)) else pooled

    def _store(self, key: tuple[str, int], entry: _Entry) -> None:
        self.store[key] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes and self.store:
            _, dropped = self.store.popitem(last=False)
            self.nbytes -= dropped.nbytes
            self.stats.evictions += 1

    def visual(self, path: str, images_in_prompt: int) -> list[_Entry]:
        """The entries of one item's visual (one per image or clip frame), computing what is not cached."""
        count = self.count(images_in_prompt)
        keys = [(frame_key(path, i, n), count) for n in [frame_count(path)] for i in range(n)]
        records = self.pending.pop((path, count), None)
        if records is None and all(k in self.store for k in keys):
            self.stats.hits += len(keys)
            for k in keys:
                self.store.move_to_end(k)
            return [self.store[k] for k in keys]
        if records is None:
            records = preprocess_visual(self.bb.prompter, path, count)
            self.stats.images_preprocessed += len(records)
        entries = []
        for record in records:
            key = (record.key, count)
            entry = self.store.get(key)
            if entry is None:
                self.stats.misses += 1
                entry = _Entry(self._features(record), record.without_pixels())
                self._store(key, entry)
            else:
                self.stats.hits += 1
                self.store.move_to_end(key)
            entries.append(entry)
        return entries

    def inputs(self, prompts: list[str], paths: Sequence[Sequence[str]]) -> dict[str, Any]:
        """Host model inputs for ``prompts`` whose images are the visuals ``paths`` (per prompt, in prompt order),
        with the cached features as ``mm_encoder_outputs`` (on the model's device) instead of pixels."""
        per_prompt = []
        for row in paths:
            n_images = sum(frame_count(p) for p in row)
            per_prompt.append([e for p in row for e in self.visual(p, n_images)])
        inputs = record_inputs(self.bb.prompter, prompts, [[e.record for e in row] for row in per_prompt])
        parts = [e.features for row in per_prompt for e in row]
        if not parts:
            return inputs
        device = self.bb.device
        if isinstance(parts[0], (list, tuple)):
            pooled: Any = tuple(x.to(device) for part in parts for x in part)
        else:
            pooled = torch.cat([p.to(device) for p in parts])
        inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
        return inputs
