"""Parse the WordNet 3.0 database files (wndb(5WN) format) and build tasks from them.

Only the plain-text database shipped by Debian's ``wordnet-base`` is needed
(``data.<pos>`` and ``cntlist.rev``); nltk is not used. Tag counts are joined on the
sense key (senseidx(5WN)), as nltk does: the sense *numbers* in ``cntlist.rev`` are stale
for a few lemmas in WordNet 3.0 and disagree with the order in ``index.<pos>``.

All selections are seeded through SHA-256 sort keys rather than a PRNG, so the same
seed gives the same output on every Python / numpy version.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from freeret.errors import DataError

WORDNET_DIR = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))

# lexnames(5WN): lexicographer file names, indexed by the 2-digit lex_filenum.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)

_FILE_POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_SS_TYPE_DIGIT = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}  # ss_type as written in sense keys
_HYPERNYM_PTRS = {"@", "@i"}
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_QUOTED = re.compile(r'"([^"]*)"')
_PLAIN_LEMMA = re.compile(r"[a-z]+(?:[_-][a-z]+)*")
_WORD = re.compile(r"[a-z]+")


class WordNetNotFoundError(DataError, FileNotFoundError):
    """The WordNet 3.0 database files are not where we looked."""


@dataclass(frozen=True)
class Synset:
    """One synset line of a ``data.<pos>`` file."""

    offset: int
    pos: str  # ss_type as in the file: n, v, a, s (adjective satellite) or r
    lexname: str
    lemmas: tuple[str, ...]  # as in the file: underscores and capitals kept
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[int, ...]  # offsets of @ / @i pointers into the same pos
    tag_count: int  # SemCor tag count of the first lemma's sense (0 if untagged)


def _root(root: Path | None) -> Path:
    """Resolve the database folder and fail with an actionable message if it is absent."""
    root = Path(root) if root is not None else WORDNET_DIR
    if not (root / "data.noun").is_file():
        raise WordNetNotFoundError(
            f"WordNet 3.0 not found at {root}: install it with `apt-get install wordnet-base` "
            "or set WORDNET_DIR"
        )
    return root


def _data_lines(path: Path) -> list[str]:
    """Lines of a wndb file minus the licence header (lines starting with two spaces)."""
    if not path.is_file():
        raise WordNetNotFoundError(
            f"WordNet 3.0 not found at {path.parent}: install it with "
            "`apt-get install wordnet-base` or set WORDNET_DIR"
        )
    with path.open(encoding="utf-8") as f:
        return [line for line in f if not line.startswith("  ")]


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a gloss into (definition before the first ``; "``, the quoted example strings)."""
    definition, sep, rest = gloss.strip().partition('; "')
    examples = tuple(_QUOTED.findall('"' + rest)) if sep else ()
    return definition.strip(), examples


@lru_cache(maxsize=2)
def _tag_counts(root: Path) -> dict[str, int]:
    """Map sense key to its SemCor tag count from ``cntlist.rev``."""
    counts: dict[str, int] = {}
    for line in _data_lines(root / "cntlist.rev"):
        key, _number, count = line.split()
        counts[key] = int(count)
    return counts


def _parse_line(line: str) -> tuple[tuple, str, int | None]:
    """Parse one ``data.<pos>`` line: (Synset fields but tag_count, sense-key stub, head offset)."""
    body, _, gloss = line.partition(" | ")
    f = body.split()
    offset, lex_filenum, ss_type = int(f[0]), int(f[1]), f[2]
    w_cnt = int(f[3], 16)
    lemmas = tuple(_ADJ_MARKER.sub("", f[4 + 2 * i]) for i in range(w_cnt))
    i = 4 + 2 * w_cnt
    pointers = [f[j : j + 4] for j in range(i + 1, i + 1 + 4 * int(f[i]), 4)]
    hypernyms = tuple(int(p[1]) for p in pointers if p[0] in _HYPERNYM_PTRS and p[2] == ss_type)
    # An adjective satellite's sense key names its head synset (the "similar to" target).
    head = next((int(p[1]) for p in pointers if p[0] == "&"), None) if ss_type == "s" else None
    definition, examples = split_gloss(gloss)
    fields = (offset, ss_type, LEXNAMES[lex_filenum], lemmas, definition, examples, hypernyms)
    # senseidx(5WN) key of the first lemma: lemma%ss_type:lex_filenum:lex_id:head_word:head_id
    key = f"{lemmas[0].lower()}%{_SS_TYPE_DIGIT[ss_type]}:{lex_filenum:02d}:{int(f[5], 16):02d}"
    return fields, key, head


@lru_cache(maxsize=8)
def _load(pos: str, root: Path) -> tuple[Synset, ...]:
    """Cached parse of one ``data.<pos>`` file, tag counts joined by sense key."""
    parsed = [_parse_line(line) for line in _data_lines(root / f"data.{_FILE_POS[pos]}")]
    # head_word:head_id of a satellite = first lemma and lex_id of its head synset.
    heads = {fields[0]: key.split("%")[0] + ":" + key[-2:] for fields, key, _ in parsed}
    tags = _tag_counts(root)
    return tuple(
        Synset(*fields, tag_count=tags.get(f"{key}:{':' if head is None else heads[head]}", 0))
        for fields, key, head in parsed
    )


def load_synsets(pos: str = "n", root: Path | None = None) -> list[Synset]:
    """All synsets of one part of speech (``n``, ``v``, ``a`` or ``r``) in file order."""
    if pos not in _FILE_POS:
        raise ValueError(f"pos must be one of {sorted(_FILE_POS)}, got {pos!r}")
    return list(_load(pos, _root(root)))


def display(lemma: str) -> str:
    """A lemma as text: underscores become spaces."""
    return lemma.replace("_", " ")


def seeded_key(seed: int, *parts: object) -> bytes:
    """Deterministic, platform-independent sort key for seeded shuffles."""
    return hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()


def _mentions(definition: str, lemma: str) -> bool:
    """Whether the definition contains any word of the lemma (alone or +s/es), case-blind."""
    words = set(_WORD.findall(definition.lower()))
    return any({w, w + "s", w + "es"} & words for w in _WORD.findall(lemma.lower()))


def _eligible(s: Synset) -> bool:
    """Familiar, lowercase alphabetic noun whose definition has no quote and no word of it."""
    first = s.lemmas[0]
    return (
        _PLAIN_LEMMA.fullmatch(first) is not None
        and s.tag_count >= 1
        and bool(s.definition)
        and '"' not in s.definition
        and not _mentions(s.definition, first)
    )


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class Exclusion:
    """What a selection must not use, so that one split stays disjoint from others: synsets and texts (queries
    and positives of the other splits' rows, compared case- and space-blind)."""

    synsets: frozenset[int] = frozenset()
    texts: frozenset[str] = frozenset()

    @classmethod
    def of_rows(cls, rows: Iterable[Mapping]) -> Exclusion:
        """The query synset, query text and positive text of every MMEB row (positive first)."""
        rows = list(rows)
        return cls(frozenset(int(r["synset_offset"]) for r in rows),
                   frozenset(_norm(t) for r in rows for t in (r["qry_text"], r["tgt_text"][0])))

    def __or__(self, other: Exclusion) -> Exclusion:
        return Exclusion(self.synsets | other.synsets, self.texts | other.texts)

    def has_text(self, text: str) -> bool:
        """Whether ``text`` is a query or positive of an excluded row."""
        return _norm(text) in self.texts

    def blocks(self, s: Synset) -> bool:
        """Whether ``s`` is an excluded synset, or its first lemma or definition an excluded text."""
        return s.offset in self.synsets or self.has_text(display(s.lemmas[0])) or self.has_text(s.definition)


NO_EXCLUSION = Exclusion()


def select_reverse_dictionary(n: int, seed: int = 0, root: Path | None = None,
                              exclude: Exclusion = NO_EXCLUSION) -> list[Synset]:
    """Pick ``n`` eligible noun synsets with unique first lemmas, none a synonym of another pick, none that
    ``exclude`` blocks (in the same seeded order, so an empty exclusion gives the shipped test picks)."""
    pool = sorted((s for s in load_synsets("n", root) if _eligible(s) and not exclude.blocks(s)),
                  key=lambda s: seeded_key(seed, "select", s.offset))
    chosen: list[Synset] = []
    firsts: set[str] = set()  # first lemmas of the chosen synsets
    others: set[str] = set()  # their remaining lemmas, lowercased
    for s in pool:
        first = s.lemmas[0]
        rest = {lemma.lower() for lemma in s.lemmas[1:]} - {first}
        if first in firsts or first in others or rest & firsts:
            continue
        chosen.append(s)
        firsts.add(first)
        others |= rest
        if len(chosen) == n:
            return chosen
    raise ValueError(f"only {len(chosen)} eligible noun synsets, asked for {n}")


def build_reverse_dictionary(n_queries: int = 1000, seed: int = 0, root: Path | None = None,
                             exclude: Exclusion = NO_EXCLUSION) -> list[dict]:
    """Noun reverse dictionary (definition -> word) in MMEB rows; one shared candidate pool."""
    chosen = sorted(select_reverse_dictionary(n_queries, seed, root, exclude), key=lambda s: s.offset)
    pool = sorted((display(s.lemmas[0]) for s in chosen),
                  key=lambda w: seeded_key(seed, "pool", w))
    rows = []
    for s in chosen:
        positive = display(s.lemmas[0])
        tgt_text = [positive] + [w for w in pool if w != positive]
        rows.append({
            "id": f"wn-{s.offset:08d}",
            "qry_text": s.definition,
            "qry_img_path": "",
            "tgt_text": tgt_text,
            "tgt_img_path": [""] * len(tgt_text),
            "lexname": s.lexname,
            "synset_offset": s.offset,
        })
    return rows
