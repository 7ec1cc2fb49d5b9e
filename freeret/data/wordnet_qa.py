"""A question set for RAG, derived from the shipped WordNet reverse dictionary.

Question: "Which word means: <definition>?"; corpus: one gloss document per synset,
"<word>: <definition>"; answer: the word. The positive document is the question's own
gloss, so retrieval can find the answer and a closed-book model has to know it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from freeret.data.retrieval_set import RetrievalSet, build_set, read_rows, resolve_path

QUESTION = "Which word means: {definition}?"
DOCUMENT = "{word}: {definition}"


def wordnet_qa_rows(reverse_dictionary: str | Path) -> Iterator[dict[str, Any]]:
    """MMEB-format rows with an ``answer`` field, built from the reverse-dictionary file."""
    rows = list(read_rows(reverse_dictionary))
    gloss = {row["tgt_text"][0]: row["qry_text"] for row in rows}
    for row in rows:
        docs = [DOCUMENT.format(word=w, definition=gloss[w]) for w in row["tgt_text"]]
        yield {"id": row["id"], "qry_text": QUESTION.format(definition=row["qry_text"]), "qry_img_path": "",
               "tgt_text": docs, "tgt_img_path": [""] * len(docs), "answer": row["tgt_text"][0]}


def load_wordnet_qa(cfg: Mapping[str, Any]) -> RetrievalSet:
    """``dataset.kind=wordnet_qa``: the question set built from a reverse-dictionary file (``dataset.path``)."""
    name = str(cfg.get("name", "wordnet_qa"))
    return build_set(name, wordnet_qa_rows(cfg["path"]), resolve_path(cfg["path"]).parent, limit=cfg.get("limit"),
                     pool=str(cfg.get("pool", "rows")))
