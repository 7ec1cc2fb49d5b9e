"""Retrieval metrics (torchmetrics) with an explicit tie rule.

Ties are broken AGAINST the positive: a candidate scoring exactly as high as the
positive ranks above it. (MMEB's own argmax puts the positive, index 0, first on ties;
ours is the pessimistic reading, so a constant scorer gets hit@1 = 0, not 1.)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional.retrieval import (
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_reciprocal_rank,
)

TIE_RULE = "pessimistic: candidates tied with the positive rank above it"
MAIN_SCORE = "hit@1"


def tie_broken(scores: torch.Tensor) -> torch.Tensor:
    """Scores turned into strict rank scores; the positive (index 0) loses every tie."""
    n = len(scores)
    positive_last = torch.cat([torch.arange(1, n), torch.zeros(1, dtype=torch.long)])
    order = positive_last[torch.argsort(-scores[positive_last], stable=True)]
    ranked = torch.empty(n, dtype=torch.float)
    ranked[order] = torch.arange(n, 0, -1, dtype=torch.float)
    return ranked


def retrieval_metrics(per_row_scores: Sequence[torch.Tensor]) -> dict[str, float]:
    """hit@1/5/10 (= recall@k with one positive), MRR and NDCG@10, averaged over rows."""
    totals = {"hit@1": 0.0, "hit@5": 0.0, "hit@10": 0.0, "mrr": 0.0, "ndcg@10": 0.0}
    for scores in per_row_scores:
        preds = tie_broken(scores)
        target = torch.zeros_like(preds, dtype=torch.bool)
        target[0] = True
        for k in (1, 5, 10):
            totals[f"hit@{k}"] += float(retrieval_hit_rate(preds, target, top_k=k))
        totals["mrr"] += float(retrieval_reciprocal_rank(preds, target))
        totals["ndcg@10"] += float(retrieval_normalized_dcg(preds, target, top_k=10))
    n = max(len(per_row_scores), 1)
    return {k: v / n for k, v in totals.items()}
