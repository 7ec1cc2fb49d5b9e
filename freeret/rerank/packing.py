"""Stage 2 at the compute limit: pairs of many queries packed into forwards of a token budget, and the run's cache of
candidate segments.

A scorer's block (:meth:`Scorer.score_block`: several queries' top-K) becomes rows: each row reads one context
segment (a query's prompt, or a candidate's prompt run once per run) and runs its own suffix (the candidate's tokens,
the query's tokens, the option suffix) after it. :func:`plan` sorts rows by suffix length and cuts them into forwards
of at most ``max_tokens`` suffix positions (padding included), so a GPU gets thousands of tokens per forward and
padding stays small; :func:`suffix_logprobs` and :func:`suffix_last_logits` run them through the one shared-prefix
routine (:class:`~freeret.backbone.shared_prefix.SharedPrefix`, ``segments=``) with the LM head at scored positions
only, and hand back host fp32 results in the rows' order.

:class:`SegmentCache` keeps candidate segments (their keys and values) on the model's device, bounded in bytes
(``pipeline.candidate_cache_mb``), least recently used first out: query likelihood runs each candidate's prompt once
per run while it stays in the cache; the stage orders queries so that those sharing candidates run together
(``freeret/rerank/stage.py``: ``order_by_overlap``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from freeret.backbone.shared_prefix import Prefix, Segment, SharedPrefix, padded

CPU_MAX_TOKENS = 1024  # suffix positions per forward on a CPU (larger batches gain little there)
GPU_MAX_TOKENS = 8192  # ... on a GPU: enough rows to fill one (pipeline.max_tokens_per_batch overrides both)
CONTEXT_FACTOR = 16  # a forward also reads at most CONTEXT_FACTOR x max_tokens context positions (stacked keys)
PADDING = 0.1  # a forward of several rows pads at most this share of its suffix positions


def default_max_tokens(device: torch.device | str) -> int:
    """The token budget of a forward when ``pipeline.max_tokens_per_batch`` is null: by the model's device."""
    return GPU_MAX_TOKENS if torch.device(device).type == "cuda" else CPU_MAX_TOKENS


@dataclass
class Row:
    """One pair's work: the context segment it reads and its suffix tokens, of which the last ``scored`` are read
    (all when None)."""

    segment: Segment
    ids: list[int]
    scored: int | None = None


def plan(widths: Sequence[int], contexts: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Row indices cut into forwards: sorted by suffix width (then context length), each forward at most
    ``max_tokens`` suffix positions (rows x longest suffix, padding included), at most ``CONTEXT_FACTOR`` x that many
    context positions, and at most ``PADDING`` of its suffix positions padding (a wider row starts the next forward);
    a row over the budget runs alone."""
    order = sorted(range(len(widths)), key=lambda i: (widths[i], contexts[i]))
    batches: list[list[int]] = []
    batch: list[int] = []
    width = context = real = 0
    for i in order:
        w, c, n = max(width, widths[i]), max(context, contexts[i]), len(batch) + 1
        if batch and (n * w > max_tokens or n * (c + w) > CONTEXT_FACTOR * max_tokens
                      or n * w - (real + widths[i]) > PADDING * n * w):
            batches.append(batch)
            batch, w, c, real = [], widths[i], contexts[i], 0
        batch.append(i)
        width, context, real = w, c, real + widths[i]
    if batch:
        batches.append(batch)
    return batches


def _forwards(runner: SharedPrefix, prefix: Prefix, rows: Sequence[Row], max_tokens: int) -> list[list[int]]:
    """:func:`plan` for rows with segments; a forward whose padded context would outgrow the model's sliding window
    runs its rows one at a time (no padding inside a lone row's context: exact at any length)."""
    out = []
    for batch in plan([len(r.ids) for r in rows], [r.segment.length for r in rows], max_tokens):
        longest, width = max(rows[i].segment.length for i in batch), max(len(rows[i].ids) for i in batch)
        out.extend([batch] if runner.fits(prefix, longest, width) else [[i] for i in batch])
    return out


def run_segments(runner: SharedPrefix, prefix: Prefix, rows: Sequence[Sequence[int]], max_tokens: int) -> list[Segment]:
    """Each token row run once after ``prefix`` into a :class:`Segment`, in packed forwards; in the rows' order."""
    out: list[Segment | None] = [None] * len(rows)
    for batch in plan([len(r) for r in rows], [0] * len(rows), max_tokens):
        for i, seg in zip(batch, runner.run_segments(prefix, [rows[i] for i in batch])):
            out[i] = seg
    return out  # type: ignore[return-value]


@torch.no_grad()
def suffix_logprobs(runner: SharedPrefix, prefix: Prefix, rows: Sequence[Row], max_tokens: int) -> list[torch.Tensor]:
    """Per row, the host fp32 log-probabilities of its scored suffix tokens, each given ``prefix``, its segment and
    the suffix tokens before it (the LM head at scored tokens only)."""
    out: list[torch.Tensor | None] = [None] * len(rows)
    for batch in _forwards(runner, prefix, rows, max_tokens):
        chunk = [rows[i] for i in batch]
        got = runner.rows_logprobs(prefix, [r.ids for r in chunk], [len(r.ids) if r.scored is None else r.scored
                                                                    for r in chunk], [r.segment for r in chunk])
        for i, lp in zip(batch, got):
            out[i] = lp
    return out  # type: ignore[return-value]


@torch.no_grad()
def suffix_last_logits(runner: SharedPrefix, prefix: Prefix, rows: Sequence[Row], vocab: torch.Tensor,
                       max_tokens: int) -> torch.Tensor:
    """(rows, vocab) host fp32 logits at each row's last suffix token, vocabulary rows ``vocab`` only."""
    out = torch.empty(len(rows), len(vocab), dtype=torch.float32)
    for batch in _forwards(runner, prefix, rows, max_tokens):
        chunk = [rows[i] for i in batch]
        ids, mask = padded([r.ids for r in chunk])
        out[batch] = runner.last_logits(prefix, ids, mask, vocab, segments=[r.segment for r in chunk]).to("cpu", torch.float32)
    return out


@dataclass
class CacheStats:
    """What a segment cache did this run (the results file's ``counters``)."""

    hits: int = 0
    computed: int = 0
    evicted: int = 0
    peak_bytes: int = 0


@dataclass
class SegmentCache:
    """Segments by key (a candidate's text), on the model's device, at most ``max_mb`` MiB, least recently used out.

    ``max_mb=0`` keeps nothing between blocks (each block still runs each of its candidates once)."""

    max_mb: float
    items: OrderedDict[Hashable, Segment] = field(default_factory=OrderedDict)
    nbytes: int = 0
    stats: CacheStats = field(default_factory=CacheStats)

    def get(self, keys: Sequence[Hashable], compute: Callable[[list[Hashable]], list[Segment]]) -> list[Segment]:
        """The segment of each key: cached ones, the rest computed (once per unique key, in one call) and kept."""
        wanted = list(dict.fromkeys(keys))
        missing = [k for k in wanted if k not in self.items]
        self.stats.hits += len(wanted) - len(missing)
        fresh = dict(zip(missing, compute(missing))) if missing else {}
        self.stats.computed += len(fresh)
        found = {k: self.items[k] for k in wanted if k in self.items} | fresh
        for k in wanted:  # most recently used last
            if k in self.items:
                self.items.move_to_end(k)
        for k, seg in fresh.items():
            self.items[k] = seg
            self.nbytes += seg.nbytes
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.nbytes)
        limit = self.max_mb * 2**20
        while self.items and self.nbytes > limit:
            _, old = self.items.popitem(last=False)
            self.nbytes -= old.nbytes
            self.stats.evicted += 1
        return [found[k] for k in keys]
