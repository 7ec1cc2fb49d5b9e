"""Cosine scores of each query against its own candidate list, in fp32."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from freeret.data.retrieval_set import Row
from freeret.errors import DataError


def score_rows(rows: Sequence[Row], embeddings: Mapping[str, torch.Tensor], budget: int = 1 << 26) -> list[torch.Tensor]:
    """Per-row cosine scores (candidate order kept, positive first).

    Candidates are normalised once and gathered per chunk of rows, so memory stays
    within ``budget`` floats however many rows share them.
    """
    cand_keys = sorted({k for r in rows for k in r.candidates})
    missing = [k for k in cand_keys + [r.query for r in rows] if k not in embeddings]
    if missing:
        raise DataError(f"{len(missing)} items have no embedding (first: {missing[0]})")
    index = {k: i for i, k in enumerate(cand_keys)}
    cands = F.normalize(torch.stack([embeddings[k] for k in cand_keys]).float(), dim=-1)
    queries = F.normalize(torch.stack([embeddings[r.query] for r in rows]).float(), dim=-1)
    out: list[torch.Tensor] = []
    width = max(len(r.candidates) for r in rows) * cands.shape[1]
    step = max(1, budget // width)
    for start in range(0, len(rows), step):
        for i, row in enumerate(rows[start : start + step], start):
            idx = torch.tensor([index[k] for k in row.candidates])
            out.append(cands[idx] @ queries[i])
    return out
