"""The general suite (issue 26, item 1; data/general/README.md): the shipped dev and test sets are well formed,
disjoint (per domain and across the suite), hold no verb and no query that names its answer, match their recorded
sha256, and rebuild byte for byte from their installed sources (skipped, with the reason, where one is absent);
the readers' filters on small hand-made sources; the suites compose."""

from __future__ import annotations

import gzip
import hashlib
import json
from functools import cache
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from freeret.data import general, general_sources
from freeret.data import wordnet as wn
from freeret.data.general import DOMAINS, POOL, QUERIES, SPLITS, split_of
from freeret.data.general_sources import VERB_TAGS, Entry, mentions, norm
from helpers import REPO, compose

DATA = REPO / "data" / "general"
DICTD = {"gcide", "foldoc", "jargon", "vera"}
needs_wordnet = pytest.mark.skipif(not (wn.WORDNET_DIR / "index.verb").is_file(),
                                   reason="WordNet 3.0 is not installed (apt-get install wordnet-base)")


@cache
def shipped(domain: str, split: str) -> tuple[dict, ...]:
    with gzip.open(DATA / domain / f"{split}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh)


def _texts(split: str, field: str) -> set[str]:
    if field == "query":
        return {norm(r["qry_text"]) for d in DOMAINS for r in shipped(d, split)}
    return {norm(t) for d in DOMAINS for r in shipped(d, split) for t in r["tgt_text"]}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("domain", list(DOMAINS))
def test_each_set_has_300_queries_one_shared_pool_positive_first(domain, split):
    rows = shipped(domain, split)
    assert len(rows) == QUERIES and len({r["id"] for r in rows}) == QUERIES
    pool = set(rows[0]["tgt_text"])
    assert QUERIES <= len(pool) <= POOL
    for r in rows:
        assert len(r["tgt_text"]) == len(set(r["tgt_text"])) == len(pool) and set(r["tgt_text"]) == pool
        assert r["qry_img_path"] == "" and r["tgt_img_path"] == [""] * len(pool)
    positives = [r["tgt_text"][0] for r in rows]
    assert len({norm(p) for p in positives}) == QUERIES  # one query per target
    assert len({norm(r["qry_text"]) for r in rows}) == QUERIES


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_dev_and_test_share_no_query_and_no_candidate(domain):
    dev, test = shipped(domain, "dev"), shipped(domain, "test")
    assert not {norm(r["qry_text"]) for r in dev} & {norm(r["qry_text"]) for r in test}
    assert not {norm(t) for r in dev for t in r["tgt_text"]} & {norm(t) for r in test for t in r["tgt_text"]}
    assert all(split_of(r["tgt_text"][0]) == "dev" for r in dev) and all(split_of(r["tgt_text"][0]) == "test" for r in test)


def test_across_the_suite_no_dev_query_or_candidate_is_a_test_query_or_candidate_of_any_domain():
    assert not _texts("dev", "query") & _texts("test", "query")
    assert not _texts("dev", "target") & _texts("test", "target")


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_no_query_names_its_answer_and_no_row_has_a_verb_tag(domain):
    for split in SPLITS:
        for r in shipped(domain, split):
            assert not mentions(r["qry_text"], r["tgt_text"][0]), r
            assert not VERB_TAGS.search(" " + r["pos"]), r
            if domain.startswith("wn_"):
                assert r["pos"] in ({"a", "s"} if domain == "wn_adj" else {"r"}), r


@needs_wordnet
def test_no_target_of_any_set_is_a_wordnet_verb_lemma_and_wordnet_queries_are_adjective_or_adverb_synsets():
    verbs = general_sources.Verbs.load()
    assert "run" in verbs and "take off" in verbs and "quickly" not in verbs
    for domain in DOMAINS:
        for split in SPLITS:
            assert not [t for r in shipped(domain, split) for t in r["tgt_text"] if t in verbs], (domain, split)
    for domain, pos in (("wn_adj", "a"), ("wn_adv", "r")):
        synsets = {f"{s.offset:08d}": s for s in wn.load_synsets(pos)}
        for split in SPLITS:
            for r in shipped(domain, split):
                s = synsets[r["ref"]]  # a synset of data.adj / data.adv: never a verb synset
                assert general_sources.plain_query(s.definition, 2) == r["qry_text"] and wn.display(s.lemmas[0]) == r["tgt_text"][0]
                assert s.lexname != "adj.ppl"


def test_shipped_files_match_sha256sums_and_each_domain_has_its_readme_and_licence():
    sums = dict(reversed(line.split("  ")) for line in (DATA / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == sorted(f"{d}/{s}.jsonl.gz" for d in DOMAINS for s in SPLITS)
    for path, digest in sums.items():
        assert hashlib.sha256((DATA / path).read_bytes()).hexdigest() == digest, path
    readme = (DATA / "README.md").read_text()
    for domain in DOMAINS:
        assert f"`{domain}`" in readme
        assert (DATA / domain / "README.md").is_file()
        if domain in DICTD:
            assert (DATA / domain / "COPYRIGHT").is_file()
        elif domain.startswith("wn_"):
            assert (DATA / domain / "LICENSE").is_file()


def _installed(domain: str) -> bool:
    if domain.startswith("wn_"):
        return (wn.WORDNET_DIR / "data.adj").is_file()
    return (general_sources.DICTD_DIR / f"{domain}.index").is_file() and (wn.WORDNET_DIR / "index.verb").is_file()


@pytest.mark.parametrize("domain", sorted(set(DOMAINS) - {"debian_pkg"}))
def test_the_script_rebuilds_the_shipped_bytes(domain, tmp_path):
    """debian_pkg is not rebuilt: the catalogue changes daily (its snapshot date and sha256 are in its README)."""
    if not _installed(domain):
        pkg = "wordnet-base" if domain.startswith("wn_") else f"dict-{domain} and wordnet-base"
        pytest.skip(f"the source of {domain} is not installed (apt-get install {pkg})")
    from scripts import build_general

    build_general.main(["--domain", domain, "--out", str(tmp_path)])
    for split in SPLITS:
        assert (tmp_path / domain / f"{split}.jsonl.gz").read_bytes() == (DATA / domain / f"{split}.jsonl.gz").read_bytes()


# --- the readers' filters on hand-made sources --------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 64)
        out = _B64[r] + out
        if not n:
            return out


def _dictd(folder: Path, name: str, entries: list[tuple[str, str]]) -> Path:
    """A dictd dictionary (``name.index`` + ``name.dict.dz``) holding ``entries`` (headword, text)."""
    data, index = b"", []
    for head, text in entries:
        raw = text.encode()
        index.append(f"{head}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    (folder / f"{name}.index").write_text("\n".join(index) + "\n")
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(data))
    return folder


def test_gcide_keeps_webster_noun_adjective_adverb_senses_and_reports_every_verb_headword(tmp_path):
    folder = _dictd(tmp_path, "gcide", [
        ("Aerate", 'Aerate \\A"["e]r*ate\\, v. t. [imp. & p. p. {Aerated}.]\n   1. To combine with gas.\n   [1913 Webster]\n'),
        ("Pitfall", "Pitfall \\Pit\"fall`\\, n.\n   A pit deceitfully covered to entrap wild beasts; a trap.\n   [1913 Webster]\n"),
        ("Swiftly", "Swiftly \\Swift\"ly\\, adv.\n   In a swift manner.\n   [1913 Webster]\n"),
        ("Aerated", "aerated \\aerated\\ adj.\n   1. treated by having air passed through it\n   [WordNet 1.5]\n"),
        ("Lodge", "Lodge \\Lodge\\, v. i.\n   To rest or remain.\n   [1913 Webster]\n"),
    ])
    entries, verbs = general_sources.gcide_entries(folder, familiar={"pitfall", "swiftly", "aerated"})
    assert [(e.target, e.pos, e.query) for e in entries] == [
        ("pitfall", "n.", "A pit deceitfully covered to entrap wild beasts; a trap"), ("swiftly", "adv.", "In a swift manner")]
    assert verbs == {"aerate", "lodge"}
    assert general.clean(entries, general_sources.Verbs(frozenset({"pitfall"}))) == entries[1:]  # a verb lemma: out


def test_jargon_drops_verb_senses_and_foldoc_and_vera_read_their_formats(tmp_path):
    _dictd(tmp_path, "jargon", [
        ("frob", "frob\n /frob/, n.,v.\n\n    A hacker's word for fiddling.\n"),
        ("RTFM", "RTFM\n /R·T·F·M/, imp.\n\n    Abbreviation for a curt instruction to read the manual.\n"),
        ("blinkenlights", "blinkenlights\n /blink'*n·li:tz/, n.\n\n    Front-panel diagnostic lights on a computer. More.\n"),
    ])
    jargon, verbs = general_sources.jargon_entries(tmp_path)
    assert [(e.target, e.pos, e.query) for e in jargon] == [
        ("blinkenlights", "n.", "Front-panel diagnostic lights on a computer")]
    assert verbs == {"frob", "rtfm"}  # a verb sense, an imperative
    _dictd(tmp_path, "foldoc", [
        ("hypercube", "hypercube\n\n   <mathematics> A {cube} of more than three dimensions.  More text.\n\n   (1995-01-01)\n"),
        ("cots", "COTS\n\n   <software> See {commercial software}.\n"),
    ])
    assert [(e.target, e.query) for e in general_sources.foldoc_entries(tmp_path)] == [
        ("hypercube", "A cube of more than three dimensions")]
    _dictd(tmp_path, "vera", [("dns", "DNS\n       Domain Name System (Internet, RFC 1034)\n"),
                              ("adc", "ADC\n       Analog Digital Converter\n"), ("adc", "ADC\n       Apple Display Connector\n")])
    assert [(e.target, e.query) for e in general_sources.vera_entries(tmp_path)] == [("DNS", "Domain Name System")]


def test_debian_keeps_programs_whose_description_is_unique_and_does_not_name_them():
    dump = "\n\n".join(f"Package: {name}\nVersion: 1\nDescription: {text}" for name, text in [
        ("xbindkeys", "Associate a combination of keys with a shell command"), ("libfoo1", "Foo library"),
        ("foo-dev", "Foo headers"), ("viewnior", "simple, fast and elegant image viewer"),
        ("feh", "simple, fast and elegant image viewer"), ("grepcidr", "grep for CIDR addresses via grepcidr tool"),
        ("rpm2cpio", "tool to convert RPM package to CPIO archive")])
    entries = general_sources.debian_entries(general_sources.debian_catalogue(dump))
    assert [(e.target, e.query) for e in entries] == [("xbindkeys", "Associate a combination of keys with a shell command")]


def test_select_splits_by_target_and_keeps_synonyms_out_of_each_others_pools():
    entries = [Entry(f"w{i}", f"definition number {i}", aliases=frozenset({f"w{i + 1}"})) for i in range(40)]
    for split in SPLITS:
        chosen = general.select(entries, split, n_queries=3, pool=10)
        targets = {e.target for e in chosen}
        assert all(split_of(t) == split for t in targets)
        assert not any(e.aliases & targets for e in chosen)
    with pytest.raises(ValueError, match="only"):
        general.select(entries, "dev", n_queries=30, pool=40)


# --- configs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_the_suites_compose_with_every_domain_on_its_split(split):
    cfg = OmegaConf.to_container(compose([f"suite=general_{split}"]), resolve=True)
    datasets = cfg["benchmark"]["datasets"]
    assert sorted(datasets) == sorted(DOMAINS) and cfg["benchmark"]["name"] == f"general_{split}"
    for domain, ds in datasets.items():
        assert ds["split"] == split and ds["path"].endswith(f"general/{domain}/{split}.jsonl.gz")
        assert Path(ds["path"]).is_file() and ds["prompt"]["query_kind"] and ds["prompt"]["target_kind"]
        assert ds["name"] == f"general_{domain}" + ("_dev" if split == "dev" else "")
        assert ds["benchmark"] == ("general_dev" if split == "dev" else "general")


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_each_dev_config_is_its_test_twin_but_for_name_path_benchmark_and_split(domain):
    """A setting chosen on dev runs unchanged on test: the same prompt facts, pool and limit."""
    test, dev = (OmegaConf.to_container(compose([f"dataset={group}/{domain}"]).dataset, resolve=True)
                 for group in ("general", "general_dev"))
    differ = {k for k in test.keys() | dev.keys() if test.get(k) != dev.get(k)}
    assert differ == {"name", "path", "benchmark", "split"} and dev["benchmark"] == f"{test['benchmark']}_dev"
