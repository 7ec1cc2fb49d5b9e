"""Likelihood scorers: how probable the model finds one side of a pair given the other.

- ``candidate_likelihood``: log P(candidate tokens | query prompt), reduced by mean (per token) or sum, minus
  ``cpn_lambda`` x the same for a content-free prompt (the candidate's prior). lambda = 0 is raw candidate
  likelihood, lambda = 1 is pointwise mutual information (Holtzman et al. 2021, "Surface Form Competition"); the
  prior term is BLiM's Candidate Prior Normalisation (Ko et al., ICCV 2025, arXiv 2507.23284). Each unique
  candidate's prior is computed once per run (and read back from the rerank shards on resume).
- ``query_likelihood``: mean log P(query tokens | candidate prompt), UPR (Sachan et al. 2022, arXiv 2204.07496).
- ``bidirectional``: BLiM's combination of the two (see :class:`BidirectionalSpec`).

Run paths (``score_block``: several queries at once, ``freeret/rerank/packing.py``): candidate likelihood runs each
query's prompt once (a segment) and every pair's candidate tokens after it, packed across queries into forwards of
the token budget (log-softmax at the candidate's positions only); each candidate's prior once per run. Query
likelihood runs the prompt's shared start (up to the candidate's line) once per run, each unique text candidate's
line and the rest of the prompt once per run (a segment kept in the run's candidate cache, bounded in bytes), and
each pair's query tokens after it, packed the same way; pairs with an image candidate (or an image query for
candidate likelihood) take the per-query path (:meth:`score`): the query prompt as a KV prefix and candidate
suffixes, or whole pairs batched left-padded so that the query's tokens line up at the end of every row. Either way
the LM head runs at the scored tokens only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from freeret.backbone.families import IMAGE
from freeret.backbone.vision_cache import VisionFeatureCache
from freeret.data.retrieval_set import Item
from freeret.data.visual import frame_count
from freeret.errors import ConfigError
from freeret.prompts import DatasetPrompt
from freeret.rerank import packing
from freeret.rerank.options import option_text
from freeret.rerank.packing import Row, SegmentCache
from freeret.rerank.scorers.base import (
    TEXT,
    BuildContext,
    NoRunState,
    RowScores,
    ScorerSpec,
    in_unit_interval,
)
from freeret.rerank.scorers.lm import (
    append_tokens,
    continuation_logprobs,
    model_inputs,
    prompt_ids,
    run_prefix,
    shared_prefix,
    suffix_logprobs,
)
from freeret.templates import MARK, Template, split_at_line

REDUCTIONS = ("mean", "sum")


def _check_reduce(spec: ScorerSpec, value: str) -> None:
    if value not in REDUCTIONS:
        raise ConfigError(f"scorer={spec.name}: reduce={value!r} is not one of {', '.join(REDUCTIONS)}")


def cpn(cond: Sequence[float], prior: Sequence[float] | None, cpn_lambda: float) -> torch.Tensor:
    """Candidate-prior normalised scores: ``cond - cpn_lambda * prior`` (``cond`` alone without a prior)."""
    scores = torch.tensor(list(cond), dtype=torch.float32)
    return scores - cpn_lambda * torch.tensor(list(prior), dtype=torch.float32) if prior is not None else scores


def blim(cpn_scores: torch.Tensor, ql: Sequence[float] | torch.Tensor, weight: float) -> torch.Tensor:
    """BLiM's bidirectional score: ``weight * query likelihood + (1 - weight) * CPN`` (:class:`BidirectionalSpec`)."""
    return weight * torch.as_tensor(ql, dtype=torch.float32) + (1 - weight) * cpn_scores


def reduce_logprobs(logprobs: torch.Tensor, how: str) -> float:
    """A sequence's token log-probabilities reduced to one number: their mean or their sum."""
    return float(logprobs.mean() if how == "mean" else logprobs.sum())


class _ItemPrompt:
    """Renders a scorer's prompt around one item and tokenises the scored text that follows it."""

    def __init__(self, bb, prompt: Template, end: str, dataset: DatasetPrompt | None, scorer: str) -> None:
        self.bb, self.end = bb, end
        (self.head, self.tail), self.answer = prompt.bind(dataset, "scorer", scorer).pieces()  # its variant and vars

    def render(self, item: Item) -> str:
        """The prompt around ``item`` (its visual first), ending where the scored text starts."""
        return self.bb.render_parts([self.head, *([IMAGE] * frame_count(item.image)), item.text, self.tail]) + self.answer

    def scored_ids(self, prompt: str, text: str) -> list[int]:
        """The token ids of ``text`` (and ``end``) as written after ``prompt`` (a space after a non-space)."""
        return self.bb.tokenizer(option_text(prompt, text) + self.end, add_special_tokens=False)["input_ids"]


def _vision(ctx: BuildContext) -> VisionFeatureCache | None:
    bb = ctx.backbone
    return VisionFeatureCache(bb, ctx.vision_cache_mb) if bb.family.multimodal and ctx.vision_cache_mb > 0 else None


# -- candidate likelihood ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateLikelihoodSpec(ScorerSpec):
    """``conf/scorer/candidate_likelihood.yaml``: the query prompt, the reduction, lambda, the content-free query."""

    name: ClassVar[str] = "candidate_likelihood"
    candidate_kinds: ClassVar[frozenset[str]] = frozenset({TEXT})

    prompt: Template = field(default_factory=lambda: Template("{query}", ("query",)))
    reduce: str = "mean"
    cpn_lambda: float = 1.0
    prior_query: str = ""  # the query text of the content-free prompt the prior is read from
    end: str = ""  # text scored after the candidate (e.g. a newline that closes the answer); "" = the candidate only

    @classmethod
    def _coerce(cls, key: str, value: Any) -> Any:
        if key == "prompt":
            return Template.from_config(value, ("query",), f"scorer={cls.name}")
        return super()._coerce(key, value)

    def validate(self) -> None:
        _check_reduce(self, self.reduce)
        if isinstance(self.cpn_lambda, bool) or not isinstance(self.cpn_lambda, (int, float)) or self.cpn_lambda < 0:
            raise ConfigError(f"scorer={self.name}: cpn_lambda must be a number >= 0 (0 = raw likelihood, 1 = PMI), "
                              f"got {self.cpn_lambda!r}")

    def templates(self) -> tuple[Template, ...]:
        return (self.prompt,)

    def build(self, ctx: BuildContext) -> CandidateLikelihood:
        return CandidateLikelihood(self, ctx)


class CandidateLikelihood(NoRunState):
    """Candidate likelihood with candidate-prior normalisation (see the module docstring)."""

    name = "candidate_likelihood"

    def __init__(self, spec: CandidateLikelihoodSpec, ctx: BuildContext, vision: VisionFeatureCache | None = None) -> None:
        self.spec, self.bb, self.batch_size = spec, ctx.backbone, ctx.batch_size
        self.vision = vision if vision is not None else _vision(ctx)
        self.text = _ItemPrompt(self.bb, spec.prompt, spec.end, ctx.prompt, spec.name)
        self.priors: dict[str, float] = {}  # candidate text -> reduced log-likelihood under the content-free prompt
        self.priors_computed = 0
        self.max_tokens = ctx.max_tokens()
        self.runner = shared_prefix(self.bb)
        self._prior_segment = None  # the content-free prompt, run once per run

    @property
    def with_prior(self) -> bool:
        return self.spec.cpn_lambda != 0

    def prompt(self, query: Item) -> str:
        """The query prompt; the candidate's tokens follow it."""
        return self.text.render(query)

    def prior_prompt(self) -> str:
        """The content-free prompt the prior is read from."""
        return self.text.render(Item.make("query", self.spec.prior_query, None))

    def _scores(self, cond: list[float], prior: list[float] | None) -> RowScores:
        return RowScores(cpn(cond, prior, self.spec.cpn_lambda), {"cond": cond, **({"prior": prior} if prior is not None else {})})

    @torch.no_grad()
    def _naive_lls(self, prompt: str, paths: list[str], texts: Sequence[str]) -> list[float]:
        out = []
        for text in texts:
            ids = self.text.scored_ids(prompt, text)
            inputs = append_tokens(model_inputs(self.bb, self.vision, [prompt], [paths]), ids)
            out.append(reduce_logprobs(continuation_logprobs(self.bb, inputs, len(ids))[0], self.spec.reduce))
        return out

    def _fast_lls(self, prompt: str, paths: list[str], texts: Sequence[str]) -> list[float]:
        prefix = run_prefix(self.bb, model_inputs(self.bb, self.vision, [prompt], [paths]))
        conts = [self.text.scored_ids(prompt, t) for t in texts]
        return [reduce_logprobs(lp, self.spec.reduce) for lp in suffix_logprobs(self.bb, prefix, conts, self.batch_size)]

    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        """Reference: one full forward per (prompt, candidate), for the prior too."""
        paths = [query.image] if query.image else []
        cond = self._naive_lls(self.prompt(query), paths, [c.text for c in cands])
        prior = self._naive_lls(self.prior_prompt(), [], [c.text for c in cands]) if self.with_prior else None
        return self._scores(cond, prior)

    def prior(self, texts: Sequence[str]) -> list[float]:
        """Each candidate text's prior, computed once per run (missing ones in packed forwards after the content-free
        prompt, itself run once per run)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.priors))
        if missing:
            empty, prompt = self.runner.empty_prefix(), self.prior_prompt()
            if self._prior_segment is None:
                self._prior_segment = packing.run_segments(self.runner, empty, [prompt_ids(self.bb, prompt)], self.max_tokens)[0]
            rows = [Row(self._prior_segment, self.text.scored_ids(prompt, t)) for t in missing]
            lps = packing.suffix_logprobs(self.runner, empty, rows, self.max_tokens)
            self.priors.update(zip(missing, (reduce_logprobs(lp, self.spec.reduce) for lp in lps)))
            self.priors_computed += len(missing)
        return [self.priors[t] for t in texts]

    def score_block(self, rows: Sequence[tuple[Item, Sequence[Item]]], records: Mapping | None = None) -> list[RowScores]:
        """The run's path: each text query's prompt once (a segment), every pair's candidate tokens after it, packed
        across the block's queries; image queries through :meth:`score`."""
        out: list[RowScores | None] = [None] * len(rows)
        text = [i for i, (query, _) in enumerate(rows) if not query.image]
        for i, (query, cands) in enumerate(rows):
            if query.image:
                out[i] = self.score(query, cands, records)
        if text:
            empty = self.runner.empty_prefix()
            prompts = {i: self.prompt(rows[i][0]) for i in text}
            segments = dict(zip(text, packing.run_segments(self.runner, empty, [prompt_ids(self.bb, prompts[i]) for i in text],
                                                           self.max_tokens)))
            pairs = [Row(segments[i], self.text.scored_ids(prompts[i], c.text)) for i in text for c in rows[i][1]]
            lps = packing.suffix_logprobs(self.runner, empty, pairs, self.max_tokens)
            texts = [c.text for i in text for c in rows[i][1]]
            prior = self.prior(texts) if self.with_prior else None
            at = 0
            for i in text:
                k = len(rows[i][1])
                cond = [reduce_logprobs(lp, self.spec.reduce) for lp in lps[at : at + k]]
                out[i] = self._scores(cond, prior[at : at + k] if prior is not None else None)
                at += k
        return out  # type: ignore[return-value]

    def score(self, query: Item, cands: Sequence[Item], records: Mapping | None = None) -> RowScores:
        """Fast path: the query prompt once, the candidates as suffixes; priors from the run's cache."""
        if self.vision is not None and records:
            self.vision.receive(records)
        try:
            cond = self._fast_lls(self.prompt(query), [query.image] if query.image else [], [c.text for c in cands])
        finally:
            if self.vision is not None:
                self.vision.pending.clear()
        return self._scores(cond, self.prior([c.text for c in cands]) if self.with_prior else None)

    def image_uses(self, query: Item, cands: Sequence[Item]) -> set[tuple[str, int]]:
        if self.vision is None or not query.image:
            return set()
        return {(query.image, self.vision.count(frame_count(query.image)))}

    def signature(self) -> dict[str, Any]:
        # the prompts as bound to the dataset (its vars and scorer variant): another wording is another folder
        return {"scorer": self.name, "spec": self.spec.as_dict(), "bound": self.describe()}

    def describe(self) -> dict[str, Any]:
        return {"prompt": self.prompt(Item.make("query", "{query}", None)), "prior_prompt": self.prior_prompt()}

    def counters(self) -> dict[str, int]:
        return {"candidate_priors_computed": self.priors_computed}

    def prepare(self, groups: Sequence[Mapping[str, Any]], done: Mapping[str, Mapping[str, Any]]) -> None:
        """Priors of candidates in finished rows, read back from their records (a resumed run recomputes none)."""
        for group in groups:
            rec = done.get(group["row"])
            if rec is not None and "prior" in rec and rec.get("positions") == group["positions"]:
                self.priors.update(zip((c.text for c in group["candidates"]), rec["prior"]))


# -- query likelihood ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryLikelihoodSpec(ScorerSpec):
    """``conf/scorer/query_likelihood.yaml``: the candidate prompt after which the query's tokens are scored."""

    name: ClassVar[str] = "query_likelihood"
    query_kinds: ClassVar[frozenset[str]] = frozenset({TEXT})

    prompt: Template = field(default_factory=lambda: Template("{candidate}", ("candidate",)))
    reduce: str = "mean"
    end: str = ""

    @classmethod
    def _coerce(cls, key: str, value: Any) -> Any:
        if key == "prompt":
            return Template.from_config(value, ("candidate",), f"scorer={cls.name}")
        return super()._coerce(key, value)

    def validate(self) -> None:
        _check_reduce(self, self.reduce)

    def templates(self) -> tuple[Template, ...]:
        return (self.prompt,)

    def build(self, ctx: BuildContext) -> QueryLikelihood:
        return QueryLikelihood(self, ctx)


class QueryLikelihood(NoRunState):
    """UPR-style query likelihood (see the module docstring)."""

    name = "query_likelihood"

    def __init__(self, spec: QueryLikelihoodSpec, ctx: BuildContext, vision: VisionFeatureCache | None = None) -> None:
        self.spec, self.bb, self.batch_size = spec, ctx.backbone, ctx.batch_size
        self.vision = vision if vision is not None else _vision(ctx)
        self.text = _ItemPrompt(self.bb, spec.prompt, spec.end, ctx.prompt, spec.name)
        self.split = split_at_line(self.prompt(Item.make("target", MARK, None)))  # the shared start, run once per run
        self._prefix = None  # the shared start's KV cache, run once per run
        self.max_tokens = ctx.max_tokens()
        self.runner = shared_prefix(self.bb)
        self.cache = SegmentCache(ctx.candidate_cache_mb)  # each text candidate's prompt after the shared start
        self._exact: dict[str, bool] = {}  # candidate text -> whether its prompt splits exactly at the shared start

    def prompt(self, cand: Item) -> str:
        """The candidate prompt; the query's tokens follow it."""
        return self.text.render(cand)

    def _lls(self, query: Item, cands: Sequence[Item], batch_size: int) -> list[float]:
        out: list[float] = []
        for start in range(0, len(cands), batch_size):
            chunk = cands[start : start + batch_size]
            prompts = [self.prompt(c) for c in chunk]
            ids = self.text.scored_ids(prompts[0], query.text)  # every prompt ends with the same answer prefix
            inputs = append_tokens(model_inputs(self.bb, self.vision, prompts, [[c.image] if c.image else [] for c in chunk]), ids)
            lps = continuation_logprobs(self.bb, inputs, len(ids)).to("cpu", torch.float32)
            out.extend(reduce_logprobs(row, self.spec.reduce) for row in lps)
        return out

    def _scores(self, ql: list[float]) -> RowScores:
        return RowScores(torch.tensor(ql, dtype=torch.float32), {"ql": ql})

    @torch.no_grad()
    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        """Reference: one forward per pair."""
        return self._scores(self._lls(query, cands, 1))

    def _start(self):
        """The prompt's shared start (up to the candidate's line), run once per run."""
        if self._prefix is None:
            self._prefix = run_prefix(self.bb, model_inputs(self.bb, None, [self.split.prefix], [[]]))
        return self._prefix

    def _segmentable(self, cand: Item) -> bool:
        """Whether a candidate's prompt can be run as a segment after the shared start (text, splits exactly)."""
        if cand.image or not self.split.prefix:
            return False
        if cand.text not in self._exact:
            self._exact[cand.text] = self.split.is_exact(self.bb.tokenizer, cand.text, self.prompt(cand))
        return self._exact[cand.text]

    def _segments(self, texts: list[str]) -> list:
        """Candidate segments (line and the rest of the prompt after the shared start), in packed forwards."""
        tok = self.bb.tokenizer
        rows = [tok(self.split.suffix_for(t), add_special_tokens=False)["input_ids"] for t in texts]
        return packing.run_segments(self.runner, self._start(), rows, self.max_tokens)

    def score_block(self, rows: Sequence[tuple[Item, Sequence[Item]]], records: Mapping | None = None) -> list[RowScores]:
        """The run's path: each unique text candidate's prompt once per run (the candidate cache), every pair's query
        tokens after it, packed across the block's queries; other pairs (image candidates) as whole pairs."""
        if self.vision is not None and records:
            self.vision.receive(records)
        try:
            out = [[0.0] * len(cands) for _, cands in rows]
            pairs = [(i, j) for i, (_, cands) in enumerate(rows) for j, c in enumerate(cands) if self._segmentable(c)]
            if pairs:
                segments = self.cache.get([rows[i][1][j].text for i, j in pairs], self._segments)
                first = dict(reversed(pairs))  # query -> one of its packed candidates (every prompt ends alike)
                ids = {i: self.text.scored_ids(self.prompt(rows[i][1][j]), rows[i][0].text) for i, j in first.items()}
                lps = packing.suffix_logprobs(self.runner, self._start(), [Row(seg, ids[i]) for (i, _), seg in
                                                                          zip(pairs, segments)], self.max_tokens)
                for (i, j), lp in zip(pairs, lps):
                    out[i][j] = reduce_logprobs(lp, self.spec.reduce)
            done = set(pairs)
            for i, (query, cands) in enumerate(rows):
                rest = [j for j in range(len(cands)) if (i, j) not in done]
                for j, v in zip(rest, self._lls(query, [cands[j] for j in rest], self.batch_size)):
                    out[i][j] = v
            return [self._scores(row) for row in out]
        finally:
            if self.vision is not None:
                self.vision.pending.clear()

    def counters(self) -> dict[str, int]:
        stats = self.cache.stats
        return {"candidate_segments_computed": stats.computed, "candidate_segment_hits": stats.hits,
                "candidate_segments_evicted": stats.evicted, "candidate_cache_peak_bytes": stats.peak_bytes}

    def _shared_lls(self, query: Item, cands: Sequence[Item]) -> list[float]:
        """Text candidates after the prompt's shared start (run once per run)."""
        self._start()
        ids = self.text.scored_ids(self.prompt(cands[0]), query.text)
        tok = self.bb.tokenizer
        suffixes = [tok(self.split.suffix_for(c.text), add_special_tokens=False)["input_ids"] + ids for c in cands]
        lps = suffix_logprobs(self.bb, self._prefix, suffixes, self.batch_size, scored=[len(ids)] * len(cands))
        return [reduce_logprobs(lp, self.spec.reduce) for lp in lps]

    @torch.no_grad()
    def score(self, query: Item, cands: Sequence[Item], records: Mapping | None = None) -> RowScores:
        """Text candidates after the shared prompt start; image candidates as batched whole pairs (left-padded, the
        query's tokens at the same positions in every row)."""
        if self.vision is not None and records:
            self.vision.receive(records)
        try:
            out = [0.0] * len(cands)
            text = [i for i, c in enumerate(cands) if not c.image]
            first = cands[text[0]] if text else None
            if first is not None and self.split.prefix and \
                    self.split.is_exact(self.bb.tokenizer, first.text, self.prompt(first)):
                for i, v in zip(text, self._shared_lls(query, [cands[i] for i in text])):
                    out[i] = v
                rest = [i for i, c in enumerate(cands) if c.image]
            else:
                rest = list(range(len(cands)))
            for i, v in zip(rest, self._lls(query, [cands[i] for i in rest], self.batch_size)):
                out[i] = v
            return self._scores(out)
        finally:
            if self.vision is not None:
                self.vision.pending.clear()

    def image_uses(self, query: Item, cands: Sequence[Item]) -> set[tuple[str, int]]:
        if self.vision is None:
            return set()
        return {(c.image, self.vision.count(frame_count(c.image))) for c in cands if c.image}

    def signature(self) -> dict[str, Any]:
        # the prompts as bound to the dataset (its vars and scorer variant): another wording is another folder
        return {"scorer": self.name, "spec": self.spec.as_dict(), "bound": self.describe()}

    def describe(self) -> dict[str, Any]:
        return {"prompt": self.prompt(Item.make("target", "{candidate}", None))}


# -- bidirectional (BLiM) ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BidirectionalSpec(ScorerSpec):
    """``conf/scorer/bidirectional.yaml``: BLiM's bidirectional likelihood score.

    BLiM (Ko et al., ICCV 2025, arXiv 2507.23284; the authors' code, github.com/mlvlab/BLiM, ``training_utils.py``
    ``val_one_epoch``) scores a pair with the query likelihood and the prior-normalised candidate likelihood, each a
    mean log-probability per token::

        CPN(q, c)  = log P(c | q) - alpha * log P(c)             (Candidate Prior Normalisation)
        BLiM(q, c) = w * log P(q | c) + (1 - w) * CPN(q, c)       (their ``--c`` ensemble weight)

    and then mixes that with the first-stage score, ``w2 * BLiM + (1 - w2) * stage1``: here that last step is the
    stage's ``pipeline.fusion=weighted`` with ``pipeline.fusion_weight`` = w2. ``alpha`` is ``candidate.cpn_lambda``,
    ``w`` is ``weight``. (BLiM's P(c) masks the query's tokens in attention; here it is the same prompt with a
    content-free query, ``candidate.prior_query``.)
    """

    name: ClassVar[str] = "bidirectional"
    query_kinds: ClassVar[frozenset[str]] = frozenset({TEXT})
    candidate_kinds: ClassVar[frozenset[str]] = frozenset({TEXT})

    candidate: CandidateLikelihoodSpec = field(default_factory=CandidateLikelihoodSpec)
    query: QueryLikelihoodSpec = field(default_factory=QueryLikelihoodSpec)
    weight: float = 0.5  # w: the query likelihood's share

    @classmethod
    def _coerce(cls, key: str, value: Any) -> Any:
        sub = {"candidate": CandidateLikelihoodSpec, "query": QueryLikelihoodSpec}.get(key)
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"scorer={cls.name}: {key} must be a mapping (a {sub.name} config)")
            return sub.from_dict({k: v for k, v in value.items() if k != "name"})
        return super()._coerce(key, value)

    def validate(self) -> None:
        in_unit_interval(self, "weight", self.weight)

    def templates(self) -> tuple[Template, ...]:
        return (*self.candidate.templates(), *self.query.templates())

    def build(self, ctx: BuildContext) -> Bidirectional:
        return Bidirectional(self, ctx)


class Bidirectional:
    """BLiM's bidirectional score (see :class:`BidirectionalSpec`)."""

    name = "bidirectional"

    def __init__(self, spec: BidirectionalSpec, ctx: BuildContext) -> None:
        self.spec, self.bb = spec, ctx.backbone
        self.cl = CandidateLikelihood(spec.candidate, ctx)
        self.ql = QueryLikelihood(spec.query, ctx, vision=self.cl.vision)
        self.vision = self.cl.vision

    def combine(self, cl: RowScores, ql: RowScores) -> RowScores:
        """w * query likelihood + (1 - w) * normalised candidate likelihood, with both parts kept as extras."""
        return RowScores(blim(cl.scores, ql.scores, self.spec.weight), {**cl.extras, **ql.extras})

    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        return self.combine(self.cl.naive(query, cands), self.ql.naive(query, cands))

    def score(self, query: Item, cands: Sequence[Item], records: Mapping | None = None) -> RowScores:
        return self.combine(self.cl.score(query, cands, records), self.ql.score(query, cands))

    def score_block(self, rows: Sequence[tuple[Item, Sequence[Item]]], records: Mapping | None = None) -> list[RowScores]:
        return [self.combine(a, b) for a, b in zip(self.cl.score_block(rows, records), self.ql.score_block(rows))]

    def image_uses(self, query: Item, cands: Sequence[Item]) -> set[tuple[str, int]]:
        return set()  # text only

    def signature(self) -> dict[str, Any]:
        # the prompts as bound to the dataset (its vars and scorer variant): another wording is another folder
        return {"scorer": self.name, "spec": self.spec.as_dict(), "bound": self.describe()}

    def describe(self) -> dict[str, Any]:
        return {"candidate": self.cl.describe(), "query": self.ql.describe()}

    def prepare(self, groups: Sequence[Mapping[str, Any]], done: Mapping[str, Mapping[str, Any]]) -> None:
        self.cl.prepare(groups, done)

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {}

    def counters(self) -> dict[str, int]:
        return {**self.cl.counters(), **self.ql.counters()}
