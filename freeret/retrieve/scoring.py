"""Cosine scores of each query against its own candidate list, in fp32."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from freeret.data.retrieval_set import Row
from freeret.errors import DataError
from freeret.retrieve.shards import ShardStore


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


Transform = Callable[[torch.Tensor, str], torch.Tensor]  # (raw vectors, role) -> vectors that cosine compares


def score_store(rows: Sequence[Row], store: ShardStore, key_of: Mapping[str, str] | None = None,
                budget: int = 1 << 24, transform: Transform | None = None) -> list[torch.Tensor]:
    """Per-row cosine scores streamed from a shard store: one shard in memory at a time.

    ``key_of`` maps item keys to store keys (identity when None). Queries are gathered once (one vector per
    row); candidates are read shard by shard and scattered into each row's score vector, so memory holds the
    queries, the output and one shard (times a row chunk within ``budget`` floats), whatever the store size.
    """
    sk = (lambda k: key_of[k]) if key_of is not None else (lambda k: k)
    if transform is None:  # no post-processing: raw vectors
        def transform(x: torch.Tensor, role: str) -> torch.Tensor:
            return x
    need = [sk(k) for r in rows for k in (r.query, *r.candidates)]
    missing = [k for k in need if k not in store]
    if missing:
        raise DataError(f"{len(missing)} items have no embedding (first: {missing[0]})")
    queries = F.normalize(transform(store.gather(sk(r.query) for r in rows).float(), "query"), dim=-1)
    shard_of, pos_of = candidate_locations(rows, store, sk)
    width = shard_of.shape[1]
    out = torch.zeros(len(rows), width)
    for n, emb in store.iter_shards():
        hit = shard_of == n
        if not hit.any():
            continue
        cands = F.normalize(transform(emb.float(), "target"), dim=-1)
        step = max(1, budget // max(1, cands.shape[0]))
        for lo in range(0, len(rows), step):
            block = hit[lo : lo + step]
            if not block.any():
                continue
            sims = queries[lo : lo + step] @ cands.T  # rows in chunk x shard size
            r_idx, c_idx = block.nonzero(as_tuple=True)
            out[lo + r_idx, c_idx] = sims[r_idx, pos_of[lo + r_idx, c_idx]]
    return [out[i, : len(r.candidates)].clone() for i, r in enumerate(rows)]


def candidate_locations(rows: Sequence[Row], store: ShardStore,
                        sk: Callable[[str], str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each row's candidates lie in the store: (rows, widest row) shard numbers (-1: no candidate) and row
    positions inside their shard, so scores can be scattered shard by shard (``sk``: item key -> store key)."""
    width = max((len(r.candidates) for r in rows), default=0)
    shard_of = torch.full((len(rows), width), -1, dtype=torch.int32)
    pos_of = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        packed = torch.tensor([store.index[sk(k)] for k in r.candidates], dtype=torch.int64)
        shard_of[i, : len(packed)] = (packed >> 32).to(torch.int32)
        pos_of[i, : len(packed)] = packed & 0xFFFFFFFF
    return shard_of, pos_of


def search_store(queries: torch.Tensor, store: ShardStore, k: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Top-``k`` cosine over every item in the store, streamed: (scores [Q, k], keys per query).

    Only a running top-k per query is kept besides the current shard, so memory does not grow with the store.
    """
    q = F.normalize(queries.float(), dim=-1)
    best = torch.full((q.shape[0], 0), float("-inf"))
    best_ids = torch.zeros((q.shape[0], 0), dtype=torch.int64)  # shard * 2**32 + row
    for n, emb in store.iter_shards():
        sims = q @ F.normalize(emb.float(), dim=-1).T
        ids = (torch.arange(emb.shape[0]) + (n << 32)).expand_as(sims)
        best, top = torch.cat([best, sims], 1).topk(min(k, best.shape[1] + sims.shape[1]), dim=1)
        best_ids = torch.cat([best_ids, ids], 1).gather(1, top)
    shard_keys = {n: store.shards[n].keys for n in {i >> 32 for row in best_ids.tolist() for i in row}}
    return best, [[shard_keys[i >> 32][i & 0xFFFFFFFF] for i in row] for row in best_ids.tolist()]
