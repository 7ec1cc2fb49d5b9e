"""WordNet dev splits and few-shot demonstrations: disjoint from the test sets, byte-reproducible, wired into
configs (dataset=wordnet_rd_dev, suite=wordnet_meta_dev) with the same prompts as their test twins."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from freeret.data import wordnet as wn
from freeret.data.wordnet_tasks import BUILDERS
from freeret.embed.priors import Prior
from freeret.rerank.framing import Framing
from helpers import REPO, compose, dataset_prompt

DATA = REPO / "data"
TASKS = list(BUILDERS)
DATASETS = ["wordnet_rd", *(f"wordnet_{t}" for t in TASKS)]
CLASSIFICATION = {"wordnet_cls_lexname", "wordnet_cls_hypernym"}
needs_wordnet = pytest.mark.skipif(not (wn.WORDNET_DIR / "data.noun").is_file(),
                                   reason=f"WordNet 3.0 not at {wn.WORDNET_DIR}: `apt-get install wordnet-base`")


def shipped_path(dataset: str, split: str) -> Path:
    suffix = "" if split == "test" else f"_{split}"
    if dataset == "wordnet_rd":
        return DATA / "wordnet_rd" / f"wordnet_rd{suffix}.jsonl.gz"
    return DATA / "wordnet_tasks" / f"{dataset.removeprefix('wordnet_')}{suffix}.jsonl.gz"


def shipped(split: str) -> dict[str, list[dict]]:
    out = {}
    for dataset in DATASETS:
        with gzip.open(shipped_path(dataset, split), "rt", encoding="utf-8") as f:
            out[dataset] = [json.loads(line) for line in f]
    return out


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def used(sets: dict[str, list[dict]]) -> tuple[set[int], set[str]]:
    """Synsets and texts (queries and positives) of every row of every set."""
    synsets = {r["synset_offset"] for rows in sets.values() for r in rows}
    texts = {norm(t) for rows in sets.values() for r in rows for t in (r["qry_text"], r["tgt_text"][0])}
    return synsets, texts


def overlaps(sets: dict[str, list[dict]], others: dict[str, list[dict]]) -> list[str]:
    """Every row of ``sets`` whose query synset, query or positive is a query/positive synset or text of
    ``others``; a classification row's positive is a shared label, so only its query counts."""
    synsets, texts = used(others)
    found = []
    for dataset, rows in sets.items():
        for r in rows:
            mine = [r["qry_text"]] + ([] if dataset in CLASSIFICATION else [r["tgt_text"][0]])
            if r["synset_offset"] in synsets or any(norm(t) in texts for t in mine):
                found.append(f"{dataset}:{r['id']}")
    return found


@pytest.fixture(scope="module")
def test_sets() -> dict[str, list[dict]]:
    return shipped("test")


@pytest.fixture(scope="module")
def dev_sets() -> dict[str, list[dict]]:
    return shipped("dev")


@pytest.fixture(scope="module")
def demos() -> dict[str, list[dict]]:
    return json.loads((DATA / "wordnet_fewshot" / "demos.json").read_text())


def test_overlap_check_sees_a_leak(test_sets):
    """The checker itself: a set against itself, or one leaked row, is reported."""
    assert len(overlaps(test_sets, test_sets)) == sum(map(len, test_sets.values()))
    leaked = {"wordnet_rd": [{**test_sets["wordnet_qa_blank"][0], "synset_offset": 1, "id": "leak"}]}
    assert overlaps(leaked, test_sets) == ["wordnet_rd:leak"]  # its query sentence and positive word are test items


def test_dev_sets_are_disjoint_from_every_test_set(dev_sets, test_sets):
    assert overlaps(dev_sets, test_sets) == []


def test_dev_sets_have_the_test_sizes_and_shared_labels(dev_sets, test_sets):
    for dataset in DATASETS:
        dev, test = dev_sets[dataset], test_sets[dataset]
        assert len(dev) == len(test) and len({r["id"] for r in dev}) == len(dev)
        assert {len(r["tgt_text"]) for r in dev} == {len(test[0]["tgt_text"])}
        for r in dev:
            assert sorted(r["tgt_text"]) == sorted(dev[0]["tgt_text"])  # one shared pool per set, as in test
        if dataset in CLASSIFICATION:  # the label set is the task, so the splits share it
            assert sorted(dev[0]["tgt_text"]) == sorted(test[0]["tgt_text"])


def test_demos_are_disjoint_from_every_dev_and_test_set(demos, dev_sets, test_sets):
    assert sorted(demos) == sorted(DATASETS)
    labels = {d: set(test_sets[d][0]["tgt_text"]) for d in CLASSIFICATION}
    as_rows = {d: [{"id": str(x["synset_offset"]), "synset_offset": x["synset_offset"], "qry_text": x["text"],
                    "tgt_text": [x["answer"]]} for x in pairs] for d, pairs in demos.items()}
    assert overlaps(as_rows, test_sets) == [] and overlaps(as_rows, dev_sets) == []
    for dataset, pairs in demos.items():
        assert len(pairs) == 16 and len({x["synset_offset"] for x in pairs}) == 16
        for x in pairs:
            assert x["text"].strip() and x["answer"].isalpha() and x["answer"].islower()  # one word
            if dataset in labels:
                assert x["answer"] in labels[dataset]


def test_fewshot_prior_shows_only_held_out_demonstrations(demos, dev_sets, test_sets):
    """prior=fewshot on every WordNet set, test and dev: the demonstrations in the rendered prompt are the dataset's own
    held-out pairs (the file checked above), and no demonstration text is a query or positive of any dev or test set."""
    import re

    prior = Prior.from_dict(OmegaConf.to_container(compose(["prior=fewshot", "prior.demos.k=16"]).prior, resolve=True))
    _, texts = used({**{f"{d}_t": r for d, r in test_sets.items()}, **{f"{d}_d": r for d, r in dev_sets.items()}})
    configs = {"wordnet_rd": ("wordnet_rd", "wordnet_rd_dev")}
    for dataset in DATASETS:
        test_cfg, dev_cfg = configs.get(dataset, (f"wordnet/{dataset.removeprefix('wordnet_')}",
                                                  f"wordnet_dev/{dataset.removeprefix('wordnet_')}"))
        for name, cfg_name in ((dataset, test_cfg), (f"{dataset}_dev", dev_cfg)):
            bound = prior.for_dataset(dataset_prompt(cfg_name))
            assert bound.dataset == name
            detail = bound.describe()["demos"]
            assert detail["set"] == dataset and detail["k"] == 16
            assert detail["sha256"] == hashlib.sha256((DATA / "wordnet_fewshot" / "demos.json").read_bytes()).hexdigest()
            prompt = bound.render("query", "ITEM", False)
            shown = re.findall(r': "(.*?)" means in one word:"(.*?)"\.', prompt)
            assert shown == [(x["text"], x["answer"]) for x in demos[dataset]]
            for text, answer in shown:
                assert norm(text) not in texts
                if dataset not in CLASSIFICATION:  # a classification answer is a shared label
                    assert norm(answer) not in texts


@needs_wordnet
def test_every_split_rebuilds_byte_for_byte(tmp_path, capsys):
    """The scripts rebuild the test sets, the dev sets and the demonstrations to the shipped bytes."""
    from scripts import build_wordnet_fewshot, build_wordnet_rd, build_wordnet_tasks

    for split in ("test", "dev"):
        build_wordnet_rd.main(["--split", split, "--out", str(tmp_path / shipped_path("wordnet_rd", split).name)])
        build_wordnet_tasks.main(["--split", split, "--out", str(tmp_path)])
    build_wordnet_fewshot.main(["--out", str(tmp_path / "demos.json")])
    capsys.readouterr()
    expected = [shipped_path(d, s) for d in DATASETS for s in ("test", "dev")] + [DATA / "wordnet_fewshot" / "demos.json"]
    for path in expected:
        built = tmp_path / path.name
        assert hashlib.sha256(built.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest(), path.name


def test_exclusion_blocks_synsets_and_texts_case_blind():
    ex = wn.Exclusion.of_rows([{"synset_offset": 7, "qry_text": "A  Small dog", "tgt_text": ["puppy", "cat"]}])
    syn = wn.Synset(offset=9, pos="n", lexname="noun.animal", lemmas=("kitten",), definition="a young cat",
                    examples=(), hypernyms=(), tag_count=1)
    assert not ex.blocks(syn) and not ex.has_text("cat")  # distractors are not excluded
    assert ex.blocks(syn.__class__(**{**syn.__dict__, "offset": 7}))
    assert ex.blocks(syn.__class__(**{**syn.__dict__, "lemmas": ("Puppy",)}))
    assert ex.blocks(syn.__class__(**{**syn.__dict__, "definition": "a small dog"}))


# --- configs ------------------------------------------------------------------------------------------

def test_dev_configs_mirror_the_test_configs():
    pairs = [(compose(["dataset=wordnet_rd"]).dataset, compose(["dataset=wordnet_rd_dev"]).dataset)]
    test_suite = compose(["suite=wordnet_meta"]).benchmark
    dev_suite = compose(["suite=wordnet_meta_dev"]).benchmark
    assert (test_suite.name, dev_suite.name) == ("wordnet_meta", "wordnet_meta_dev")
    assert list(dev_suite.datasets) == list(test_suite.datasets)
    pairs += [(test_suite.datasets[k], dev_suite.datasets[k]) for k in test_suite.datasets]
    for test, dev in pairs:
        assert (test.split, dev.split) == ("test", "dev")
        assert dev.name == f"{test.name}_dev" and dev.path == test.path.replace(".jsonl.gz", "_dev.jsonl.gz")
        assert (REPO / OmegaConf.to_container(dev, resolve=False)["path"].replace("${paths.data_dir}", "data")).is_file()
        differ = {k for k in set(test) | set(dev) if test.get(k) != dev.get(k)}
        assert differ <= {"name", "path", "split", "benchmark"}
        if "benchmark" in differ:
            assert dev.benchmark == f"{test.benchmark}_dev"  # tables never average dev with test
    assert compose(["dataset=wordnet_qa"]).dataset.split == "test"


def _conf(group: str) -> list[dict]:
    """Every option of a config group, composed as a run composes it (an option may extend another)."""
    return [OmegaConf.to_container(compose([f"{group}={p.stem}"])[group], resolve=True)
            for p in sorted((REPO / "conf" / group).glob("*.yaml"))]


def _dataset_files(name: str) -> tuple[str, str]:
    """The conf/dataset entries (test, dev) of a WordNet set."""
    if name == "wordnet_rd":
        return "wordnet_rd", "wordnet_rd_dev"
    task = name.removeprefix("wordnet_")
    return f"wordnet/{task}", f"wordnet_dev/{task}"


def test_dev_sets_get_the_prompts_of_their_test_twins():
    """A setting chosen on dev must run unchanged on test: every prior and framing renders the same prompt."""
    for name in DATASETS:
        test, dev = (dataset_prompt(path) for path in _dataset_files(name))
        for cfg in _conf("prior"):
            prior = Prior.from_dict(cfg)
            for role in ("query", "target"):
                got = prior.for_dataset(dev).render(role, "a text", False)
                assert got == prior.for_dataset(test).render(role, "a text", False), (cfg["name"], name)
        for cfg in _conf("framing"):
            framing = Framing.from_dict(cfg)
            assert framing.for_dataset(dev).split() == framing.for_dataset(test).split(), (cfg["name"], name)


def test_dev_suite_runs_in_fast_mode(tmp_path):
    """suite=wordnet_meta_dev end to end (tiny model, 2 queries per set, in process); results carry split=dev.
    (dataset=wordnet_rd_dev is loaded by test_run.py's every-config-group test.)"""
    from freeret.benchmark import run_all

    overrides = ["suite=wordnet_meta_dev", "mode=fast", "benchmark.limit=2", "logger=none",
                 "trainer.enable_progress_bar=false"]
    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    for dataset in cfg["benchmark"]["datasets"].values():
        dataset["pool"] = "positives"  # the kept rows' positives as candidates: a few items to embed
    payloads = run_all({**cfg, "run_dir": str(tmp_path)})
    assert [p.dataset for p in payloads] == [f"{d}_dev" for d in DATASETS[1:]]
    assert all(p.task.split == "dev" and p.task.benchmark == "wordnet_meta_dev" for p in payloads)
    assert all(p.counts.num_queries == 2 for p in payloads)
