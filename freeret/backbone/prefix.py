"""Shared-prefix KV cache for stage-1 embedding of text prompts.

Every prompt of a batch starts with the same tokens (system turn, prior instruction up to the item), so
those tokens run once into a KV cache; each item then runs only its own suffix (item text and the prompt's
tail), right-padded with explicit positions, and is pooled at its last real token (or over its own tokens: the
prefix then stops before the first pooled one). The vectors equal the
plain left-padded forward up to float rounding (tested). Batches with images take the plain path.
This module finds the shared prefix of a left-padded batch and keeps recent prefixes; running them is
:mod:`freeret.backbone.shared_prefix`'s job.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from freeret.backbone.families import Family
from freeret.backbone.shared_prefix import Prefix, SharedPrefix
from freeret.embed.layers import LayerSpec

TEXT_KEYS = frozenset({"input_ids", "attention_mask", "position_ids"})
TOKEN_TYPE_KEYS = frozenset({"mm_token_type_ids", "token_type_ids"})  # all zeros when a batch holds no image


@dataclass
class PrefixStats:
    """What the cache saved: tokens run, tokens skipped, prefix forwards.

    With ``record``, ``segments`` lists (first position, tokens) of every sequence run, for FLOP counts.
    """

    prefix_forwards: int = 0
    prefix_tokens_run: int = 0
    suffix_tokens_run: int = 0
    suffix_padding: int = 0
    tokens_skipped: int = 0
    plain_batches: int = 0
    record: bool = False
    segments: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class PrefixCache:
    """Runs text batches as (cached common prefix) + (right-padded suffixes); see the module docstring.

    ``min_prefix`` tokens must be shared before a batch takes this path; ``capacity`` distinct prefixes
    (one per role x dataset, typically) are kept, least recently used dropped first. ``family``: the model's
    adapter (default: found from the model's config).
    """

    model: nn.Module
    min_prefix: int = 8
    capacity: int = 8
    family: Family | None = None
    stats: PrefixStats = field(default_factory=PrefixStats)
    _entries: OrderedDict[tuple[tuple[int, ...], LayerSpec], Prefix] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.runner = SharedPrefix(self.model, self.family)

    def applies(self, inputs: dict[str, Any]) -> bool:
        """True for text-only batches: no pixels, and token types (if any) all text."""
        extra = set(inputs) - TEXT_KEYS
        return extra <= TOKEN_TYPE_KEYS and not any(bool(inputs[k].any()) for k in extra)

    def _prefix(self, ids: tuple[int, ...], spec: LayerSpec, device: torch.device) -> Prefix:
        key = (ids, spec)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        prefix = self.runner.run_prefix({"input_ids": torch.tensor([ids], device=device)}, stop_at=spec)
        self._entries[key] = prefix
        self.stats.prefix_forwards += 1
        self.stats.prefix_tokens_run += len(ids)
        if self.stats.record:
            self.stats.segments.append((0, len(ids)))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return prefix

    @torch.no_grad()
    def hidden_at_last(self, inputs: dict[str, torch.Tensor], spec: LayerSpec) -> torch.Tensor | None:
        """(batch, hidden) at ``spec`` for each row's last real token, or None when the batch shares too little."""
        pooled = self.pooled(inputs, (spec,))
        return None if pooled is None else pooled[spec]

    @torch.no_grad()
    def pooled(self, inputs: dict[str, torch.Tensor], specs: tuple[LayerSpec, ...],
               weights: torch.Tensor | None = None) -> dict[LayerSpec, torch.Tensor] | None:
        """(batch, hidden) per point in ``specs``: the states weighted by ``weights`` (batch, seq; left-padded like
        the inputs; None = the last token) summed over positions, or None when the batch shares too little. The
        shared prefix stops before each row's first weighted position, so every pooled state comes from the suffix
        forward.

        Vectorised on the inputs' device: rows are aligned at their first real token (left padding), compared
        column-wise for the shared prefix, and the suffixes gathered into a right-padded block; the host reads
        only the row lengths, the first pooled positions and the prefix ids (its cache key).
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        n, total = ids.shape
        if bool((mask[:, 1:] < mask[:, :-1]).any()):  # not left padding: no common alignment, plain path
            self._plain(mask.sum(1).tolist())
            return None
        lengths = mask.sum(1)
        host_lengths = lengths.tolist()  # the shapes below depend on them
        shortest = min(host_lengths)
        starts = total - lengths  # row i's tokens are ids[i, starts[i]:]
        # aligned position of each row's first pooled token (the last token without weights)
        first_pooled = (weights != 0).float().argmax(1) - starts if weights is not None else lengths - 1
        aligned = ids.gather(1, starts[:, None] + torch.arange(shortest, device=ids.device))
        agree = (aligned == aligned[:1]).all(0).long().cumprod(0)
        head = torch.cat([agree.sum().reshape(1), first_pooled.min().reshape(1), aligned[0]]).tolist()
        n_prefix = min(head[0], head[1], shortest - 1)  # pooled tokens (at least the last) stay in the suffixes
        if n_prefix < self.min_prefix:
            self._plain(host_lengths)
            return None
        device = ids.device
        n_layers = len(self.runner.layers)
        deepest = max(specs, key=lambda s: s.order(n_layers))
        prefix = self._prefix(tuple(head[2 : 2 + n_prefix]), deepest, device)
        width = max(host_lengths) - n_prefix
        cols = torch.arange(width, device=device)
        suffix_lengths = lengths - n_prefix
        suffix_mask = (cols[None] < suffix_lengths[:, None]).long()
        at = (starts[:, None] + n_prefix + cols[None]).clamp(max=total - 1)
        suffix_ids = torch.where(suffix_mask.bool(), ids.gather(1, at), torch.zeros_like(at))
        suffix_weights = None
        if weights is not None:
            suffix_weights = torch.where(suffix_mask.bool(), weights.gather(1, at), torch.zeros((), device=device))
        hidden = self.runner.pooled_states(prefix, suffix_ids, suffix_mask, specs, suffix_weights)
        run = sum(host_lengths) - n * n_prefix
        self.stats.suffix_tokens_run += run
        self.stats.suffix_padding += n * width - run
        self.stats.tokens_skipped += n_prefix * (n - 1)
        if self.stats.record:
            self.stats.segments.extend((n_prefix, k - n_prefix) for k in host_lengths)
        return hidden

    def _plain(self, lengths: list[int]) -> None:
        """Count a batch that takes the plain forward (the caller returns None)."""
        self.stats.plain_batches += 1
        if self.stats.record:
            self.stats.segments.extend((0, k) for k in lengths)
