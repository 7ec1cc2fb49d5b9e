"""Choice scorers: the probability of the "match" option of a framing (``conf/framing``).

- ``choice``: the paper's score, P(match option) at the answer position (:class:`~freeret.rerank.scorer.PairScorer`).
- ``choice_debiased``: every pair asked twice, with the option contents in both orders (lettered options keep
  their letters and swap contents; word options swap places: "Yes or No" / "No or Yes"), and P(match) averaged
  over the two orders. A model that answers by letter or position rather than by content flips its call between
  the orders; the share of pairs that flip is the run's flip rate (in the results file). The PriDe idea (Zheng
  et al., ICLR 2024): averaging over option orders removes a position prior.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from freeret.data.retrieval_set import Item
from freeret.errors import ConfigError
from freeret.rerank.framing import Framing, swap_options
from freeret.rerank.scorer import PairScorer
from freeret.rerank.scorers.base import BuildContext, NoRunState, RowScores, ScorerSpec


def _framing(ctx: BuildContext, name: str) -> Framing:
    if ctx.framing is None:
        raise ConfigError(f"scorer={name} needs a framing (conf/framing)")
    return ctx.framing


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

    def build(self, ctx: BuildContext) -> PairScorer:
        return PairScorer(ctx.backbone, _framing(ctx, self.name), ctx.batch_size, ctx.calibrate,
                          ctx.vision_cache_mb)


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


def flips(a: torch.Tensor, b: torch.Tensor, match_a: int, match_b: int) -> torch.Tensor:
    """Per pair: whether the call (is the match option the most probable one?) differs between two orders."""
    return (a.argmax(-1) == match_a) != (b.argmax(-1) == match_b)


class DebiasedChoice(NoRunState):
    """P(match) averaged over both option orders (see the module docstring)."""

    name = "choice_debiased"

    def __init__(self, ctx: BuildContext) -> None:
        framing = _framing(ctx, self.name)
        self.first = PairScorer(ctx.backbone, framing, ctx.batch_size, ctx.calibrate, ctx.vision_cache_mb)
        self.second = PairScorer(ctx.backbone, swap_options(framing), ctx.batch_size, ctx.calibrate, 0)
        self.second.vision = self.first.vision  # one vision cache: each image through the tower once per run
        self.bb, self.vision, self.framing = ctx.backbone, self.first.vision, framing

    def combine(self, a: Any, b: Any) -> RowScores:
        """Mean P(match) of the two orders, with both orders' P(match), the flips and the averaged entropy."""
        p = (a.match + b.match) / 2
        two = torch.stack([p, 1 - p], -1)
        entropy = -(two * two.clamp_min(1e-12).log()).sum(-1)
        flipped = flips(a.probs, b.probs, a.match_index, b.match_index)
        return RowScores(p, {"p_match": a.match.tolist(), "p_match_swapped": b.match.tolist(),
                             "flips": flipped.tolist(), "entropy": entropy.tolist()})

    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        return self.combine(self.first.naive(query, cands), self.second.naive(query, cands))

    def score(self, query: Item, cands: Sequence[Item], records: Mapping | None = None) -> RowScores:
        return self.combine(self.first.score(query, cands, records), self.second.score(query, cands))

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
