"""WordNet meta-task benchmark: MMEB's meta-tasks mirrored on WordNet 3.0 nouns, text only.

Five sets in the MMEB row format (positive first), each derived deterministically (SHA-256
seeded sort keys, see :mod:`freeret.data.wordnet`):

- ``cls_lexname``:   definition -> its lexicographer category ("animal", "artifact", ... 25 labels)
- ``cls_hypernym``:  word -> its direct hypernym among 20 classes ("dog" -> "canine")
- ``ret_def2lemma``: definition -> word (pool = the picked words)
- ``ret_lemma2def``: word -> definition (pool = the picked definitions)
- ``qa_blank``:      an example sentence with the word blanked -> the word (pool = the picked words)
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from freeret.data.wordnet import (
    _PLAIN_LEMMA,
    NO_EXCLUSION,
    Exclusion,
    Synset,
    _eligible,
    display,
    load_synsets,
    seeded_key,
    select_reverse_dictionary,
)

META_TASKS: dict[str, str] = {
    "cls_lexname": "classification",
    "cls_hypernym": "classification",
    "ret_def2lemma": "retrieval",
    "ret_lemma2def": "retrieval",
    "qa_blank": "qa",
}
BLANK = "___"


def _row(task: str, s: Synset, query: str, positive: str, pool: list[str], **extra) -> dict:
    cands = [positive] + [c for c in pool if c != positive]
    return {"id": f"{task}-{s.offset:08d}", "qry_text": query, "qry_img_path": "", "tgt_text": cands,
            "tgt_img_path": [""] * len(cands), "synset_offset": s.offset, **extra}


def _shuffled(items: list[str], seed: int, tag: str) -> list[str]:
    return sorted(items, key=lambda x: seeded_key(seed, tag, x))


def lexname_label(lexname: str) -> str:
    """'noun.animal' -> 'animal'."""
    return lexname.split(".", 1)[1]


def cls_lexname(n: int, seed: int, root: Path | None = None, exclude: Exclusion = NO_EXCLUSION) -> list[dict]:
    """Definition -> lexicographer category among the 25 noun categories (noun.Tops excluded)."""
    picks = [s for s in select_reverse_dictionary(3 * n, seed, root, exclude) if s.lexname != "noun.Tops"][:n]
    labels = _shuffled(sorted({lexname_label(s.lexname) for s in load_synsets("n", root)} - {"Tops"}), seed, "labels")
    return [_row("cls_lexname", s, s.definition, lexname_label(s.lexname), labels, lexname=s.lexname)
            for s in sorted(picks, key=lambda s: s.offset)]


def cls_hypernym(n: int, seed: int, root: Path | None = None, exclude: Exclusion = NO_EXCLUSION,
                 n_classes: int = 20) -> list[dict]:
    """Word -> its direct hypernym among ``n_classes`` frequent hypernym classes, n / n_classes words each.
    The classes come from all of WordNet (so every split shares them); ``exclude`` only removes members."""
    synsets = load_synsets("n", root)
    by_offset = {s.offset: s for s in synsets}
    members: dict[int, list[Synset]] = defaultdict(list)
    for s in synsets:
        if _eligible(s) and len(s.hypernyms) == 1:
            members[s.hypernyms[0]].append(s)
    per_class = n // n_classes
    classes = sorted((h for h, m in members.items() if len(m) >= 2 * per_class
                      and _PLAIN_LEMMA.fullmatch(by_offset[h].lemmas[0])),
                     key=lambda h: (-len(members[h]), h))[:n_classes]
    label = {h: display(by_offset[h].lemmas[0]) for h in classes}
    labels = _shuffled(list(label.values()), seed, "labels")
    rows, seen = [], set()
    for h in classes:
        chosen = [s for s in sorted(members[h], key=lambda s: seeded_key(seed, "hyp", s.offset))
                  if s.lemmas[0] not in seen and not exclude.blocks(s)][:per_class]
        if len(chosen) < per_class:
            raise ValueError(f"hypernym class {label[h]!r} has only {len(chosen)} usable members, asked for {per_class}")
        seen.update(s.lemmas[0] for s in chosen)
        rows += [_row("cls_hypernym", s, display(s.lemmas[0]), label[h], labels) for s in chosen]
    return sorted(rows, key=lambda r: r["id"])


def ret_def2lemma(n: int, seed: int, root: Path | None = None, exclude: Exclusion = NO_EXCLUSION) -> list[dict]:
    """Definition -> word; every query sees the same pool of ``n`` picked words."""
    picks = sorted(select_reverse_dictionary(n, seed, root, exclude), key=lambda s: s.offset)
    pool = _shuffled([display(s.lemmas[0]) for s in picks], seed, "pool")
    return [_row("ret_def2lemma", s, s.definition, display(s.lemmas[0]), pool) for s in picks]


def ret_lemma2def(n: int, seed: int, root: Path | None = None, exclude: Exclusion = NO_EXCLUSION) -> list[dict]:
    """Word -> definition; every query sees the same pool of ``n`` picked definitions."""
    picks = sorted(select_reverse_dictionary(n, seed, root, exclude), key=lambda s: s.offset)
    pool = _shuffled([s.definition for s in picks], seed, "pool")
    return [_row("ret_lemma2def", s, display(s.lemmas[0]), s.definition, pool) for s in picks]


def blanked(example: str, lemma: str) -> str | None:
    """The example with the lemma (whole words, any case) replaced by a blank, or None if absent."""
    pattern = re.compile(rf"\b{re.escape(display(lemma))}\b", re.IGNORECASE)
    out, count = pattern.subn(BLANK, example)
    return out if count else None


def _first_blanked(s: Synset) -> str | None:
    """The synset's first example that contains its first lemma, blanked; None if none does."""
    return next((b for e in s.examples if (b := blanked(e, s.lemmas[0]))), None)


def _qa_usable(s: Synset, exclude: Exclusion) -> bool:
    """A familiar plain lemma with an example that contains it, none of it excluded."""
    if not (_PLAIN_LEMMA.fullmatch(s.lemmas[0]) and s.tag_count >= 1):
        return False
    example = _first_blanked(s)
    return example is not None and not exclude.blocks(s) and not exclude.has_text(example)


def qa_blank(n: int, seed: int, root: Path | None = None, exclude: Exclusion = NO_EXCLUSION) -> list[dict]:
    """Example sentence with the word blanked -> the word, among the ``n`` picked words."""
    pool_synsets = sorted((s for s in load_synsets("n", root) if _qa_usable(s, exclude)),
                          key=lambda s: seeded_key(seed, "qa", s.offset))
    picks, seen = [], set()
    for s in pool_synsets:
        lemmas = {lemma.lower() for lemma in s.lemmas}
        if lemmas & seen:
            continue  # no pick is a synonym of another, so no distractor is also right
        picks.append(s)
        seen |= lemmas
        if len(picks) == n:
            break
    else:
        raise ValueError(f"only {len(picks)} noun synsets with a usable example sentence, asked for {n}")
    picks.sort(key=lambda s: s.offset)
    pool = _shuffled([display(s.lemmas[0]) for s in picks], seed, "pool")
    return [_row("qa_blank", s, _first_blanked(s), display(s.lemmas[0]), pool) for s in picks]


BUILDERS: dict[str, Callable[..., list[dict]]] = {
    "cls_lexname": cls_lexname,
    "cls_hypernym": cls_hypernym,
    "ret_def2lemma": ret_def2lemma,
    "ret_lemma2def": ret_lemma2def,
    "qa_blank": qa_blank,
}


def build_task(task: str, n: int = 100, seed: int = 0, root: Path | None = None,
               exclude: Exclusion = NO_EXCLUSION) -> list[dict]:
    """Rows of one WordNet meta-task set; ``exclude`` keeps it disjoint from other splits."""
    if task not in BUILDERS:
        raise ValueError(f"unknown WordNet task {task!r}; one of {', '.join(BUILDERS)}")
    return BUILDERS[task](n, seed, root, exclude)
