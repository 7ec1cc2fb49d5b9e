"""Retrieval-augmented answering with the same frozen model that retrieved and reranked.

For each question, the top ``n_docs`` documents of the final ranking go into the prompt
and the model answers greedily; the same question is also asked closed-book (no
documents), so the gain from retrieval is measured in one run. Generations are saved.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from freeret.atomic_files import write_text_atomic
from freeret.backbone.backbone import Backbone
from freeret.data.retrieval_set import RetrievalSet
from freeret.errors import ConfigError
from freeret.templates import Template

_ARTICLES = re.compile(r"\b(a|an|the)\b")
SLOTS = ("documents", "question")  # the RAG templates' item slots (conf/pipeline/rag.yaml), inserted verbatim


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation of a generated answer: first line, lower case, no punctuation or articles."""
    lines = text.strip().splitlines()
    text = lines[0].lower() if lines else ""
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answer: str) -> bool:
    """Normalised prediction equals the normalised answer."""
    return normalize_answer(prediction) == normalize_answer(answer)


@torch.no_grad()
def generate(backbone: Backbone, user_texts: Sequence[str], answer_prefix: str, max_new_tokens: int, batch_size: int,
             desc: str) -> list[str]:
    """Greedy answers for chat-rendered prompts (+ the answer prefix), in left-padded batches."""
    outputs: list[str] = []
    for start in tqdm(range(0, len(user_texts), batch_size), desc=desc, unit="batch"):
        prompts = [backbone.render(t) + answer_prefix for t in user_texts[start : start + batch_size]]
        inputs = backbone.inputs(prompts)
        inputs = {k: v.to(backbone.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        tokens = backbone.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=backbone.tokenizer.pad_token_id)
        outputs += backbone.tokenizer.batch_decode(tokens[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return outputs


def require_answers(rset: RetrievalSet) -> None:
    """Fail early (before any model loads) when the dataset has no reference answers."""
    if any(row.answer is None for row in rset.rows):
        raise ConfigError(f"pipeline=rag needs rows with an 'answer' field; dataset '{rset.name}' has none (try dataset=wordnet_qa)")


def answer_stage(cfg: Mapping[str, Any], backbone: Backbone, rset: RetrievalSet, final_scores: Sequence[torch.Tensor],
                 run_dir: Path) -> dict[str, Any]:
    """Answer every question with and without the top documents; write generations; return exact-match figures."""
    pcfg = cfg["pipeline"]
    require_answers(rset)
    n_docs = int(pcfg.get("n_docs", 3))
    with_docs, closed = [], []
    retrieved: list[list[str]] = []
    rag, closed_book = Template(str(pcfg["template"]), SLOTS), Template(str(pcfg["closed_book_template"]), SLOTS)
    for row, scores in zip(rset.rows, final_scores):
        top = torch.argsort(-scores, stable=True)[:n_docs].tolist()
        docs = [rset.items[row.candidates[i]].text for i in top]
        retrieved.append(docs)
        question = rset.items[row.query].text
        documents = "\n".join(f"[{i + 1}] {d}" for i, d in enumerate(docs))
        with_docs.append(rag.render({"documents": documents, "question": question}))
        closed.append(closed_book.render({"question": question}))
    args = (str(pcfg.get("answer_prefix") or ""), int(pcfg.get("max_new_tokens", 8)), int(pcfg.get("generate_batch_size", 8)))
    answers_rag = generate(backbone, with_docs, *args, desc="RAG answers")
    answers_closed = generate(backbone, closed, *args, desc="closed-book answers")

    records = []
    for row, docs, rag, cb in zip(rset.rows, retrieved, answers_rag, answers_closed):
        positive = rset.items[row.candidates[0]].text
        records.append({"id": row.id, "question": rset.items[row.query].text, "answer": row.answer,
                        "retrieved": docs, "positive_retrieved": positive in docs,
                        "generated_with_retrieval": rag, "generated_closed_book": cb,
                        "em_with_retrieval": exact_match(rag, row.answer), "em_closed_book": exact_match(cb, row.answer)})
    out = write_text_atomic(run_dir / "rag" / f"{rset.name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    n = len(records)
    return {
        "exact_match_with_retrieval": sum(r["em_with_retrieval"] for r in records) / n,
        "exact_match_closed_book": sum(r["em_closed_book"] for r in records) / n,
        "positive_in_context": sum(r["positive_retrieved"] for r in records) / n,
        "n_docs": n_docs,
        "generations": str(out),
        "examples": records[:5],
    }
