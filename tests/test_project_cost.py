"""experiments/project_cost.py: the cost projection's arithmetic, its fallbacks and its counts (no projected hours
are asserted: they move with every measurement)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from helpers import REPO, run_main, script

pc = script("experiments/project_cost.py")
FIXTURE = REPO / "tests" / "fixtures" / "cost" / "rerank_scorers.json"
EMBED = REPO / "docs" / "results" / "bench" / "embed_qwen2vl_2b_dims_28layers.json"
SCORERS = ["choice", "query_likelihood", "candidate_likelihood", "bidirectional"]


@pytest.fixture(scope="module")
def inputs():
    return pc.load_inputs()


@pytest.fixture(scope="module")
def counter():
    return pc.PromptCounter()


@pytest.fixture(scope="module")
def wordnet(inputs, counter):
    return pc.count_suite("wordnet_meta", inputs, "qwen2vl_7b", counter)


@pytest.fixture(scope="module")
def mmeb(inputs, counter):
    """Three MMEB datasets (image -> text, text -> image, a classification set with 2 labels), from the assumptions."""
    configs = {c["name"]: c for c in pc.suite_datasets("mmeb").values()}
    return [pc.count_mmeb_assumed(configs[n], inputs, counter, "qwen2vl_7b")
            for n in ("ImageNet-1K", "MSCOCO_t2i", "HatefulMemes")]


def _project(inputs, counts, rates, **kw):
    return pc.project("test", "qwen2vl_7b", "h100", SCORERS, [10, 50], rates, inputs, counts=counts, **kw)


def test_wordnet_suite_counts_match_the_shipped_data(wordnet):
    cfgs = {c["name"]: c for c in pc.suite_datasets("wordnet_meta").values()}
    assert {d.name for d in wordnet} == set(cfgs)
    for ds in wordnet:
        with gzip.open(REPO / cfgs[ds.name]["path"], "rt") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        assert ds.queries.items == len({r["qry_text"] for r in rows}) == len(rows)
        assert ds.candidates_per_row == [len(r["tgt_text"]) for r in rows]
        assert ds.targets.items == len({t for r in rows for t in r["tgt_text"]})
        assert ds.query_kind == ds.target_kind == "text" and not ds.queries.image
        assert ds.pairs(10) == sum(min(10, len(r["tgt_text"])) for r in rows)
        assert all(n > ds.queries.shared > 0 for n in ds.queries.prompt_tokens)  # tokenized, a shared prefix


def test_doubling_the_rate_halves_the_time(inputs, wordnet, mmeb):
    rates = pc.load_rates([EMBED, FIXTURE])
    slow, fast = (_project(inputs, wordnet + mmeb, rates, mfu=m) for m in (0.2, 0.4))
    assert fast["stage1"]["hours"] == pytest.approx(slow["stage1"]["hours"] / 2)
    for a, b in zip(slow["stage2"], fast["stage2"]):
        assert b["hours"] == pytest.approx(a["hours"] / 2) and a["hours"] > 0
        assert b["rate_tokens_per_s"] == pytest.approx(2 * a["rate_tokens_per_s"])
    # the measured MFU of the rates file is what a doubled measurement doubles
    doubled = json.loads(FIXTURE.read_text())
    for r in doubled["results"]:
        r["paths"]["run"]["mfu"] *= 2
    twice = pc.Rates(stage1=rates.stage1, stage2=pc._stage2_points(doubled)[0], stage2_source="doubled")
    base = _project(inputs, wordnet, rates)
    more = _project(inputs, wordnet, twice)
    for a, b in zip(base["stage2"], more["stage2"]):
        assert b["hours"] == pytest.approx(a["hours"] / 2)
    assert pc.hours(1e18, 1e15, 0.5) == pytest.approx(2 * pc.hours(1e18, 2e15, 0.5))
    assert pc.scale_rate(100.0, 1.0, 1.0, 1.0, 2.0, 0.5, 0.5) == pytest.approx(200.0)


def test_tokens_are_pairs_times_tokens_per_pair(inputs, wordnet, mmeb):
    rates = pc.load_rates([EMBED, FIXTURE])
    res = _project(inputs, wordnet + mmeb, rates)
    measured = {(r["scorer"], r["k"]): r["paths"]["run"] for r in json.loads(FIXTURE.read_text())["results"]}
    for r in res["stage2"]:
        assert r["tokens"] == pytest.approx(r["pairs"] * r["tokens_per_pair"])
        assert r["bench_tokens_per_pair"] == measured[(r["scorer"], r["k"])]["tokens_per_pair"]
    # text-only suite at K=10 (every WordNet task has >= 20 candidates): the measured run path's tokens per pair
    text = _project(inputs, wordnet, rates)
    for r in (r for r in text["stage2"] if r["k"] == 10):
        assert r["pairs"] == sum(d.pairs(10) for d in wordnet)
        assert r["tokens_per_pair"] == pytest.approx(measured[(r["scorer"], 10)]["tokens_per_pair"])
        assert r["bench_minimum_tokens_per_pair"] <= r["bench_tokens_per_pair"]


def test_images_add_their_visual_tokens(inputs, mmeb):
    rates = pc.load_rates([EMBED, FIXTURE])
    res = pc.project("test", "qwen2vl_7b", "h100", ["choice"], [10], rates, inputs, counts=mmeb)
    per = {d["dataset"]: d for d in res["stage2"][0]["per_dataset"]}
    text = res["stage2"][0]["text_tokens_per_pair"]
    v = pc.visual_tokens(480, 640, "qwen2vl_7b")
    assert v == (476 // 28) * (644 // 28)  # smart_resize under conf/model/qwen2vl_7b.yaml's max_pixels
    t2i, i2t = per["MSCOCO_t2i"], per["ImageNet-1K"]
    assert t2i["tokens"] / t2i["pairs"] == pytest.approx(text + v)  # every pair runs its candidate image
    assert i2t["tokens"] / i2t["pairs"] == pytest.approx(text + v / 10)  # the query image once per query
    assert per["HatefulMemes"]["pairs"] == 1000 * 2  # K capped at its 2 labels


def test_scorers_run_only_where_they_take_the_kinds(inputs, mmeb):
    res = _project(inputs, mmeb, pc.load_rates([EMBED, FIXTURE]))
    got = {(r["scorer"], r["k"]): set(r["not_applicable"]) for r in res["stage2"]}
    assert got[("choice", 10)] == set()
    assert got[("query_likelihood", 10)] == {"ImageNet-1K", "HatefulMemes"}  # image queries
    assert got[("candidate_likelihood", 10)] == {"MSCOCO_t2i"}  # image candidates
    assert got[("bidirectional", 50)] == {"ImageNet-1K", "HatefulMemes", "MSCOCO_t2i"}


def test_a_missing_rates_file_falls_back_to_the_assumptions_and_says_so(inputs, wordnet, tmp_path):
    missing = tmp_path / "rerank_scorers.json"
    rates = pc.load_rates([missing])
    assert any(str(missing) in n and "not found" in n for n in rates.notes)
    res = _project(inputs, wordnet, rates)
    fb = inputs["stage2_fallback"]
    for r in res["stage2"]:
        assert r["mfu"] == pc.value(inputs["mfu"]["default"]) and r["mfu_source"].startswith("assumed")
        assert r["text_tokens_source"].startswith("assumed")
        assert r["text_tokens_per_pair"] == pytest.approx(pc.value(fb["suffix_tokens_per_pair"])
                                                          + pc.value(fb["prefix_tokens_per_query"]) / r["k"])
    assert res["stage1"]["mfu_source"].startswith("assumed")
    text = pc.table(res)
    assert "not found" in text and "assumed" in text


def test_the_measured_rate_scales_as_the_mfu_projection(inputs, wordnet):
    res = _project(inputs, wordnet, pc.load_rates([EMBED]))
    s1 = res["stage1"]
    assert s1["mfu_source"].startswith("measured")
    assert s1["rate_scaled_from_measured"] == pytest.approx(s1["rate_tokens_per_s"])


def test_every_input_says_measured_or_assumed(inputs):
    entries = pc.provenance(inputs)
    assert entries and all(e["status"] in ("measured", "assumed") and e["source"] for e in entries)
    assert pc.value(inputs["models"]["qwen2vl_7b"]["text"])["d"] == 3584


def test_the_script_writes_the_table_json_and_plot(tmp_path):
    out = tmp_path / "cost.json"
    ran = run_main("experiments/project_cost.py", ["--suite", "wordnet_meta", "--k", "10", "--scorers", "choice",
                                                  "--rates", str(EMBED), str(FIXTURE), str(tmp_path / "none.json"),
                                                  "--out", str(out)])
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "| 1 embed |" in ran.stdout and "| 2 rerank | choice | 10 |" in ran.stdout and "not found" in ran.stdout
    res = json.loads(out.read_text())
    assert res["stage2"][0]["mfu_source"].startswith("measured") and Path(out.with_suffix(".png")).exists()
