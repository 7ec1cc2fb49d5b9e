"""Choice scorers: the probability of the "match" option of a framing (``conf/framing``).

- ``choice``: the paper's score, P(match option) at the answer position (:class:`Choice`).
- ``choice_debiased``: every pair asked twice, with the option contents in both orders (lettered options keep
  their letters and swap contents; word options swap places: "Yes or No" / "No or Yes"), and P(match) averaged
  over the two orders. A model that answers by letter or position rather than by content flips its call between
  the orders; the share of pairs that flip is the run's flip rate (in the results file). The PriDe idea (Zheng
  et al., ICLR 2024): averaging over option orders removes a position prior.

Two exact implementations of the same option probabilities (:class:`Choice`):
- the reference (:meth:`Choice.naive_probs`): one full forward per (query, candidate) prompt;
- the fast path (:meth:`Choice.fast_probs`): the query-side prefix runs once into a KV cache that every candidate
  suffix reuses; suffixes run right-padded in batches with explicit positions, and the LM head is applied only at
  each suffix's last token and only to the option rows (:class:`~freeret.backbone.shared_prefix.SharedPrefix`).
Pairs whose candidate has an image take the batched full-forward path (the prefix cache is reused only for text
suffixes); every image's vision features are computed once and reused across prompts (:class:`VisionFeatureCache`).

Devices: inputs go to the model's device; every probability leaves the scorer on the CPU in fp32 (one small copy per
batch), whatever path produced it, so callers never mix devices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from freeret.backbone.backbone import Backbone
from freeret.backbone.families import IMAGE
from freeret.backbone.image_records import ImageRecord
from freeret.backbone.vision_cache import VisionFeatureCache
from freeret.data.retrieval_set import Item
from freeret.data.visual import frame_count
from freeret.errors import ConfigError
from freeret.rerank import packing
from freeret.rerank.framing import Framing, swap_options
from freeret.rerank.options import resolve_option_ids
from freeret.rerank.packing import Row, default_max_tokens
from freeret.rerank.scorers.base import BuildContext, NoRunState, RowScores, ScorerSpec, to_host
from freeret.rerank.scorers.lm import model_inputs, prompt_ids, shared_prefix
from freeret.templates import MARK, Split, split_at_line

log = logging.getLogger(__name__)


def _framing(ctx: BuildContext, name: str) -> Framing:
    if ctx.framing is None:
        raise ConfigError(f"scorer={name} needs a framing (conf/framing)")
    return ctx.framing


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row's option distribution (RetLLM's tie-breaker)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def option_row(probs: torch.Tensor, match_index: int) -> RowScores:
    """A query's row from its option probabilities (candidates x options): the score is P(match option); the extras
    are the probabilities and their entropy (the rerank shard's fields ``scores``, ``probs``, ``entropy``)."""
    return RowScores(probs[:, match_index], {"probs": probs.tolist(), "entropy": entropy(probs).tolist()})


@dataclass(frozen=True)
class ChoiceSpec(ScorerSpec):
    """``conf/scorer/choice.yaml``: no keys of its own; the framing and pipeline.calibrate shape it."""

    name: ClassVar[str] = "choice"
    uses_framing: ClassVar[bool] = True
    has_entropy: ClassVar[bool] = True
    takes_calibrate: ClassVar[bool] = True

    def preflight(self, side: Any, prompt: Any, framing: Framing | None) -> None:
        from freeret.preflight import check_framing

        check_framing(side, framing)

    def build(self, ctx: BuildContext) -> Choice:
        return Choice(ctx.backbone, _framing(ctx, self.name), ctx.batch_size, ctx.calibrate, ctx.vision_cache_mb,
                      ctx.max_tokens())


@dataclass(frozen=True)
class DebiasedChoiceSpec(ChoiceSpec):
    """``conf/scorer/choice_debiased.yaml``: the framing must have exactly two options whose order can be swapped."""

    name: ClassVar[str] = "choice_debiased"

    def preflight(self, side: Any, prompt: Any, framing: Framing | None) -> None:
        from freeret.preflight import check_framing

        check_framing(side, framing)
        check_framing(side, swap_options(framing))

    def build(self, ctx: BuildContext) -> DebiasedChoice:
        return DebiasedChoice(ctx)


class Choice(NoRunState):
    """Scores a query against its candidates with a framing: the ``choice`` scorer (see the module docstring)."""

    name = "choice"

    def __init__(self, backbone: Backbone, framing: Framing, batch_size: int = 16, calibrate: bool = False,
                 vision_cache_mb: float = 2048, max_tokens: int | None = None) -> None:
        self.bb, self.framing, self.batch_size, self.calibrate = backbone, framing, batch_size, calibrate
        self.max_tokens = max_tokens or default_max_tokens(backbone.device)
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

    def split(self, query: Item) -> Split:
        """(shared prefix, suffix template with the candidate slot); the prefix ends where the candidate line starts."""
        return split_at_line(self.bb.render_parts(self._parts(query, Item.make("target", "", None), MARK))
                             + self.framing.answer_prefix)

    # -- option probabilities (candidates x options, host fp32) -------------------------------------
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
    def naive_probs(self, query: Item, cands: Sequence[Item], batch_size: int = 1) -> torch.Tensor:
        """Reference: full forward of each whole pair prompt, ``batch_size`` pairs at a time (left-padded)."""
        probs = []
        for start in range(0, len(cands), batch_size):
            chunk = cands[start : start + batch_size]
            prompts = [self.prompt(query, c) for c in chunk]
            paths = [[p for p in (query.image, c.image) if p] for c in chunk]
            inputs = self._with_images(prompts, paths)
            hidden = self.shared.base(**inputs, use_cache=False).last_hidden_state[:, -1]
            probs.append(to_host(self.shared.head_logits(hidden, self.rows).softmax(-1)))
        return torch.cat(probs)

    @torch.no_grad()
    def fast_probs(self, query: Item, cands: Sequence[Item]) -> torch.Tensor:
        """Prefix KV cache once per query, text suffixes in right-padded batches; image candidates (and a query whose
        prompt does not split cleanly) through :meth:`naive_probs` in batches."""
        probs = torch.empty(len(cands), len(self.option_ids), dtype=torch.float32)  # host: every path returns host fp32
        text_idx = [i for i, c in enumerate(cands) if not c.image]
        image_idx = [i for i, c in enumerate(cands) if c.image]
        split = self.split(query)
        if text_idx and not split.is_exact(self.bb.tokenizer, cands[text_idx[0]].text,
                                           self.prompt(query, cands[text_idx[0]])):
            log.warning("prefix/suffix tokenisation differs from the whole prompt for query %s: scoring it naively",
                        query.key)
            image_idx, text_idx = image_idx + text_idx, []  # the naive (full-forward) path below takes them all
        elif text_idx:
            probs[text_idx] = self._fast_text(query, split, [cands[i].text for i in text_idx])
        if image_idx:  # candidates with images, or a query whose prompt does not split cleanly
            probs[image_idx] = self.naive_probs(query, [cands[i] for i in image_idx], self.batch_size)
        return probs

    def _fast_text(self, query: Item, split: Split, texts: Sequence[str]) -> torch.Tensor:
        prefix = self.shared.run_prefix(self._with_images([split.prefix], [[query.image] if query.image else []]))
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [split.suffix_for(t) for t in texts[start : start + self.batch_size]]
            enc = self.bb.tokenizer(chunk, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
            logits = self.shared.last_logits(prefix, enc["input_ids"], enc["attention_mask"], self.rows)
            out.append(to_host(logits.softmax(-1)))
        return torch.cat(out)

    def block_probs(self, rows: Sequence[tuple[Item, Sequence[Item]]],
                    records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> list[torch.Tensor]:
        """:meth:`option_probs` of several queries: each text query's prompt prefix once (a segment) and every pair's
        option suffix after it, packed across the block's queries; image queries and candidates, and prompts that do
        not split cleanly, through :meth:`option_probs`."""
        out: list[torch.Tensor | None] = [None] * len(rows)
        packed: list[tuple[int, Split, list[str]]] = []
        for i, (query, cands) in enumerate(rows):
            texts = [c.text for c in cands] + ([""] if self.calibrate else [])
            split = self.split(query)
            if query.image or any(c.image for c in cands) or not texts or \
                    not split.is_exact(self.bb.tokenizer, texts[0], self.prompt(query, Item.make("target", texts[0], None))):
                out[i] = self.option_probs(query, cands, records)
            else:
                packed.append((i, split, texts))
        if packed:
            empty = self.shared.empty_prefix()
            segments = packing.run_segments(self.shared, empty, [prompt_ids(self.bb, split.prefix) for _, split, _ in packed],
                                            self.max_tokens)
            tok = self.bb.tokenizer
            pairs = [Row(seg, tok(split.suffix_for(t), add_special_tokens=False)["input_ids"])
                     for seg, (_, split, texts) in zip(segments, packed) for t in texts]
            probs = packing.suffix_last_logits(self.shared, empty, pairs, self.rows, self.max_tokens).softmax(-1)
            at = 0
            for i, _, texts in packed:
                got, at = probs[at : at + len(texts)], at + len(texts)
                if self.calibrate:
                    got = got[:-1] / got[-1]
                    got = got / got.sum(-1, keepdim=True)
                out[i] = got
        return out  # type: ignore[return-value]

    def option_probs(self, query: Item, cands: Sequence[Item],
                     records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> torch.Tensor:
        """The run's probabilities: :meth:`fast_probs`, divided by the content-free option prior of this query when
        ``calibrate`` is on. ``records``: visuals already decoded and processed (by a DataLoader worker), keyed as
        :meth:`image_uses`."""
        if self.vision is not None and records:
            self.vision.receive(records)
        try:
            if not self.calibrate:
                return self.fast_probs(query, cands)
            probs = self.fast_probs(query, [*cands, Item.make("target", "", None)])
            calibrated = probs[:-1] / probs[-1]
            return calibrated / calibrated.sum(-1, keepdim=True)
        finally:
            if self.vision is not None:
                self.vision.pending.clear()  # records this query did not use are not kept

    # -- the scorer protocol ------------------------------------------------------------------------
    def score(self, query: Item, cands: Sequence[Item],
              records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> RowScores:
        """P(match) per candidate from :meth:`option_probs`, with the probabilities and their entropy as extras."""
        return option_row(self.option_probs(query, cands, records), self.framing.match_index)

    def score_block(self, rows: Sequence[tuple[Item, Sequence[Item]]],
                    records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> list[RowScores]:
        """:meth:`score` of several queries, packed (:meth:`block_probs`)."""
        return [option_row(p, self.framing.match_index) for p in self.block_probs(rows, records)]

    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        """Reference: one full forward per pair (uncalibrated, as before)."""
        return option_row(self.naive_probs(query, cands), self.framing.match_index)

    def signature(self) -> dict[str, Any]:
        """What shapes the option probabilities besides the model and dataset."""
        return {"scorer": self.name, "framing": asdict(self.framing), "calibrate": self.calibrate}

    def describe(self) -> dict[str, Any]:
        """The options as the results file reports them."""
        return {"option_token_ids": self.option_ids, "options": list(self.framing.options), "match": self.framing.match}


def flips(a: torch.Tensor, b: torch.Tensor, match_a: int, match_b: int) -> torch.Tensor:
    """Per pair: whether the call (is the match option the most probable one?) differs between two orders."""
    return (a.argmax(-1) == match_a) != (b.argmax(-1) == match_b)


class DebiasedChoice(NoRunState):
    """P(match) averaged over both option orders (see the module docstring)."""

    name = "choice_debiased"

    def __init__(self, ctx: BuildContext) -> None:
        framing = _framing(ctx, self.name)
        self.first = Choice(ctx.backbone, framing, ctx.batch_size, ctx.calibrate, ctx.vision_cache_mb, ctx.max_tokens())
        self.second = Choice(ctx.backbone, swap_options(framing), ctx.batch_size, ctx.calibrate, 0, ctx.max_tokens())
        self.second.vision = self.first.vision  # one vision cache: each image through the tower once per run
        self.bb, self.vision, self.framing = ctx.backbone, self.first.vision, framing

    def combine(self, a: torch.Tensor, b: torch.Tensor) -> RowScores:
        """Mean P(match) of the two orders' option probabilities ``a`` and ``b``, with both orders' P(match), the
        flips and the averaged entropy."""
        match_a, match_b = self.first.framing.match_index, self.second.framing.match_index
        p = (a[:, match_a] + b[:, match_b]) / 2
        flipped = flips(a, b, match_a, match_b)
        return RowScores(p, {"p_match": a[:, match_a].tolist(), "p_match_swapped": b[:, match_b].tolist(),
                             "flips": flipped.tolist(), "entropy": entropy(torch.stack([p, 1 - p], -1)).tolist()})

    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        return self.combine(self.first.naive_probs(query, cands), self.second.naive_probs(query, cands))

    def score(self, query: Item, cands: Sequence[Item], records: Mapping | None = None) -> RowScores:
        return self.combine(self.first.option_probs(query, cands, records), self.second.option_probs(query, cands))

    def score_block(self, rows: Sequence[tuple[Item, Sequence[Item]]], records: Mapping | None = None) -> list[RowScores]:
        return [self.combine(a, b) for a, b in zip(self.first.block_probs(rows, records), self.second.block_probs(rows, records))]

    def image_uses(self, query: Item, cands: Sequence[Item]) -> set[tuple[str, int]]:
        return self.first.image_uses(query, cands)

    def signature(self) -> dict[str, Any]:
        return {**self.first.signature(), "scorer": self.name}

    def describe(self) -> dict[str, Any]:
        return {**self.first.describe(), "swapped_template": self.second.framing.template,
                "swapped_match": self.second.framing.match}

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The run's flip rate: the share of reranked pairs whose call changes with the option order."""
        flipped = [f for rec in records for f in rec.get("flips", [])]
        return {"flip_rate": sum(flipped) / len(flipped) if flipped else None, "pairs": len(flipped)}
