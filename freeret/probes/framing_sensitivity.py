"""Framing sensitivity of pointwise reranking: label prior, accuracy, and order flips per framing.

- option bias: P(option) when query and candidate carry no content (mean over a few content-free
  strings); a neutral framing sits at 1/len(options);
- accuracy on a labelled set (each query with its positive, and with one seeded distractor): the pair is
  called a match when the match option has the highest probability;
- flip rate: share of pairs whose call changes when the two options are listed in the other order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from freeret.backbone.backbone import Backbone
from freeret.data.retrieval_set import Item, RetrievalSet
from freeret.rerank.framing import Framing, swap_options
from freeret.rerank.scorers.choice import Choice

CONTENT_FREE = ("", "N/A", "[MASK]")


def option_bias(scorer: Choice, content_free: Sequence[str] = CONTENT_FREE) -> dict[str, float]:
    """Mean P(option) over content-free (query, candidate) pairs, keyed by option label."""
    probs = sum(scorer.naive_probs(Item.make("query", text, None), [Item.make("target", text, None)])[0]
                for text in content_free) / len(content_free)
    return {opt: float(p) for opt, p in zip(scorer.framing.options, probs)}


def labelled_pairs(rset: RetrievalSet, n_queries: int, seed: int = 0) -> list[tuple[Item, Item, Item]]:
    """(query, positive, one seeded distractor) for the first ``n_queries`` rows that have a distractor."""
    rng = random.Random(seed)
    out = []
    for row in rset.rows:
        if len(row.candidates) < 2:
            continue
        neg = row.candidates[rng.randrange(1, len(row.candidates))]
        out.append((rset.items[row.query], rset.items[row.candidates[0]], rset.items[neg]))
        if len(out) == n_queries:
            break
    return out


def match_calls(scorer: Choice, triples: Sequence[tuple[Item, Item, Item]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(match), called match) for [positive, distractor] of every triple, flattened in that order."""
    probs = torch.cat([scorer.fast_probs(q, [pos, neg]) for q, pos, neg in triples])
    return probs[:, scorer.framing.match_index], probs.argmax(-1) == scorer.framing.match_index


def framing_record(backbone: Backbone, framing: Framing, triples: Sequence[tuple[Item, Item, Item]],
                   content_free: Sequence[str] = CONTENT_FREE) -> dict[str, Any]:
    """Option bias, accuracy (and per class), flip rate and mean P(match) of one framing (bound to the dataset)."""
    scorer = Choice(backbone, framing)
    swapped = Choice(backbone, swap_options(framing))
    labels = torch.tensor([True, False] * len(triples))
    p_match, calls = match_calls(scorer, triples)
    _, calls_swapped = match_calls(swapped, triples)
    bias = option_bias(scorer, content_free)
    return {
        "framing": framing.name,
        "options": list(framing.options),
        "match": framing.match,
        "option_bias": bias,
        "p_match_content_free": bias[framing.match],
        "accuracy": float((calls == labels).float().mean()),
        "accuracy_positive": float(calls[labels].float().mean()),
        "accuracy_negative": float((~calls[~labels]).float().mean()),
        "flip_rate": float((calls != calls_swapped).float().mean()),
        "mean_p_match_positive": float(p_match[labels].mean()),
        "mean_p_match_negative": float(p_match[~labels].mean()),
        "swapped_template": swapped.framing.template,
        "swapped_match": swapped.framing.match,
    }
