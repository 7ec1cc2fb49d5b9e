"""freeret.search: exact torch top-k and the faiss indexes against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freeret.search import build_index, exact_topk, recall_at_k


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_topk_matches_full_sort_across_chunks():
    base, q = torch.from_numpy(_unit(1000, 16, 0)), torch.from_numpy(_unit(7, 16, 1))
    scores, ids = exact_topk(base, q, k=10, chunk=128)
    want_s, want_i = (q @ base.T).topk(10, dim=1)
    assert torch.equal(ids, want_i)
    assert torch.allclose(scores, want_s)


def test_recall_at_k():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("kind", ["exact", "flat", "ivf", "hnsw"])
def test_index_kinds_find_the_exact_neighbours(kind):
    pytest.importorskip("faiss") if kind != "exact" else None
    base, q = _unit(2000, 32, 0), _unit(20, 32, 1)
    _, truth = exact_topk(torch.from_numpy(base), torch.from_numpy(q), k=10)
    index = build_index(base, kind, nlist=16, train_size=1000, ef_search=200)
    if kind == "ivf":
        index.set_search_params(nprobe=16)  # every list: exhaustive, so exact
    scores, ids = index.search(q, 10)
    assert ids.shape == (20, 10)
    assert recall_at_k(ids, truth.numpy()) >= (0.95 if kind == "hnsw" else 1.0)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(np.zeros((4, 2), np.float32), "lsh")
