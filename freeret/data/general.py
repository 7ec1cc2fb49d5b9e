"""The general suite (``suite=general_dev``, ``suite=general_test``): seven text domains beyond WordNet nouns, each
split into a dev and a test set that share no target, no query and no candidate (``data/general/README.md``).

Every domain is built the same way from its source's entries (:mod:`freeret.data.general_sources`):

1. drop entries whose target is a WordNet verb lemma (verbs are a held-out domain), whose query names the target
   (a word of it, alone or +s/es), or whose query text belongs to more than one target;
2. keep one entry per target (the first in a seeded order);
3. give each target to dev or test by a seeded hash of its normalised text (the same target falls in the same
   split in every domain), so the splits' targets, queries and candidate pools are disjoint;
4. in each split, walk the seeded order and accept entries whose target is neither an accepted target nor an
   alias (synonym) of one, and none of whose aliases is accepted, up to ``POOL`` targets: the first ``QUERIES``
   accepted are the queries, and all accepted targets are every row's candidates (positive first, then the rest
   in one seeded order), as in ``data/wordnet_rd``.

Sizes, seed and filters are frozen (issue 26): changing any of them changes the shipped files, which the tests
rebuild byte for byte where the source is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from freeret.data.general_sources import (
    DICTD_DIR,
    Entry,
    Verbs,
    debian_catalogue,
    debian_entries,
    foldoc_entries,
    gcide_entries,
    jargon_entries,
    mentions,
    norm,
    vera_entries,
    wordnet_entries,
    wordnet_familiar,
)
from freeret.data.wordnet import seeded_key

SPLITS = ("dev", "test")
SEED = 0
QUERIES = 300  # queries per split and domain
POOL = 1000  # candidates per row (fewer where a split has fewer usable targets)


@dataclass(frozen=True)
class Domain:
    """One domain of the suite: where its entries come from and how the prompt names its items."""

    name: str
    source: str  # the Debian package (or WordNet) it is built from
    query_kind: str
    target_kind: str
    read: Callable[[], list[Entry]]


def _gcide() -> list[Entry]:
    entries, _verbs = gcide_entries(DICTD_DIR, wordnet_familiar())
    return entries


def _jargon() -> list[Entry]:
    entries, _verbs = jargon_entries(DICTD_DIR)
    return entries


def _debian(catalogue: Path | None = None) -> list[Entry]:
    import subprocess

    text = catalogue.read_text(encoding="utf-8") if catalogue else subprocess.run(
        ["apt-cache", "dumpavail"], check=True, capture_output=True, text=True).stdout
    return debian_entries(debian_catalogue(text))


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain("wn_adj", "wordnet-base (WordNet 3.0 data.adj)", "definition", "adjective", lambda: wordnet_entries("a")),
    Domain("wn_adv", "wordnet-base (WordNet 3.0 data.adv)", "definition", "adverb", lambda: wordnet_entries("r")),
    Domain("gcide", "dict-gcide (Webster's 1913 in GCIDE)", "dictionary definition", "word", _gcide),
    Domain("foldoc", "dict-foldoc (Free On-line Dictionary of Computing)", "computing definition", "term",
           lambda: foldoc_entries(DICTD_DIR)),
    Domain("jargon", "dict-jargon (the Jargon File 4.4.7)", "definition", "jargon term", _jargon),
    Domain("vera", "dict-vera (V.E.R.A. computing acronyms)", "expansion", "acronym", lambda: vera_entries(DICTD_DIR)),
    Domain("debian_pkg", "apt-cache dumpavail (Debian 12 bookworm main)", "package description", "package name",
           _debian),
)}



def split_of(target: str, seed: int = SEED) -> str:
    """Which split a target belongs to, in every domain: a seeded hash of its normalised text."""
    return "dev" if seeded_key(seed, "split", norm(target))[0] % 2 == 0 else "test"


def clean(entries: Sequence[Entry], verbs: Verbs, seed: int = SEED) -> list[Entry]:
    """Step 1 and 2 of the module docstring: usable entries, one per target, in the seeded order."""
    owners: dict[str, set[str]] = {}
    for e in entries:
        owners.setdefault(norm(e.query), set()).add(norm(e.target))
    kept: dict[str, Entry] = {}
    for e in sorted(entries, key=lambda e: seeded_key(seed, "entry", norm(e.target), e.query)):
        if e.target in verbs or mentions(e.query, e.target) or len(owners[norm(e.query)]) > 1:
            continue
        kept.setdefault(norm(e.target), e)
    return list(kept.values())


def select(entries: Sequence[Entry], split: str, n_queries: int = QUERIES, pool: int = POOL,
           seed: int = SEED) -> list[Entry]:
    """Step 3 and 4: the split's accepted entries in the seeded order (the first ``n_queries`` are queries)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    chosen: list[Entry] = []
    targets: set[str] = set()
    aliases: set[str] = set()
    for e in entries:
        t = norm(e.target)
        if split_of(e.target, seed) != split or t in targets or t in aliases or e.aliases & targets:
            continue
        chosen.append(e)
        targets.add(t)
        aliases |= e.aliases - {t}
        if len(chosen) == pool:
            break
    if len(chosen) < n_queries:
        raise ValueError(f"only {len(chosen)} usable targets in the {split} split, asked for {n_queries} queries")
    return chosen


def rows(domain: str, chosen: Sequence[Entry], n_queries: int = QUERIES, seed: int = SEED) -> list[dict]:
    """MMEB rows: one per query, candidates = the positive, then every other accepted target in one seeded order."""
    order = sorted((e.target for e in chosen), key=lambda t: seeded_key(seed, "pool", domain, t))
    out = []
    for i, e in enumerate(chosen[:n_queries]):
        tgt = [e.target] + [t for t in order if t != e.target]
        out.append({"id": f"{domain}-{i:04d}", "qry_text": e.query, "qry_img_path": "", "tgt_text": tgt,
                    "tgt_img_path": [""] * len(tgt), "pos": e.pos, "ref": e.ref})
    return out


@lru_cache(maxsize=1)
def verbs() -> Verbs:
    """WordNet 3.0's verb lemmas (read once)."""
    return Verbs.load()


def build(domain: str, split: str, n_queries: int = QUERIES, pool: int = POOL, seed: int = SEED,
          entries: Sequence[Entry] | None = None) -> list[dict]:
    """The rows of one domain's split, from its installed source (or the given ``entries``)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; one of {', '.join(DOMAINS)}")
    source = DOMAINS[domain].read() if entries is None else entries
    chosen = select(clean(source, verbs(), seed), split, n_queries, pool, seed)
    return rows(domain, chosen, n_queries, seed)


def data_file(domain: str, split: str) -> str:
    """Where a domain's split lives under the data folder: ``general/<domain>/<split>.jsonl.gz``."""
    return f"general/{domain}/{split}.jsonl.gz"
