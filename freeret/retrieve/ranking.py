"""Stage-1 scores of every row from the stored raw vectors: post-processing statistics, then dense, BM25 or fused;
PromptReps' lexical scores from the same stored rows (their last 2k columns; post-processing fits and applies to the
dense part only); or the trained baseline's cosine (``retriever=sentence_transformers``), which embeds the texts itself.

Nothing here re-embeds: post-processing and the retriever choice are applied when scoring, so a sweep over them
reuses the vectors in the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from freeret.data.retrieval_set import Item, RetrievalSet, Row
from freeret.retrieve.fusion import RetrieverSpec, fuse
from freeret.retrieve.lexical import bm25_scores
from freeret.retrieve.postprocess import IDENTITY, PostprocessSpec, Statistics, fit
from freeret.retrieve.promptreps import promptreps_scores
from freeret.retrieve.scoring import score_store
from freeret.retrieve.shards import ShardStore
from freeret.retrieve.trained import trained_scores


def fit_vectors(spec: PostprocessSpec, store: ShardStore, keys_by_role: Mapping[str, Sequence[str]]) -> dict[str, torch.Tensor]:
    """The raw vectors each statistics group is fitted on: store keys per role -> per group (``spec.groups``).
    Keys are de-duplicated and sorted, so the fit does not depend on row order or on which item is a positive."""
    groups: dict[str, set[str]] = {}
    for role, keys in keys_by_role.items():
        groups.setdefault(spec.group(role), set()).update(keys)
    return {g: store.gather(sorted(keys)) for g, keys in groups.items() if keys}


def fit_statistics(spec: PostprocessSpec, store: ShardStore | None, keys_by_role: Mapping[str, Sequence[str]],
                   head: torch.Tensor | None = None, folder: Path | None = None, setting: str | None = None,
                   seed: int = 0) -> Statistics:
    """Fit ``spec`` on the stored vectors of ``keys_by_role`` (and the LM head for ``lmhead_filter``); written to
    ``folder`` (beside the shards) when given."""
    if spec.name == "none":
        return IDENTITY
    vectors = fit_vectors(spec, store, keys_by_role) if (spec.needs_fit and store is not None) else {}
    stats = fit(spec, vectors, head, seed)
    if folder is not None:
        stats.save(folder, setting)
    return stats


def rank_rows(rows: Sequence[Row], items: Mapping[str, Item], retriever: RetrieverSpec,
              store: ShardStore | None = None, key_of: Mapping[str, str] | None = None,
              statistics: Statistics = IDENTITY, device: torch.device | str | None = None,
              lexical_store: ShardStore | None = None) -> list[torch.Tensor]:
    """Per-row candidate scores (candidate order, positive first) for the configured retriever; ``device``: where
    the trained embedder runs (the run's device); ``store`` holds the dense vectors and, for PromptReps,
    ``lexical_store`` the lexical parts of the same rows."""
    if retriever.trained:
        return trained_scores(rows, items, retriever.sentence_transformers, device)
    dense = score_store(rows, store, key_of, transform=statistics.apply) if retriever.cosine else None
    if retriever.uses_promptreps:
        lexical = promptreps_scores(rows, lexical_store, retriever.promptreps.k, key_of)
    elif retriever.lexical:
        lexical = bm25_scores(rows, items, retriever.bm25)
    else:
        return dense
    if dense is None:
        return lexical
    return [fuse(d, b, retriever) for d, b in zip(dense, lexical)]


@dataclass(frozen=True)
class Stage1Scoring:
    """How stage 1 turns stored vectors into scores: the retriever and the post-processing (``conf/retriever``,
    ``conf/postprocess``)."""

    retriever: RetrieverSpec
    postprocess: PostprocessSpec

    @property
    def lexical_k(self) -> int | None:
        """PromptReps' top k that each stored row carries after its dense part (None: dense rows only)."""
        return self.retriever.promptreps.k if self.retriever.uses_promptreps else None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Stage1Scoring:
        """From a run config (absent groups: dense, no post-processing); bad values fail before weights load."""
        return cls(RetrieverSpec.from_dict(cfg.get("retriever")), PostprocessSpec.from_dict(cfg.get("postprocess")))

    def corpus_items(self) -> list[Item]:
        """Items of the named unlabeled corpus (``postprocess.fit_on=corpus``) to embed beside the run's own."""
        if not (self.retriever.cosine and self.postprocess.needs_fit and self.postprocess.fit_on == "corpus"):
            return []
        from freeret.data.datasets import load_dataset

        return list(load_dataset(dict(self.postprocess.corpus or {})).items.values())

    def score(self, rset: RetrievalSet, store: ShardStore | None, key_of: Mapping[str, str],
              fit_keys: Mapping[str, Sequence[str]], head: torch.Tensor | None, folder: Path | None,
              setting: str | None = None, seed: int = 0,
              device: torch.device | str | None = None) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Per-row scores and what results record (retriever, post-processing with its statistics' digest).
        ``fit_keys``: store keys per role that the statistics are fitted on; ``device``: the run's device."""
        stats, lexical = IDENTITY, None
        if store is not None and self.lexical_k is not None:  # a row = dense + 2k lexical columns
            store, lexical = store.view(slice(None, -2 * self.lexical_k)), store.view(slice(-2 * self.lexical_k, None))
        if self.retriever.cosine:
            stats = fit_statistics(self.postprocess, store, fit_keys, head, folder, setting, seed)
        scores = rank_rows(rset.rows, rset.items, self.retriever, store, key_of, stats, device, lexical)
        return scores, {"retriever": self.retriever.describe(),
                        "postprocess": stats.summary() if self.retriever.cosine else None}
