"""BM25 over the items' own texts (the ``bm25s`` library), scored against each row's candidate list.

The index holds every unique candidate of the set (so IDF comes from the candidate pool) and each query is
scored against it once; a row keeps the scores of its own candidates, in its order. Only item texts enter,
never a prompt template; an item without text (an image alone) scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from freeret.data.retrieval_set import Item, Row
from freeret.errors import ConfigError, known_keys
from freeret.optional import require

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@dataclass(frozen=True)
class BM25Spec:
    """BM25 parameters (``retriever.bm25`` in ``conf/retriever``)."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str | None = "english"  # a Snowball language (PyStemmer) or null
    stopwords: str | None = "en"  # bm25s's stop-word list, or null

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"retriever.bm25.method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"retriever.bm25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1} b={self.b}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> BM25Spec:
        """Build from a mapping, refusing unknown keys."""
        cfg = known_keys(cfg, cls, "retriever.bm25")
        return cls(**cfg)

    def require(self, retriever: str) -> None:
        """Import what this spec uses (bm25s; PyStemmer when a stemmer is set), so that a missing package is one
        line before any weights load; ``retriever`` names the config choice that needs it."""
        lexical_module(f"retriever={retriever}")
        if self.stemmer:
            self.stemmer_module()

    def stemmer_module(self) -> ModuleType:
        """PyStemmer (``Stemmer``), or a one-line error saying how to install it or to turn the stemmer off."""
        return require("Stemmer", f"retriever.bm25.stemmer={self.stemmer}", "set retriever.bm25.stemmer=null")

    def tokenizer(self):
        """A bm25s tokenizer with this spec's stemmer and stop words."""
        lexical_module()
        from bm25s.tokenization import Tokenizer

        stemmer = None
        if self.stemmer:
            try:
                stemmer = self.stemmer_module().Stemmer(self.stemmer)
            except KeyError as exc:
                raise ConfigError(f"retriever.bm25.stemmer={self.stemmer!r} is not a Snowball language") from exc
        return Tokenizer(stemmer=stemmer, stopwords=self.stopwords or [])


def lexical_module(needed_by: str = "BM25 (retriever=bm25 or hybrid)") -> ModuleType:
    """bm25s, or a one-line error naming what needs it and how to install it."""
    return require("bm25s", needed_by)


def bm25_scores(rows: Sequence[Row], items: Mapping[str, Item], spec: BM25Spec) -> list[torch.Tensor]:
    """Per-row BM25 scores of the query's text against each of its candidates' texts (fp32, candidate order)."""
    bm25s = lexical_module()
    cand_keys = sorted({k for r in rows for k in r.candidates})
    index = {k: i for i, k in enumerate(cand_keys)}
    tokenizer = spec.tokenizer()
    corpus = tokenizer.tokenize([items[k].text for k in cand_keys], return_as="ids", show_progress=False)
    retriever = bm25s.BM25(k1=spec.k1, b=spec.b, method=spec.method)
    retriever.index(corpus, show_progress=False)
    queries = tokenizer.tokenize([items[r.query].text for r in rows], update_vocab=False, return_as="ids",
                                 show_progress=False)
    out = []
    for row, query in zip(rows, queries):
        full = torch.from_numpy(retriever.get_scores(query)).float() if query else torch.zeros(len(cand_keys))
        out.append(full[torch.tensor([index[k] for k in row.candidates], dtype=torch.long)])
    return out
