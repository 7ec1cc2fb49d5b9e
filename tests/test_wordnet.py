"""WordNet parser and the reverse-dictionary set built from it (needs ``wordnet-base``)."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from freeret.data import wordnet as wn
from freeret.paths import repo_root

pytestmark = pytest.mark.skipif(
    not (wn.WORDNET_DIR / "data.noun").is_file(),
    reason=f"WordNet 3.0 not at {wn.WORDNET_DIR}: `apt-get install wordnet-base` or set WORDNET_DIR",
)

SHIPPED = repo_root() / "data" / "wordnet_rd" / "wordnet_rd.jsonl.gz"


@pytest.fixture(scope="module")
def nouns() -> dict[int, wn.Synset]:
    return {s.offset: s for s in wn.load_synsets("n")}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return wn.build_reverse_dictionary(1000, seed=0)


def test_known_synset(nouns):
    dog = nouns[2084071]
    assert dog.pos == "n"
    assert dog.lexname == "noun.animal"
    assert dog.lemmas == ("dog", "domestic_dog", "Canis_familiaris")
    assert dog.definition.startswith("a member of the genus Canis")
    assert dog.examples == ("the dog barked all night",)
    assert dog.hypernyms == (2083346, 1317541)  # canine, domestic_animal
    assert nouns[2083346].lemmas == ("canine", "canid")
    assert dog.tag_count == 42  # cntlist.rev: dog%1:05:00:: 1 42
    assert len(nouns) == 82115


def test_satellite_tag_count():
    adjectives = {s.offset: s for s in wn.load_synsets("a")}
    cut = adjectives[4615]  # satellite: its sense key names the head, cut%5:00:00:abridged:00
    assert (cut.pos, cut.lemmas, cut.tag_count) == ("s", ("cut", "shortened"), 1)


def test_instance_hypernyms(nouns):
    paris = next(s for s in nouns.values() if s.lemmas[0] == "Paris" and "capital" in s.definition)
    assert any("national_capital" in nouns[h].lemmas for h in paris.hypernyms)


def test_split_gloss():
    gloss = 'the act of fighting; any contest or struggle; "a fight broke out"; "fighting in the streets"  '
    assert wn.split_gloss(gloss) == (
        "the act of fighting; any contest or struggle",
        ("a fight broke out", "fighting in the streets"),
    )
    assert wn.split_gloss("lower side") == ("lower side", ())


def test_missing_wordnet(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        wn.load_synsets("n", root=tmp_path)


def test_format_invariants(rows):
    assert len(rows) == 1000
    pool = sorted(rows[0]["tgt_text"])
    positives = [r["tgt_text"][0] for r in rows]
    assert sorted(positives) == pool and len(set(pool)) == 1000
    for r in rows:
        assert r["id"] == f"wn-{r['synset_offset']:08d}"
        assert r["qry_img_path"] == "" and r["tgt_img_path"] == [""] * 1000
        assert sorted(r["tgt_text"]) == pool
        assert r["lexname"].startswith("noun.")
        assert "_" not in r["tgt_text"][0]


def test_selection_rules(rows, nouns):
    picked = [nouns[r["synset_offset"]] for r in rows]
    firsts = {s.lemmas[0] for s in picked}
    for s, r in zip(picked, rows):
        assert r["qry_text"] == s.definition and r["tgt_text"][0] == wn.display(s.lemmas[0])
        assert s.tag_count >= 1 and s.lemmas[0] == s.lemmas[0].lower()
        assert not set(re.split(r"[_-]", s.lemmas[0])) & set(re.findall(r"[a-z]+", r["qry_text"].lower()))
        synonyms = {lemma.lower() for lemma in s.lemmas[1:]} - {s.lemmas[0]}
        assert not synonyms & firsts  # no distractor is a synonym of the positive


def test_deterministic(rows):
    assert wn.build_reverse_dictionary(1000, seed=0) == rows
    other = wn.build_reverse_dictionary(1000, seed=1)
    assert {r["id"] for r in other} != {r["id"] for r in rows}


def test_shipped_file_matches_builder(rows):
    with gzip.open(SHIPPED, "rt", encoding="utf-8") as f:
        shipped = [json.loads(line) for line in f]
    assert shipped == rows
