"""Test and dev splits of the WordNet sets, and held-out few-shot demonstrations, kept disjoint.

- ``test``: the shipped sets (``data/wordnet_rd``, ``data/wordnet_tasks``), built with no exclusion.
- ``dev``: the same builders, sizes and seed, minus every synset, query text and positive text of every test
  set (RD and the five tasks), so the picks continue the test sets' seeded order past them. Classification
  label sets are shared by construction.
- ``fewshot``: per dataset, ``k`` (item text, one-word answer) pairs built the same way, minus every dev and
  test set, for PromptEOL-style demonstrations (``This sentence : "X" means in one word:"Y".``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from freeret.data.wordnet import NO_EXCLUSION, Exclusion, build_reverse_dictionary, seeded_key
from freeret.data.wordnet_tasks import BUILDERS, build_task

SPLITS = ("test", "dev")
SEED = 0
RD_QUERIES = 1000  # shipped size of the reverse dictionary, per split
TASK_QUERIES = 100  # shipped size of each meta-task set, per split
DEMOS = 16  # few-shot demonstrations per dataset
_ONE_WORD = re.compile(r"[a-z]+")


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "fewshot"):
        raise ValueError(f"unknown WordNet split {split!r}; one of {', '.join(SPLITS)}, fewshot")


def data_file(stem: str, split: str) -> str:
    """File name of a set in a split: ``<stem>.jsonl.gz`` for test (the shipped name), ``<stem>_dev.jsonl.gz``."""
    _check_split(split)
    return f"{stem}.jsonl.gz" if split == "test" else f"{stem}_{split}.jsonl.gz"


@lru_cache(maxsize=4)
def exclusion(split: str, root: Path | None = None) -> Exclusion:
    """What a split's builders must avoid: nothing for test, every test row for dev, every test and dev row
    for fewshot (always the sets at their shipped sizes and seed)."""
    _check_split(split)
    if split == "test":
        return NO_EXCLUSION
    earlier = "test" if split == "dev" else "dev"
    rows = [r for rows in split_rows(earlier, root).values() for r in rows]
    return exclusion(earlier, root) | Exclusion.of_rows(rows)


def build_rd(split: str, n_queries: int = RD_QUERIES, seed: int = SEED, root: Path | None = None) -> list[dict]:
    """The reverse dictionary of one split."""
    return build_reverse_dictionary(n_queries, seed, root, exclusion(split, root))


def build_split_task(task: str, split: str, n: int = TASK_QUERIES, seed: int = SEED,
                     root: Path | None = None) -> list[dict]:
    """One meta-task set of one split."""
    return build_task(task, n, seed, root, exclusion(split, root))


def split_rows(split: str, root: Path | None = None) -> dict[str, list[dict]]:
    """Rows of every WordNet set of a split at its shipped size, keyed by dataset name."""
    out = {"wordnet_rd": build_rd(split, root=root)}
    out.update({f"wordnet_{task}": build_split_task(task, split, root=root) for task in BUILDERS})
    return out


def _demo_pairs(dataset: str, rows: list[dict]) -> list[tuple[str, str, int]]:
    """(item text, one-word answer, synset offset) per row: the query and its positive, except for word ->
    definition, whose one-word pair is the definition and its word."""
    if dataset == "wordnet_ret_lemma2def":
        return [(r["tgt_text"][0], r["qry_text"], r["synset_offset"]) for r in rows]
    return [(r["qry_text"], r["tgt_text"][0], r["synset_offset"]) for r in rows]


def fewshot_demos(k: int = DEMOS, seed: int = SEED, root: Path | None = None) -> dict[str, list[dict]]:
    """Per dataset (keyed by the test set's name; its dev set uses the same), ``k`` demonstrations
    ``{text, answer, synset_offset}`` with a one-word answer, in a seeded order, disjoint from dev and test."""
    exclude = exclusion("fewshot", root)
    built = {"wordnet_rd": build_reverse_dictionary(4 * k, seed, root, exclude)}
    for task in BUILDERS:  # cls_hypernym draws whole classes: 2 members of each of its 20 classes
        built[f"wordnet_{task}"] = build_task(task, 40 if task == "cls_hypernym" else 4 * k, seed, root, exclude)
    demos = {}
    for dataset, rows in built.items():
        pairs = [p for p in _demo_pairs(dataset, rows) if _ONE_WORD.fullmatch(p[1])]
        pairs.sort(key=lambda p: seeded_key(seed, "demo", dataset, p[2]))
        if len(pairs) < k:
            raise ValueError(f"only {len(pairs)} one-word demonstrations for {dataset}, asked for {k}")
        demos[dataset] = [{"text": t, "answer": a, "synset_offset": o} for t, a, o in pairs[:k]]
    return demos
