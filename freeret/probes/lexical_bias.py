"""Lexical bias per sub-layer point: where the pooled state turns from meaning toward the next word.

- alpha(p) = cos(h_p, h_{p-1}): how much one sub-layer changes the state (the paper: > 0.9 until the final MLP);
- beta(p) = cos(h_p, W_U[t]) with t the model's own argmax next token (read from its output logits);
- logit lens: top-k tokens of LM-head(final_norm(h_p));
- similarity of WordNet synonym pairs (two lemmas of one synset) vs random pairs of the same words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.functional import cosine_similarity

from freeret.backbone.backbone import Backbone
from freeret.data.wordnet import load_synsets, seeded_key
from freeret.probes.sweep import Sweep

_WORD = re.compile(r"[a-z]{3,}")
POS = ("n", "v", "a", "r")


def synonym_pairs(n: int, seed: int = 0, root: Path | None = None, pos: Sequence[str] = POS) -> list[tuple[str, str]]:
    """``n`` seeded pairs of single-word lemmas of one synset; no word appears in two pairs."""
    pool = [s for p in pos for s in load_synsets(p, root) if s.tag_count >= 1]
    pool.sort(key=lambda s: seeded_key(seed, s.pos, s.offset))
    pairs: list[tuple[str, str]] = []
    used: set[str] = set()
    for s in pool:
        words = [w for w in dict.fromkeys(s.lemmas) if _WORD.fullmatch(w) and w not in used]
        if len(words) < 2:
            continue
        pairs.append((words[0], words[1]))
        used.update(words[:2])
        if len(pairs) == n:
            return pairs
    raise ValueError(f"only {len(pairs)} synonym pairs available, asked for {n}")


def random_pairs(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """Index pairs (2i, 2j+1) with j != i: the first word of pair i against the second word of another pair."""
    if n < 2:
        raise ValueError("random pairs need at least two synonym pairs")
    rng = random.Random(seed)
    shift = [(i + rng.randrange(1, n)) % n for i in range(n)]
    return [(2 * i, 2 * j + 1) for i, j in enumerate(shift)]


def alpha(states: torch.Tensor) -> list[float | None]:
    """Mean over items of cos(point p, point p-1); None for the first point."""
    cos = cosine_similarity(states[1:], states[:-1], dim=-1).mean(-1)
    return [None] + [float(c) for c in cos]


def beta(states: torch.Tensor, head: torch.Tensor, next_token: torch.Tensor) -> list[float]:
    """Mean over items of cos(point, LM-head row of the item's predicted next token)."""
    rows = head.detach().float()[next_token]
    return [float(c) for c in cosine_similarity(states, rows.unsqueeze(0), dim=-1).mean(-1)]


def pair_similarity(states: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> list[float]:
    """Mean cosine of the item pairs (row indices) at every point."""
    a = torch.tensor([i for i, _ in pairs])
    b = torch.tensor([j for _, j in pairs])
    return [float(c) for c in cosine_similarity(states[:, a], states[:, b], dim=-1).mean(-1)]


@torch.no_grad()
def lens_logits(backbone: Backbone, states: torch.Tensor) -> torch.Tensor:
    """Logit lens: LM-head(final_norm(h)) for states (..., hidden), in fp32."""
    dtype = next(backbone.final_norm.parameters()).dtype
    normed = backbone.final_norm(states.to(backbone.device, dtype)).float()
    head = backbone.model.get_output_embeddings()
    logits = normed @ head.weight.float().T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.float()
    return logits.cpu()


def logit_lens(backbone: Backbone, sweep: Sweep, items: Sequence[int], k: int = 5) -> dict[str, list[list[str]]]:
    """Top-k tokens (decoded) per point for the chosen item rows: {point: [[tok, ...] per item]}."""
    top = lens_logits(backbone, sweep.states[:, list(items)]).topk(k, dim=-1).indices
    decode = backbone.tokenizer.convert_ids_to_tokens
    return {label: [decode(row.tolist()) for row in top[p]] for p, label in enumerate(sweep.labels)}


def lexical_profile(backbone: Backbone, sweep: Sweep, pairs: Sequence[tuple[str, str]], seed: int = 0,
                    ) -> list[dict[str, Any]]:
    """One record per point: alpha, beta, synonym and random pair similarity (items are the pairs' words in order)."""
    n = len(pairs)
    syn = pair_similarity(sweep.states, [(2 * i, 2 * i + 1) for i in range(n)])
    rnd = pair_similarity(sweep.states, random_pairs(n, seed))
    a = alpha(sweep.states)
    b = beta(sweep.states, backbone.model.get_output_embeddings().weight, sweep.next_token)
    return [{"point": label, "alpha": a[p], "beta": b[p], "synonym_cosine": syn[p], "random_cosine": rnd[p],
             "synonym_minus_random": syn[p] - rnd[p]} for p, label in enumerate(sweep.labels)]

