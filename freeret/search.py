"""Top-k inner-product search over a fixed matrix: exact (torch) or a faiss index (flat, IVF, HNSW).

Vectors are compared by inner product, so L2-normalise them first for cosine. faiss is an optional
dependency (``pip install -e ".[search]"``); the exact torch search needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from freeret.optional import require

INDEX_KINDS = ("exact", "flat", "ivf", "hnsw")


def faiss_module(needed_by: str = "freeret.search (flat, ivf and hnsw indexes)") -> Any:
    """faiss, or a one-line error naming what needs it and how to install it (exact search needs nothing)."""
    return require("faiss", needed_by)


@torch.inference_mode()
def exact_topk(base: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 262_144) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product: (scores, indices), each (n_queries, k); the base is scanned in chunks."""
    best_s = torch.full((queries.shape[0], 0), float("-inf"))
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long)
    for start in range(0, base.shape[0], chunk):
        scores = queries @ base[start : start + chunk].T
        s, i = scores.topk(min(k, scores.shape[1]), dim=1)
        best_s, pos = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, pos)
    return best_s, best_i


@dataclass
class SearchIndex:
    """A searchable index over ``base`` rows: ``kind`` is exact, flat, ivf or hnsw."""

    kind: str
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    base: torch.Tensor | None = None  # kept only by the exact kind
    index: Any = None

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top-k rows per query, best first."""
        q = torch.as_tensor(queries, dtype=torch.float32)
        if self.kind == "exact":
            s, i = exact_topk(self.base, q, k)
            return s.numpy(), i.numpy()
        return self.index.search(np.ascontiguousarray(q.numpy()), k)

    def set_search_params(self, **params: Any) -> None:
        """Change query-time knobs: ``nprobe`` (ivf) or ``ef_search`` (hnsw)."""
        if "nprobe" in params:
            self.index.nprobe = int(params["nprobe"])
        if "ef_search" in params:
            self.index.hnsw.efSearch = int(params["ef_search"])
        self.params.update(params)


def build_index(base: np.ndarray | torch.Tensor, kind: str = "exact", nlist: int = 1024, nprobe: int = 16,
                train_size: int = 65_536, niter: int = 10, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128,
                seed: int = 0) -> SearchIndex:
    """Build an inner-product index over ``base`` (n, d) float32 rows."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; known: {', '.join(INDEX_KINDS)}")
    n, dim = base.shape
    if kind == "exact":
        return SearchIndex(kind, dim, {}, torch.as_tensor(base, dtype=torch.float32))
    faiss = faiss_module(f"freeret.search's {kind} index")
    x = np.ascontiguousarray(np.asarray(base, dtype=np.float32))
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        params: dict[str, Any] = {}
    elif kind == "ivf":
        nlist = min(nlist, n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, min(n, max(train_size, nlist)), replace=False))]
        index.cp.seed, index.cp.niter = seed, niter
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
        params = {"nlist": nlist, "nprobe": index.nprobe, "train_size": len(sample)}
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        params = {"m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
    index.add(x)
    return SearchIndex(kind, dim, params, None, index)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k ids (rows of ``truth``) present in ``found``'s rows."""
    hits = [len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]
    return float(np.mean(hits))
