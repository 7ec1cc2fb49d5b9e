"""PromptReps lexical scores (Zhuang et al. 2024, arXiv 2404.18424; ``retriever=promptreps|hybrid_promptreps``).

The same forward that gives the dense vector gives, at the last prompt token, the next-token distribution of the
one-word prompt: w = log1p(relu(logits)), kept as its top ``k`` tokens (:meth:`freeret.backbone.Backbone.lexical`).
A stored row is ``concat(dense, k token ids as floats, k weights)``; a pair scores the sparse dot product of its two
top-k vectors. Scores stream from the store one shard at a time, each row chunk's queries scattered into a dense
(chunk, vocabulary) block, so memory is bounded by ``budget`` floats and never holds (items, vocabulary).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from freeret.data.retrieval_set import Row
from freeret.errors import ConfigError, DataError, known_keys
from freeret.retrieve.scoring import candidate_locations
from freeret.retrieve.shards import ShardStore


@dataclass(frozen=True)
class PromptRepsSpec:
    """``retriever.promptreps``: how many top tokens each item keeps."""

    k: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"retriever.promptreps.k={self.k!r} must be an integer >= 1")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> PromptRepsSpec:
        """Build from a mapping, refusing unknown keys."""
        return cls(**known_keys(cfg, cls, "retriever.promptreps"))


def split(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids as int64, weights) of lexical parts (n, 2k): ids first, then their weights."""
    return rows[:, :k].long(), rows[:, k : 2 * k].float()


def sparse_dot(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Scores of lexical parts ``a`` (n, 2k) against ``b`` (m, 2k), (n, m): the naive reference (small inputs)."""
    (ia, wa), (ib, wb) = split(a, k), split(b, k)
    match = (ia[:, None, :, None] == ib[None, :, None, :]).float()
    return (match * wa[:, None, :, None] * wb[None, :, None, :]).sum((2, 3))


def promptreps_scores(rows: Sequence[Row], store: ShardStore, k: int, key_of: Mapping[str, str] | None = None,
                      budget: int = 1 << 24) -> list[torch.Tensor]:
    """Per-row lexical scores (candidate order kept) from ``store`` read through its lexical columns (2k wide)."""
    sk = (lambda key: key_of[key]) if key_of is not None else (lambda key: key)
    missing = [key for r in rows for key in (r.query, *r.candidates) if sk(key) not in store]
    if missing:
        raise DataError(f"{len(missing)} items have no embedding (first: {missing[0]})")
    q_ids, q_w = split(store.gather(sk(r.query) for r in rows), k)
    vocab = int(q_ids.max()) + 1 if len(rows) else 1
    shard_of, pos_of = candidate_locations(rows, store, sk)
    width = shard_of.shape[1]
    out = torch.zeros(len(rows), width)
    step = max(1, min(budget // vocab, budget // max(1, width * k)))  # (chunk, vocab) and (pairs, k) stay in budget
    for n, emb in store.iter_shards():
        hit = shard_of == n
        if not hit.any():
            continue
        c_ids, c_w = split(emb, k)
        inside = c_ids < vocab  # a token no query holds scores nothing
        c_ids = torch.where(inside, c_ids, torch.zeros_like(c_ids))
        c_w = torch.where(inside, c_w, torch.zeros_like(c_w))
        for lo in range(0, len(rows), step):
            block = hit[lo : lo + step]
            if not block.any():
                continue
            dense = torch.zeros(block.shape[0], vocab)
            dense.scatter_(1, q_ids[lo : lo + step], q_w[lo : lo + step])
            r_idx, c_idx = block.nonzero(as_tuple=True)
            at = pos_of[lo + r_idx, c_idx]
            out[lo + r_idx, c_idx] = (dense[r_idx[:, None], c_ids[at]] * c_w[at]).sum(1)
    return [out[i, : len(r.candidates)].clone() for i, r in enumerate(rows)]
