"""Metrics and scoring: known values, the pessimistic tie rule, fp32 cosine over per-row candidates."""

from __future__ import annotations

import pytest
import torch

from freeret.data.retrieval_set import Row
from freeret.eval.metrics import retrieval_metrics
from freeret.retrieve.scoring import score_rows


def test_known_values():
    m = retrieval_metrics([torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])])
    assert m["hit@1"] == pytest.approx(0.5)
    assert m["hit@5"] == pytest.approx(0.5)  # second positive is ranked 6th
    assert m["hit@10"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 6) / 2)


def test_ties_count_against_the_positive():
    m = retrieval_metrics([torch.ones(10)])
    assert m["hit@1"] == 0.0 and m["mrr"] == pytest.approx(0.1)


def test_score_rows_cosine_and_order():
    emb = {"q": torch.tensor([1.0, 0.0]), "a": torch.tensor([2.0, 0.0]), "b": torch.tensor([0.0, 3.0]), "c": torch.tensor([-1.0, 1.0])}
    rows = [Row("r0", "q", ("a", "b", "c")), Row("r1", "q", ("b", "a"))]
    scores = score_rows(rows, emb, budget=4)  # tiny budget: one row per chunk
    assert torch.allclose(scores[0], torch.tensor([1.0, 0.0, -2 ** -0.5]))
    assert torch.allclose(scores[1], torch.tensor([0.0, 1.0]))
    assert retrieval_metrics(scores)["hit@1"] == 0.5
