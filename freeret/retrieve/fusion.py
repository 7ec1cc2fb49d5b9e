"""Which scores rank a row's candidates: dense cosine, BM25, both fused, PromptReps' lexical vectors from the same
forward (``promptreps``), alone or fused with the dense cosine (``hybrid_promptreps``), or a trained embedder's cosine
(the baseline ``sentence_transformers``, never fused) (``conf/retriever``).

Fusion is per row, over that row's candidates:

- ``rrf``: reciprocal rank fusion, ``sum_r 1 / (k + rank_r)``; a rank is 1 + the number of candidates scored
  strictly higher, so tied candidates share a rank (a stable sort would favour the positive, listed first).
- ``weighted``: ``w * norm(dense) + (1 - w) * norm(bm25 or promptreps)``, each min-max normalised over the row (a constant
  row normalises to 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from freeret.errors import ConfigError, known_keys
from freeret.retrieve.lexical import BM25Spec
from freeret.retrieve.promptreps import PromptRepsSpec
from freeret.retrieve.trained import TrainedSpec

RETRIEVERS = ("dense", "bm25", "hybrid", "promptreps", "hybrid_promptreps", "sentence_transformers")
FUSED = ("hybrid", "hybrid_promptreps")
FUSIONS = ("rrf", "weighted")


@dataclass(frozen=True)
class RetrieverSpec:
    """One ``conf/retriever`` entry."""

    name: str = "dense"
    fusion: str = "rrf"
    rrf_k: float = 60.0
    weight: float = 0.5  # weighted fusion: the dense share
    bm25: BM25Spec = field(default_factory=BM25Spec)
    sentence_transformers: TrainedSpec = field(default_factory=TrainedSpec)  # the trained baseline
    promptreps: PromptRepsSpec = field(default_factory=PromptRepsSpec)  # the lexical readout's top k

    def __post_init__(self) -> None:
        if self.name not in RETRIEVERS:
            raise ConfigError(f"retriever.name={self.name!r} is not one of {', '.join(RETRIEVERS)}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"retriever.fusion={self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"retriever.weight={self.weight} must lie in [0, 1]")
        if self.rrf_k < 0:
            raise ConfigError(f"retriever.rrf_k={self.rrf_k} must be >= 0")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> RetrieverSpec:
        """Build from a ``conf/retriever`` mapping (None = dense), refusing unknown keys."""
        cfg = known_keys(cfg, cls, "retriever")
        cfg["bm25"] = BM25Spec.from_dict(cfg.get("bm25"))
        cfg["sentence_transformers"] = TrainedSpec.from_dict(cfg.get("sentence_transformers"))
        cfg["promptreps"] = PromptRepsSpec.from_dict(cfg.get("promptreps"))
        return cls(**cfg)

    @property
    def dense(self) -> bool:
        """Whether stage 1 needs the backbone's embeddings."""
        return self.name in ("dense", "hybrid", "promptreps", "hybrid_promptreps")

    @property
    def cosine(self) -> bool:
        """Whether the dense cosine ranks (alone or fused); post-processing applies to it."""
        return self.name in ("dense", "hybrid", "hybrid_promptreps")

    @property
    def uses_promptreps(self) -> bool:
        """Whether PromptReps' lexical vectors rank (alone or fused with the dense cosine)."""
        return self.name in ("promptreps", "hybrid_promptreps")

    @property
    def lexical(self) -> bool:
        """Whether BM25 runs."""
        return self.name in ("bm25", "hybrid")

    @property
    def trained(self) -> bool:
        """Whether the trained embedder ranks (``retriever=sentence_transformers``)."""
        return self.name == "sentence_transformers"

    @property
    def label(self) -> str:
        """A short name for tables and summary lines, e.g. ``hybrid(rrf)``."""
        if self.trained:
            return f"{self.name}({self.sentence_transformers.model})"
        if self.name == "promptreps":
            return f"promptreps(k={self.promptreps.k})"
        if self.name not in FUSED:
            return self.name
        return f"{self.name}(rrf, k={self.rrf_k:g})" if self.fusion == "rrf" else f"{self.name}(weighted, w={self.weight:g})"

    def require(self) -> None:
        """Import the optional packages this retriever uses (BM25: bm25s, PyStemmer; the trained embedder:
        sentence-transformers and its weights' package): a missing one is one line before any data or weights load."""
        if self.lexical:
            self.bm25.require(self.name)
        if self.trained:
            self.sentence_transformers.require(self.name)

    def describe(self) -> dict[str, Any]:
        """For results: what ranked the candidates."""
        out: dict[str, Any] = {"name": self.name, "label": self.label}
        if self.name in FUSED:
            out.update(fusion=self.fusion, **({"rrf_k": self.rrf_k} if self.fusion == "rrf" else {"weight": self.weight}))
        if self.lexical:
            out["bm25"] = dict(self.bm25.__dict__)
        if self.trained:
            out["sentence_transformers"] = self.sentence_transformers.describe()
        if self.uses_promptreps:
            out["promptreps"] = {"k": self.promptreps.k}
        return out


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """1 + how many entries score strictly higher (ties share the best rank), fp32."""
    ascending = scores.sort().values
    higher = scores.numel() - torch.searchsorted(ascending, scores, right=True)
    return 1.0 + higher.float()


def minmax(scores: torch.Tensor) -> torch.Tensor:
    """Scores scaled to [0, 1] over the row; a constant row becomes zeros."""
    lo, hi = scores.min(), scores.max()
    return (scores - lo) / (hi - lo) if hi > lo else torch.zeros_like(scores)


def fuse(dense: torch.Tensor, lexical: torch.Tensor, spec: RetrieverSpec) -> torch.Tensor:
    """One row's fused scores (see the module docstring)."""
    dense, lexical = dense.float(), lexical.float()
    if spec.fusion == "rrf":
        return 1.0 / (spec.rrf_k + ranks(dense)) + 1.0 / (spec.rrf_k + ranks(lexical))
    return spec.weight * minmax(dense) + (1.0 - spec.weight) * minmax(lexical)
