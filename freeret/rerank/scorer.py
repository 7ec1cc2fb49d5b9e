"""Pointwise pair scoring with the frozen model: probability of the "match" option.

Two exact implementations of the same score:
- ``naive``: one full forward per (query, candidate) prompt (the reference);
- ``fast``: the query-side prefix runs once into a KV cache that every candidate
  suffix reuses; suffixes run right-padded in batches with explicit positions, and the
  LM head is applied only at each suffix's last token and only to the option rows
  (:class:`~freeret.backbone.shared_prefix.SharedPrefix`).
Pairs whose candidate has an image take the batched full-forward path (the prefix
cache is reused only for text suffixes); every image's vision features are computed
once and reused across prompts (:class:`VisionFeatureCache`).

Devices: inputs go to the model's device; every score leaves the scorer on the CPU in fp32
(one small copy per batch), whatever path produced it, so callers never mix devices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from freeret.backbone.backbone import Backbone
from freeret.backbone.families import IMAGE
from freeret.backbone.image_records import ImageRecord
from freeret.backbone.shared_prefix import splits_exactly
from freeret.backbone.vision_cache import VisionFeatureCache
from freeret.data.retrieval_set import Item
from freeret.data.visual import frame_count
from freeret.rerank.framing import Framing
from freeret.rerank.options import resolve_option_ids
from freeret.rerank.scorers.base import NoRunState, to_host
from freeret.rerank.scorers.lm import model_inputs, shared_prefix

log = logging.getLogger(__name__)
_SLOT = "\u2063CANDIDATE\u2063"  # stands for the candidate text while the prompt is split


@dataclass
class PairScores:
    """Option probabilities (candidates x options, CPU fp32) and which column means "match"."""

    probs: torch.Tensor
    match_index: int

    @property
    def match(self) -> torch.Tensor:
        """P(match option) per candidate."""
        return self.probs[:, self.match_index]

    @property
    def entropy(self) -> torch.Tensor:
        """Entropy of the option distribution per candidate (RetLLM's tie-breaker)."""
        return -(self.probs * self.probs.clamp_min(1e-12).log()).sum(-1)

    @property
    def scores(self) -> torch.Tensor:
        """The rerank score: P(match option)."""
        return self.match

    def record(self) -> dict[str, Any]:
        """The row's fields in a rerank shard: scores, the option probabilities and their entropy."""
        return {"scores": self.match.tolist(), "probs": self.probs.tolist(), "entropy": self.entropy.tolist()}


class PairScorer(NoRunState):
    """Scores a query against its candidates with a framing: the ``choice`` scorer."""

    name = "choice"

    def __init__(self, backbone: Backbone, framing: Framing, batch_size: int = 16, calibrate: bool = False,
                 vision_cache_mb: float = 2048) -> None:
        self.bb, self.framing, self.batch_size, self.calibrate = backbone, framing, batch_size, calibrate
        self.vision = (VisionFeatureCache(backbone, vision_cache_mb)
                       if backbone.family.multimodal and vision_cache_mb > 0 else None)
        self.head, self.middle, self.tail = framing.split()  # bound to the dataset: Framing.for_dataset
        probe = self.prompt(Item.make("query", "q", None), Item.make("target", "c", None))
        self.option_ids = resolve_option_ids(backbone.tokenizer, probe, framing.options, f"framing '{framing.name}'")
        self.shared = shared_prefix(backbone)  # one runner per model, shared with the other scorers
        self.rows = torch.tensor(self.option_ids)

    # -- prompts -----------------------------------------------------------------------------------
    def _parts(self, query: Item, cand: Item, cand_text: str | None = None) -> list:
        return [self.head, *([IMAGE] * frame_count(query.image)), query.text, self.middle,
                *([IMAGE] * frame_count(cand.image)), cand.text if cand_text is None else cand_text, self.tail]

    def prompt(self, query: Item, cand: Item) -> str:
        """The whole prompt of one pair, ending at the answer position."""
        return self.bb.render_parts(self._parts(query, cand)) + self.framing.answer_prefix

    def split(self, query: Item) -> tuple[str, str]:
        """(shared prefix, suffix template with the candidate slot); the prefix ends where the candidate line starts."""
        text = self.bb.render_parts(self._parts(query, Item.make("target", "", None), _SLOT)) + self.framing.answer_prefix
        cut = text.rfind("\n", 0, text.index(_SLOT)) + 1
        return text[:cut], text[cut:]

    # -- scoring -----------------------------------------------------------------------------------
    def _option_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.shared.head_logits(hidden, self.rows)

    def _with_images(self, prompts: list[str], paths: list[list[str]]) -> dict:
        """Model inputs on the device (each image once per run through the vision cache, if any)."""
        return model_inputs(self.bb, self.vision, prompts, paths)

    def image_uses(self, query: Item, cands: Sequence[Item]) -> set[tuple[str, int]]:
        """The (visual, cache count) pairs that scoring ``cands`` for ``query`` looks up in the vision cache: what a
        DataLoader worker can decode and process ahead (:meth:`score`'s ``records``)."""
        if self.vision is None:
            return set()
        q = frame_count(query.image)
        uses = set()
        if query.image and (self.calibrate or any(not c.image for c in cands)):
            uses.add((query.image, self.vision.count(q)))
        for cand in cands:
            if cand.image:
                count = self.vision.count(q + frame_count(cand.image))
                uses.update({(cand.image, count), *([(query.image, count)] if query.image else [])})
        return uses

    @torch.no_grad()
    def naive(self, query: Item, cands: Sequence[Item], batch_size: int = 1) -> PairScores:
        """Reference: full forward of each whole pair prompt (``batch_size`` pairs at a time, left-padded)."""
        probs = []
        for start in range(0, len(cands), batch_size):
            chunk = cands[start : start + batch_size]
            prompts = [self.prompt(query, c) for c in chunk]
            paths = [[p for p in (query.image, c.image) if p] for c in chunk]
            inputs = self._with_images(prompts, paths)
            hidden = self.shared.base(**inputs, use_cache=False).last_hidden_state[:, -1]
            probs.append(to_host(self._option_logits(hidden).softmax(-1)))
        return PairScores(torch.cat(probs), self.framing.match_index)

    @torch.no_grad()
    def fast(self, query: Item, cands: Sequence[Item]) -> PairScores:
        """Prefix KV cache once per query, text suffixes in right-padded batches; image candidates via ``naive``."""
        probs = torch.empty(len(cands), len(self.option_ids), dtype=torch.float32)  # host: every path returns host fp32
        text_idx = [i for i, c in enumerate(cands) if not c.image]
        image_idx = [i for i, c in enumerate(cands) if c.image]
        if text_idx and not self._split_is_exact(query, cands[text_idx[0]]):
            log.warning("prefix/suffix tokenisation differs from the whole prompt for query %s: scoring it naively",
                        query.key)
            image_idx, text_idx = image_idx + text_idx, []  # the naive (full-forward) path below takes them all
        elif text_idx:
            probs[text_idx] = self._fast_text(query, [cands[i].text for i in text_idx])
        if image_idx:  # candidates with images, or a query whose prompt does not split cleanly
            probs[image_idx] = self.naive(query, [cands[i] for i in image_idx], self.batch_size).probs
        return PairScores(probs, self.framing.match_index)

    def _split_is_exact(self, query: Item, cand: Item) -> bool:
        """True when tokenising prefix and suffix apart gives the whole prompt's ids (checked once per query)."""
        prefix, suffix = self.split(query)
        return splits_exactly(self.bb.tokenizer, prefix, suffix.replace(_SLOT, cand.text), self.prompt(query, cand))

    def _fast_text(self, query: Item, texts: Sequence[str]) -> torch.Tensor:
        prefix_text, suffix_template = self.split(query)
        prefix = self.shared.run_prefix(self._with_images([prefix_text], [[query.image] if query.image else []]))
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [suffix_template.replace(_SLOT, t) for t in texts[start : start + self.batch_size]]
            enc = self.bb.tokenizer(chunk, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
            logits = self.shared.last_logits(prefix, enc["input_ids"], enc["attention_mask"], self.rows)
            out.append(to_host(logits.softmax(-1)))
        return torch.cat(out)

    def score(self, query: Item, cands: Sequence[Item],
              records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> PairScores:
        """Fast scores, divided by the content-free option prior of this query when ``calibrate`` is on.

        ``records``: visuals already decoded and processed (by a DataLoader worker), keyed as :meth:`image_uses`.
        """
        if self.vision is not None and records:
            self.vision.receive(records)
        try:
            if not self.calibrate:
                return self.fast(query, cands)
            empty = Item.make("target", "", None)
            scores = self.fast(query, [*cands, empty])
            calibrated = scores.probs[:-1] / scores.probs[-1]
            return PairScores(calibrated / calibrated.sum(-1, keepdim=True), self.framing.match_index)
        finally:
            if self.vision is not None:
                self.vision.pending.clear()  # records this query did not use are not kept

    def signature(self) -> dict[str, Any]:
        """What shapes the option probabilities besides the model and dataset."""
        return {"scorer": self.name, "framing": asdict(self.framing), "calibrate": self.calibrate}

    def describe(self) -> dict[str, Any]:
        """The options as the results file reports them."""
        return {"option_token_ids": self.option_ids, "options": list(self.framing.options), "match": self.framing.match}
