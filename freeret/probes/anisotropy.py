"""Anisotropy per sub-layer point: how much embeddings of unrelated items collapse onto a common direction.

Mean pairwise cosine (off-diagonal) says how similar unrelated items look; the effective rank (exp of the
entropy of the normalised singular values of the centred matrix) and the share of variance in the top
principal component say how many directions the space still uses.
"""

from __future__ import annotations

from typing import Any

import torch

from freeret.probes.sweep import Sweep


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine over all distinct pairs of rows of ``x`` (n, d), n >= 2."""
    if x.shape[0] < 2:
        raise ValueError("mean pairwise cosine needs at least two items")
    z = torch.nn.functional.normalize(x.double(), dim=-1)
    n = z.shape[0]
    total = (z.sum(0) @ z.sum(0)) - (z * z).sum()
    return float(total / (n * (n - 1)))


def _singular_values(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return torch.linalg.svdvals(x - x.mean(0, keepdim=True))


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred rows (Roy & Vetterli 2007)."""
    s = _singular_values(x)
    p = s / s.sum().clamp_min(1e-30)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def top_pc_share(x: torch.Tensor) -> float:
    """Share of the centred variance carried by the first principal component."""
    var = _singular_values(x) ** 2
    return float(var[0] / var.sum().clamp_min(1e-30))


def anisotropy_profile(sweep: Sweep) -> list[dict[str, Any]]:
    """One record per point: label, mean pairwise cosine, effective rank, top-PC share."""
    return [
        {"point": label, "mean_cosine": mean_pairwise_cosine(states), "effective_rank": effective_rank(states),
         "top_pc_share": top_pc_share(states)}
        for label, states in zip(sweep.labels, sweep.states)
    ]

