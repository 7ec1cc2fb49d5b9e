"""Read the general suite's sources into (query, target) entries: WordNet 3.0 adjectives and adverbs, the dictd
dictionaries GCIDE, FOLDOC, Jargon and V.E.R.A., and Debian's package catalogue (``data/general/README.md``).

Each reader returns every usable entry of its source in source order, with the source's part-of-speech tag where
it has one; :mod:`freeret.data.general` splits and samples them. Verbs are held out: no reader yields a WordNet
verb synset or a dictionary entry whose headword has a verb sense (``VERB_TAGS``), and the builder drops every
target that is a WordNet verb lemma.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from freeret.data.wordnet import WordNetNotFoundError, _root, display, load_synsets
from freeret.errors import DataError

DICTD_DIR = Path("/usr/share/dictd")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_WORD = re.compile(r"[a-z0-9]+")
_SPACE = re.compile(r"\s+")
_BRACES = re.compile(r"\{([^{}]*)\}")
_TAG = re.compile(r"^<[^<>]*>\s*")  # FOLDOC's leading subject tag, e.g. "<programming>"
_SENTENCE = re.compile(r"(?<=[a-z0-9)\]\u2019\"']{3})\.(?:\s|$)")  # not after a short abbreviation (St., Mr.)
_PLAIN_WORD = re.compile(r"[a-z]+(?:[ -][a-z]+)*")
_MARKUP = re.compile(r"[\[\]{}<>\\\"|*_=~^@#]")  # dictionary markup or symbols left in a text: not a plain definition
_GCIDE_HEAD = re.compile(r"^(?P<word>[^\\\n]+?) \\[^\\]*\\, (?P<pos>[^\[\n;]*)")
# A part-of-speech tag that marks a verb sense: GCIDE (v. t., v. i., v.), Jargon (v., vt., vi., imp. = imperative).
VERB_TAGS = re.compile(r"(?:^|[\s,&(])(?:v|vt|vi|imp)\.")
GCIDE_POS = ("n.", "a.", "adv.")  # GCIDE entries kept: a noun, adjective or adverb sense only


@dataclass(frozen=True)
class Entry:
    """One (query -> target) pair of a source; ``aliases`` are other names of the same thing (WordNet synonyms),
    so that none is a distractor of it; ``pos`` the source's part-of-speech tag ("" when it has none)."""

    target: str
    query: str
    pos: str = ""
    aliases: frozenset[str] = frozenset()
    ref: str = ""  # where it comes from (a synset offset, a dictionary index line)


def norm(text: str) -> str:
    """Case-, space- and underscore-blind form of a text, for comparing targets and queries."""
    return " ".join(text.replace("_", " ").lower().split())


def mentions(text: str, target: str) -> bool:
    """Whether ``text`` contains a word of ``target`` (alone or +s/es), case-blind: such a query gives it away.
    The rule of ``data/wordnet_rd``; a shared stem (swift/swiftly) stays, as in real retrieval, where BM25 finds it."""
    words = set(_WORD.findall(text.lower()))
    return any({w, w + "s", w + "es"} & words for w in _WORD.findall(target.lower()) if len(w) > 1)


def plain_query(text: str, min_words: int = 3, max_words: int = 40) -> str | None:
    """``text`` with spaces collapsed, if it is a plain sentence of ``min_words``..``max_words`` words (no markup)."""
    text = _SPACE.sub(" ", text).strip().rstrip(".;,:").strip()
    if not text or _MARKUP.search(text) or not min_words <= len(text.split()) <= max_words:
        return None
    return text


def first_sentence(text: str) -> str:
    """The text up to the first full stop that ends a sentence."""
    found = _SENTENCE.search(text)
    return text[: found.start()] if found else text


@dataclass(frozen=True)
class Verbs:
    """WordNet 3.0's verb lemmas (``index.verb``), normalised: no target of the suite is one of them."""

    lemmas: frozenset[str]

    @classmethod
    def load(cls, root: Path | None = None) -> Verbs:
        """Read ``index.verb`` (its first field per line, the header skipped)."""
        path = _root(root) / "index.verb"
        if not path.is_file():
            raise WordNetNotFoundError(f"WordNet 3.0 index.verb not found at {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls(frozenset(norm(line.split(" ", 1)[0]) for line in lines if line and not line.startswith("  ")))

    def __contains__(self, target: str) -> bool:
        return norm(target) in self.lemmas


# --- WordNet 3.0 -------------------------------------------------------------------------------------------------


def wordnet_entries(pos: str, root: Path | None = None) -> list[Entry]:
    """Adjective (``a``: heads and satellites, not participial ``adj.ppl``) or adverb (``r``) synsets whose first
    lemma is plain lowercase letters, SemCor tag count >= 1 (familiar, as in ``data/wordnet_rd``), definition
    without quotes: definition -> lemma."""
    if pos not in ("a", "r"):
        raise ValueError(f"the general suite reads WordNet adjectives (a) or adverbs (r), not {pos!r}")
    out = []
    for s in load_synsets(pos, root):
        first = s.lemmas[0]
        if s.lexname == "adj.ppl" or s.tag_count < 1 or not re.fullmatch(r"[a-z]+(?:[_-][a-z]+)*", first):
            continue
        query = plain_query(s.definition, 2)
        if query is None:
            continue
        out.append(Entry(display(first), query, s.pos, frozenset(norm(x) for x in s.lemmas[1:]), f"{s.offset:08d}"))
    return out


def wordnet_familiar(root: Path | None = None) -> frozenset[str]:
    """Every noun, adjective and adverb lemma of WordNet 3.0, normalised (GCIDE keeps only these headwords)."""
    return frozenset(norm(lemma) for pos in ("n", "a", "r") for s in load_synsets(pos, root) for lemma in s.lemmas)


# --- dictd dictionaries ------------------------------------------------------------------------------------------


def _b64(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def dictd_records(name: str, folder: Path = DICTD_DIR) -> Iterator[tuple[str, str]]:
    """(index headword, entry text) of a dictd dictionary, in index order, each entry once."""
    index, data = folder / f"{name}.index", folder / f"{name}.dict.dz"
    if not (index.is_file() and data.is_file()):
        raise DataError(f"dictd dictionary {name} not found in {folder}: install it with `apt-get install dict-{name}`")
    text = gzip.decompress(data.read_bytes())  # a .dict.dz is a gzip member (dictzip adds a random-access table)
    seen: set[tuple[int, int]] = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        span = (_b64(parts[1]), _b64(parts[2]))
        if span in seen:
            continue
        seen.add(span)
        yield parts[0], text[span[0] : span[0] + span[1]].decode("utf-8", errors="replace")


def gcide_entries(folder: Path = DICTD_DIR, familiar: Iterable[str] = ()) -> tuple[list[Entry], frozenset[str]]:
    """Webster 1913 senses of GCIDE: the first definition of an entry tagged n., a. or adv. whose headword is plain
    lowercase letters and in ``familiar`` (WordNet); returns the entries and every headword with a verb entry."""
    familiar = frozenset(familiar)
    entries, verbs = [], set()
    for _, body in dictd_records("gcide", folder):
        head = _GCIDE_HEAD.match(body)
        if not head:
            continue
        word, pos = norm(head["word"]), head["pos"].strip().rstrip(",").strip()
        if VERB_TAGS.search(" " + pos):
            verbs.add(word)
            continue
        if pos not in GCIDE_POS or not _PLAIN_WORD.fullmatch(word) or word not in familiar:
            continue
        first, _, rest = body.partition("\n")
        block = " ".join(line.strip() for line in rest.split("\n")).split("[1913 Webster]")[0]
        if first.count("[") > first.count("]"):  # the etymology goes on past the head line: skip to its end
            block = block.partition("]")[2]
        if "[1913 Webster]" not in body or "[WordNet" in block or "[PJC]" in block:
            continue
        block = re.sub(r"^1\.\s*", "", block.strip())
        block = re.sub(r"^(?:\([A-Z][A-Za-z. &]*\)\s*)+", "", block)  # a leading usage label, e.g. (Bot.)
        definition = block.split("; as,")[0].split(" -- ")[0]
        query = plain_query(first_sentence(definition))
        if query:
            entries.append(Entry(word, query, pos, ref=f"gcide:{word}"))
    return entries, frozenset(verbs)


def foldoc_entries(folder: Path = DICTD_DIR) -> list[Entry]:
    """FOLDOC: the first sentence of an entry's first paragraph (its subject tag dropped, {links} as plain
    text) -> the headword as the entry writes it; entries that only point elsewhere ("See ...") are skipped."""
    out = []
    for _, body in dictd_records("foldoc", folder):
        blocks = [b for b in re.split(r"\n\s*\n", body.strip()) if b.strip()]
        if len(blocks) < 2:
            continue
        headword = blocks[0].split("\n")[0].strip()
        text = _TAG.sub("", _SPACE.sub(" ", blocks[1]).strip())
        text = _BRACES.sub(r"\1", text)
        text = re.sub(r"^(?:/[^/]*/\s*)?(?:\([^()]*\)\s*)?", "", text)  # a leading /pronunciation/, (expansion)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+#./' -]{0,39}", headword) or text.lower().startswith(("see ", "1.")):
            continue
        query = plain_query(first_sentence(text), 4)
        if query:
            out.append(Entry(headword, query, ref=f"foldoc:{headword}"))
    return out


def jargon_entries(folder: Path = DICTD_DIR) -> tuple[list[Entry], frozenset[str]]:
    """The Jargon File: the first sentence of an entry's text ({links} as plain text) -> its headword, with the
    part of speech the entry gives; returns the entries and every headword with a verb sense."""
    out, verbs = [], set()
    for _, body in dictd_records("jargon", folder):
        lines = body.strip("\n").split("\n")
        if len(lines) < 3:
            continue
        headword, tag_line = lines[0].strip(), lines[1].strip()
        pos = tag_line.rsplit("/,", 1)[1].strip() if "/," in tag_line else ("" if tag_line.startswith("/") else tag_line)
        if VERB_TAGS.search(" " + tag_line):  # the whole line: some give two pronunciations or a variant first
            verbs.add(norm(headword))
            continue
        text = _BRACES.sub(r"\1", _SPACE.sub(" ", " ".join(lines[2:])).strip())
        text = re.sub(r"^(?:\[[^\]]*\]\s*)?(?:\([^()]*\)\s*)?", "", text)  # a leading [usage note], (alt.: ...)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+#./' -]{0,39}", headword) or text.lower().startswith(("syn.", "see ", "1.")):
            continue
        query = plain_query(first_sentence(text), 4)
        if query:
            out.append(Entry(headword, query, pos, ref=f"jargon:{headword}"))
    return out, frozenset(verbs)


def vera_entries(folder: Path = DICTD_DIR) -> list[Entry]:
    """V.E.R.A.: an acronym's expansion (its trailing "(context)" dropped) -> the acronym, for acronyms with one
    entry and one expansion only (an acronym with several expansions has no single answer)."""
    records = list(dictd_records("vera", folder))
    count: dict[str, int] = {}
    for word, _ in records:
        count[norm(word)] = count.get(norm(word), 0) + 1
    out = []
    for word, body in records:
        lines = [line.strip() for line in body.strip("\n").split("\n") if line.strip()]
        if count[norm(word)] != 1 or len(lines) != 2:
            continue
        acronym, expansion = lines[0], re.sub(r"\s*\([^()]*\)$", "", lines[1]).strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9&/+-]{1,11}", acronym):
            continue
        query = plain_query(expansion, 2, 20)
        if query:
            out.append(Entry(acronym, query, ref=f"vera:{acronym}"))
    return out


# --- Debian's package catalogue ----------------------------------------------------------------------------------

_PKG_SKIP = re.compile(r"^(?:lib|python|r-cran-|r-bioc-|golang-|node-|ruby-|php-|perl|texlive|fonts?-|linux-|firmware|"
                       r"haskell-|elpa-|gir1|gstreamer|xfonts|ttf-|task-|hunspell|myspell|aspell|hyphen|mythes|"
                       r"manpages|kde|plasma|gnome-|qml|jupyter|librust|rust-|ocaml|emacs|vim-|coq|sbcl|cl-|octave-|"
                       r"puppet|lua-|tcl|tk|erlang|ghc|dh-|sphinx|cups|printer|mate-|xserver|yorick|trinity|kodi)")
_PKG_SUFFIX = re.compile(r"-(?:dev|docs?|dbg|dbgsym|data|common|examples|tests?|utils?|tools|bin|core|plugins?|l10n|"
                         r"i18n|locales?|\d.*)$")


def debian_catalogue(text: str) -> list[tuple[str, str]]:
    """(package, one-line description) of every stanza of ``apt-cache dumpavail`` output, in its order."""
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Description): (.*)$", stanza, flags=re.MULTILINE))
        if "Package" in fields and "Description" in fields:
            out.append((fields["Package"].strip(), fields["Description"].strip()))
    return out


def debian_entries(catalogue: Iterable[tuple[str, str]]) -> list[Entry]:
    """Packages that are programs rather than parts of a family (no lib*, python*, -dev, -data, ... names): the
    one-line description, if it does not name the package (or a letter run of its name), -> the package name;
    descriptions that several
    packages share are dropped (no single answer)."""
    pairs = sorted(set(catalogue))
    by_query: dict[str, set[str]] = {}
    for name, description in pairs:
        by_query.setdefault(norm(description), set()).add(name)
    out = []
    for name, description in pairs:
        if _PKG_SKIP.match(name) or _PKG_SUFFIX.search(name) or not re.fullmatch(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*", name):
            continue
        # a name's letter runs count as its words (rpm2cpio: rpm, cpio), so a description spelling it out is dropped
        if len(by_query[norm(description)]) > 1 or mentions(description, " ".join(re.findall(r"[a-z]+", name))):
            continue
        query = plain_query(description, 3, 20)
        if query:
            out.append(Entry(name, query, ref=f"debian:{name}"))
    return out
