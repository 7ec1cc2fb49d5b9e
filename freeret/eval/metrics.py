"""Retrieval metrics (torchmetrics) with an explicit tie rule.

Ties are broken AGAINST the positive(s): a candidate scoring exactly as high as a
positive ranks above it. (MMEB's own argmax puts the positive, index 0, first on ties;
ours is the pessimistic reading, so a constant scorer gets hit@1 = 0, not 1.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.retrieval import (
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_reciprocal_rank,
)

TIE_RULE = "pessimistic: candidates tied with the positive rank above it"
MAIN_SCORE = "hit@1"
METRICS = ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@5", "ndcg@10")


def tie_broken(scores: torch.Tensor, n_positive: int = 1) -> torch.Tensor:
    """Scores turned into strict rank scores; the positives (the first ``n_positive``) lose every tie."""
    n = len(scores)
    positives_last = torch.cat([torch.arange(n_positive, n), torch.arange(n_positive)])
    order = positives_last[torch.argsort(-scores[positives_last], stable=True)]
    ranked = torch.empty(n, dtype=torch.float)
    ranked[order] = torch.arange(n, 0, -1, dtype=torch.float)
    return ranked


def retrieval_metrics(per_row_scores: Sequence[torch.Tensor], n_positives: Sequence[int] | None = None) -> dict[str, float]:
    """hit@1/5/10 (a positive in the top k; = recall@k with one positive), MRR, NDCG@5/@10, averaged over rows."""
    totals = dict.fromkeys(METRICS, 0.0)
    n_positives = n_positives or [1] * len(per_row_scores)
    for scores, n_pos in zip(per_row_scores, n_positives):
        preds = tie_broken(scores, n_pos)
        target = torch.zeros_like(preds, dtype=torch.bool)
        target[:n_pos] = True
        for k in (1, 5, 10):
            totals[f"hit@{k}"] += float(retrieval_hit_rate(preds, target, top_k=k))
        totals["mrr"] += float(retrieval_reciprocal_rank(preds, target))
        for k in (5, 10):
            totals[f"ndcg@{k}"] += float(retrieval_normalized_dcg(preds, target, top_k=k))
    n = max(len(per_row_scores), 1)
    return {k: v / n for k, v in totals.items()}
