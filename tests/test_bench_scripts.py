"""The benchmark scripts run at tiny sizes and write JSON with correct results (no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from freeret.rerank.packing import CPU_MAX_TOKENS
from helpers import REPO, run_main, script


def _run(script: str, out: Path, *args: str) -> dict:
    ran = run_main(f"experiments/{script}", ["--out", str(out), *args])
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert out.with_suffix(".png").exists()
    return json.loads(out.read_text())


def test_bench_search_small(tmp_path):
    pytest.importorskip("faiss")
    res = _run("bench_search.py", tmp_path / "s.json", "--n", "5000", "--dims", "32", "--queries", "16",
               "--nlist", "16", "--nprobe", "2", "16", "--train-size", "1000", "--repeats", "1",
               "--hnsw", "--hnsw-m", "8", "--ef-construction", "40", "--ef-search", "8", "2000")
    assert "environment" in res
    for case in res["cases"]:
        assert case["flat"]["recall@50"] == pytest.approx(1.0)
        assert case["ivf"]["sweep"][-1]["recall@50"] == pytest.approx(1.0)  # nprobe = nlist: exhaustive
        hnsw = [r["recall@50"] for r in case["hnsw"]["sweep"]]
        assert hnsw[0] < hnsw[-1] and hnsw[-1] > 0.95  # a wider beam finds more of the true neighbours


@pytest.mark.slow
def test_bench_embed_small(tmp_path):
    res = _run("bench_embed.py", tmp_path / "e.json", "--items", "6", "--batch-size", "3", "--repeats", "1")
    assert set(res["results"]) == {"freeret", "freeret_noprefix", "naive_batched", "naive_item"}
    assert res["results"]["naive_item"]["padded_tokens"] == 0
    # the prefix cache runs fewer tokens than the prompts hold
    assert res["results"]["freeret"]["useful_tokens"] < res["results"]["freeret_noprefix"]["useful_tokens"]
    assert all(c["min"] >= 0.9999 for c in res["cosine"].values())
    assert set(res["mfu"]) == {"freeret", "freeret_noprefix"} and res["mfu"]["freeret"]["mfu"] > 0
    paths = res["results"]  # every path without the prefix cache runs every prompt token; sorted batches pad alike
    assert paths["naive_item"]["useful_tokens"] == paths["naive_batched"]["useful_tokens"] == paths["freeret_noprefix"]["useful_tokens"]
    assert paths["freeret"]["padded_tokens"] == paths["freeret_noprefix"]["padded_tokens"]
    assert sum(paths["freeret"]["phase_tokens"].values()) == paths["freeret"]["useful_tokens"]
    assert paths["freeret"]["phase_tokens"]["prefix"] > 0 and all(r["tokens_per_s"] > 0 for r in paths.values())
    assert all(0 < r["cpu_seconds"] == pytest.approx(r["cpu_seconds_per_100_items"] * 6 / 100) for r in res["results"].values())


@pytest.mark.slow
def test_bench_rerank_small(tmp_path):
    res = _run("bench_rerank.py", tmp_path / "r.json", "--queries", "2", "--k", "3", "--hf", "--batch-size", "2")
    row = res["results"][0]
    assert row["max_abs_score_diff"] < 1e-4  # fast vs naive and vs the textbook full-logits loop
    assert set(row["max_abs_score_diff_per_path"]) == {"naive", "hf"}
    assert row["hf_pairs_per_s"] > 0
    work = row["work"]  # decoder forwards: one per pair, or per query the prefix once and ceil(K / batch) suffix batches
    assert work["naive"]["forwards"] == work["hf"]["forwards"] == row["pairs"] == 6
    assert work["fast"]["forwards"] == row["queries"] * (1 + math.ceil(row["k"] / res["batch_size"])) == 6
    assert work["fast"]["tokens"] < work["naive"]["tokens"] == work["hf"]["tokens"]
    phases = row["tokens_per_s"]["fast"]  # the fast path's tokens split by phase: the prefix once, then suffix batches
    assert phases["prefix"]["forwards"] == row["queries"] and set(row["tokens_per_s"]["naive"]) == {"full"}
    assert phases["prefix"]["tokens"] + phases["suffix"]["tokens"] == work["fast"]["tokens"]
    assert row["fast_prefix_tokens_per_s"] > 0 and row["fast_suffix_tokens_per_s"] > 0 and res["weights"] == "real"
    for path in ("naive", "fast", "hf"):  # each path's phases hold its own forwards (the textbook loop's leaked into naive's)
        assert sum(p["tokens"] for p in row["tokens_per_s"][path].values()) == work[path]["tokens"]


@pytest.mark.slow
def test_bench_rerank_image_candidates_small(tmp_path):
    res = _run("bench_rerank.py", tmp_path / "i.json", "--case", "image_candidates", "--model", "tiny_qwen2vl",
               "--queries", "2", "--k", "3")
    (row,) = res["results"]
    assert row["fast_max_abs_score_diff"] < 1e-4 and row["pairs"] == 6
    assert row["fast_vision_cache"]["records_received"] == 3  # each candidate image processed once for both queries
    assert row["fast_vision_cache"]["images_preprocessed"] == 0
    assert row["tokens_per_s"]["fast"]["full"]["tokens"] > 0  # image pairs run whole (no text prefix cache)


@pytest.mark.slow
def test_bench_rerank_scorers_small(tmp_path):
    scorers = ["choice", "choice_debiased", "candidate_likelihood", "query_likelihood", "bidirectional", "listwise"]
    res = _run("bench_rerank.py", tmp_path / "sc.json", "--scorers", *scorers, "--queries", "1", "--k", "3")
    assert [(r["scorer"], r["k"]) for r in res["results"]] == [(s, 3) for s in scorers]
    assert res["max_tokens_per_batch"] == CPU_MAX_TOKENS and res["queries_per_step"] == 16 and res["matmul_gflops"] > 0
    for r in res["results"]:
        assert r["max_abs_score_diff"] < 1e-4 and r["pairs"] == r["k"]
        assert set(r["paths"]) == {"naive", "run"}  # no --today-code: no today path
        run, naive = r["paths"]["run"], r["paths"]["naive"]
        assert 0 < run["mfu"] and run["head_flops"] > 0 and run["tokens_per_pair"] <= naive["tokens_per_pair"]
        if r["scorer"] == "listwise":
            assert r["minimum_tokens"] is None
        else:  # one query: the run path pads its suffix batches, and runs nothing else the minimum leaves out
            assert 0 < r["minimum_tokens_per_pair"] <= run["tokens_per_pair"]


@pytest.mark.slow
def test_bench_rerank_scorers_today_path(tmp_path):
    """--today-code runs bench_rerank_commits.py's text mode on a checkout (here this one) as the today path."""
    res = _run("bench_rerank.py", tmp_path / "t.json", "--scorers", "query_likelihood", "--queries", "1", "--k", "2",
               "--today-code", str(REPO))
    (row,) = res["results"]
    today, run = row["paths"]["today"], row["paths"]["run"]
    assert row["today_code"] == str(REPO) and row["max_abs_score_diff_today"] < 1e-4
    assert run["tokens"] <= today["tokens"]  # here today is this checkout's per-query score: packing never runs more
    assert today["pairs_per_s"] > 0 and today["mfu"] > 0 and today["rounds"] == run["rounds"] == 3  # --repeats' default


SCORED = ["choice", "choice_debiased", "candidate_likelihood", "query_likelihood", "bidirectional"]


@pytest.mark.parametrize("name", SCORED)
def test_minimum_tokens_is_what_one_suffix_per_forward_runs(name, smollm):
    """The minimum (from the scorer's prompts tokenised) against the decoder's own count: with one suffix per batch
    (no padding) and one query, today's run path reuses every prefix it can and runs nothing twice, so it runs
    exactly the minimum; a second query over the same candidates adds its prompt and pairs (candidate likelihood:
    no prior again). The naive path runs more."""
    bench = script("experiments/bench_rerank.py")
    from freeret.data.retrieval_set import Item
    from freeret.rerank.scorers.lm import base_model, shared_prefix

    cands = [Item.make("target", t, None) for t in ["dog", "an old wooden ship with three tall masts", "barking"]]
    queries = [Item.make("query", t, None) for t in ["a domestic animal that barks", "a sailing vessel"]]
    counter = bench.DecoderWork(base_model(smollm), bench.widths(smollm))
    counter.watch_head(shared_prefix(smollm))
    try:
        build, _ = bench.scorer_builder(smollm, name, "mcq", batch_size=1, max_tokens=512)
        rows = [(queries[0], cands)]
        _, work = bench.timed_work(counter, lambda: [build().score(q, c) for q, c in rows], smollm.device)
        minimum = bench.minimum_tokens(build(), rows)
        assert work["tokens"] == sum(minimum.values()) and work["head_flops"] > 0
        _, naive = bench.timed_work(counter, lambda: [build().naive(q, c) for q, c in rows], smollm.device)
        assert naive["tokens"] > work["tokens"]
        if name == "candidate_likelihood":
            both = [(q, cands) for q in queries]
            scorer = build()
            _, work = bench.timed_work(counter, lambda: [scorer.score(q, c) for q, c in both], smollm.device)
            assert work["tokens"] == sum(bench.minimum_tokens(scorer, both).values())
            assert set(minimum) == {"query_prompts", "candidates", "prior_prompt", "prior_candidates"}
    finally:
        counter.close()
    assert not vars(shared_prefix(smollm)).get("head_logits")  # close() put the head back
