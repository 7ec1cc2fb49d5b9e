"""Stage-2 settings scored from a BLiM run's records (freeret/rerank/tune.py) equal what the scorers and the fusion do
when they run, and the stage-2 search driver chooses from them (issue 26)."""

from __future__ import annotations

import json

import pytest
import torch

from freeret.data.retrieval_set import Item
from freeret.errors import ConfigError
from freeret.rerank import tune
from freeret.rerank.stage import RerankConfig, fuse, fuse_record
from helpers import build_scorer, run_main

QUERIES = ["a domestic animal that barks", "a vehicle with two wheels", "a large sailing vessel"]
WORDS = ["dog", "bicycle", "ship", "cat", "the sea", "puppy"]


def _rows() -> list[tuple[Item, list[Item]]]:
    cands = [Item.make("target", w, None) for w in WORDS]
    return [(Item.make("query", q, None), [cands[(i + j) % len(cands)] for j in range(5)]) for i, q in enumerate(QUERIES)]


def _record(parts: dict, embed: list[float]) -> dict:
    return {"row": "r", "positions": list(range(len(embed))), "embed": embed, **parts}


@pytest.fixture(scope="module")
def blim_records(smollm) -> list[dict]:
    """The records of one BLiM run (the defaults: weight 0.5, lambda 1) over :func:`_rows`."""
    return [s.record() for s in build_scorer(smollm, "bidirectional").score_block(_rows())]


@pytest.mark.parametrize("setting, scorer, overrides", [
    (tune.Stage2Setting("candidate_likelihood", 4, cpn_lambda=0.5), "candidate_likelihood", ["scorer.cpn_lambda=0.5"]),
    (tune.Stage2Setting("candidate_likelihood", 5, cpn_lambda=0.0), "candidate_likelihood", ["scorer.cpn_lambda=0.0"]),
    (tune.Stage2Setting("query_likelihood", 3), "query_likelihood", []),
    (tune.Stage2Setting("bidirectional", 5, weight=0.25, cpn_lambda=0.5), "bidirectional",
     ["scorer.weight=0.25", "scorer.candidate.cpn_lambda=0.5"]),
])
def test_scores_from_a_blim_record_equal_the_scorer_run_on_real_smollm2(setting, scorer, overrides, smollm,
                                                                       blim_records):
    """One BLiM run (lambda 1, weight 0.5) keeps the parts; each other scorer setting, run for real on the first K
    candidates, scores what the record gives within 1e-4."""
    rows, records = _rows(), blim_records
    real = build_scorer(smollm, scorer, *overrides)
    for (query, cands), record in zip(rows, records):
        got = setting.scores(record)
        want = real.score_block([(query, cands[: setting.top_k])])[0].scores
        assert got.shape == (setting.top_k,)
        assert torch.allclose(got, want, atol=1e-4), (setting, got, want)


def test_hit_at_1_follows_the_runs_fusion_and_tie_rules():
    """The run's own fused ranking (fuse_record over the whole candidate list) and the offline hit@1 agree, for every
    fusion; a positive outside the top-K is a miss; stage 1 alone counts a tie as a miss."""
    embed = [0.9, 0.8, 0.7, 0.1]  # positive (position 0) first by cosine
    parts = {"cond": [-3.0, -1.0, -2.0, -0.5], "prior": [-1.0, -1.0, -1.0, -1.0], "ql": [-1.0, -2.0, -3.0, -4.0]}
    record = _record(parts, embed)
    for setting in [tune.Stage2Setting("candidate_likelihood", 3, cpn_lambda=1.0),
                    tune.Stage2Setting("query_likelihood", 3),
                    tune.Stage2Setting("bidirectional", 4, "zscore", 0.75, 0.0, 0.5),
                    tune.Stage2Setting("candidate_likelihood", 2, "zscore", 0.25, 0.0)]:
        cfg = RerankConfig(top_k=setting.top_k, fusion=setting.fusion, fusion_weight=setting.fusion_weight)
        k = setting.top_k
        run = {"positions": record["positions"][:k], "scores": setting.scores(record).tolist()}
        want = float(int(torch.argmax(fuse_record(torch.tensor(embed), run, cfg))) == 0)
        assert tune.hit_at_1(record, setting) == want, setting
    assert tune.hit_at_1(record, tune.Stage2Setting("candidate_likelihood", 3)) == 0.0  # cond -1.0 beats -3.0
    assert tune.hit_at_1(record, tune.Stage2Setting("query_likelihood", 3)) == 1.0
    outside = _record(parts, [0.8, 0.9, 0.7, 0.1]) | {"positions": [1, 2, 3, 0]}
    assert tune.hit_at_1(outside, tune.Stage2Setting("query_likelihood", 3)) == 0.0  # positive not in the top 3
    assert tune.hit_at_1(_record(parts, [0.5, 0.5, 0.1, 0.0]), None) == 0.0  # a tie at the top is a miss
    assert tune.hit_at_1(record, None) == 1.0


def test_zscore_fusion_is_scale_free_and_constant_scores_fall_back_to_the_other():
    cfg = RerankConfig(fusion="zscore", fusion_weight=0.5)
    scores, embed = torch.tensor([-5.0, -1.0, -3.0]), torch.tensor([0.30, 0.20, 0.10])
    fused = fuse(scores, embed, cfg)
    assert torch.allclose(fused, fuse(scores * 100 + 7, embed * 3 - 1, cfg))  # standardised: any affine scale
    assert torch.allclose(fused.sum(), torch.tensor(0.0, dtype=fused.dtype), atol=1e-9)
    only_embed = fuse(torch.zeros(3), embed, cfg)  # constant scores: zeros, the cosine decides
    assert torch.argsort(-only_embed).tolist() == [0, 1, 2]
    weighted = fuse(scores, embed, RerankConfig(fusion="weighted", fusion_weight=0.5))
    assert torch.allclose(weighted, 0.5 * scores + 0.5 * embed)


def test_grid_names_each_scorers_own_knobs_and_refuses_others():
    spec = {"scorers": ["candidate_likelihood", "query_likelihood", "bidirectional"], "cpn_lambda": [0.0, 1.0],
            "weight": [0.25, 0.5], "top_k": [3, 5], "fusion": ["rerank", "zscore"], "fusion_weight": [0.25, 0.75]}
    settings = tune.grid(spec)
    # per K and fusion (3 of them): CL 2 lambdas + QL 1 + BLiM 2x2 = 7; x 2 K = 42
    assert len(settings) == 42 and len(set(settings)) == 42
    assert {s.fusion for s in settings} == {"rerank", "zscore"}
    blim = next(s for s in settings if s.scorer == "bidirectional" and s.fusion == "zscore")
    assert blim.overrides() == {"scorer": "bidirectional", "scorer.weight": blim.weight,
                                "scorer.candidate.cpn_lambda": blim.cpn_lambda, "pipeline.top_k": blim.top_k,
                                "pipeline.fusion": "zscore", "pipeline.fusion_weight": blim.fusion_weight}
    with pytest.raises(ConfigError, match="choice cannot be scored"):
        tune.grid({**spec, "scorers": ["choice"]})


def test_search_keeps_no_stage2_unless_one_beats_stage1_and_checks_records():
    parts = {"cond": [-1.0, -3.0], "prior": [0.0, 0.0], "ql": [-1.0, -3.0]}
    # row 2: stage 1 ranks position 1 above the positive (position 0); the record's parts follow that order
    good = {"d": [_record(parts, [0.9, 0.8]), _record(parts, [0.9, 0.8]) | {"positions": [1, 0]}]}
    settings = [tune.Stage2Setting("candidate_likelihood", 2), tune.Stage2Setting("query_likelihood", 2)]
    result = tune.search(good, settings)
    assert result["stage1"]["mean"] == 0.5
    assert result["chosen"] is None and result["objective"] == 0.5
    flipped = {"d": [good["d"][0], good["d"][1] | {"cond": [-3.0, -1.0], "ql": [-3.0, -1.0]}]}
    result = tune.search(flipped, settings)
    assert result["chosen"] == {**result["settings"][0]["setting"]} and result["objective"] == 1.0
    assert result["chosen_overrides"]["scorer"] == "candidate_likelihood"
    with pytest.raises(ConfigError, match="lacks prior"):
        tune.search({"d": [{"row": "x", "positions": [0], "embed": [1.0], "cond": [0.0], "ql": [0.0]}]}, settings)


@pytest.mark.slow
def test_general_search_chooses_stage1_on_the_domain_mean_then_stage2_then_writes_the_preset(tmp_path):
    """The general spec's shape on a tiny VLM and two domains: the stage-1 objective is the mean over datasets, the
    stage-2 search runs BLiM once and scores its grid from the records (checked against the run), the preset file
    carries the stage-2 block, and --test runs the chosen pipeline with and without it."""
    only_dev = "++benchmark.only=[general_wn_adv_dev,general_jargon_dev]"
    only_test = "++benchmark.only=[general_wn_adv,general_jargon]"
    small = [f"++benchmark.datasets.{d}.{k}" for d in ("wn_adv", "jargon") for k in ("limit=4", "pool=positives")]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"search": {
        "objective": "mean", "suites": ["general_dev", "general_test"],
        "dev_overrides": [only_dev, *small], "test_overrides": [only_test, *small],
        "axes": [{"name": "post", "sweep": {"postprocess": ["none", "center"]}}],
        "stage2": {"run": {"scorer": "bidirectional", "pipeline.top_k": 3},
                   "grid": {"top_k": [2, 3], "fusion": ["rerank", "zscore"], "cpn_lambda": [0.0, 1.0]}},
        "baselines": {"bm25": {"retriever": "bm25"}}}}))
    out = tmp_path / "out"
    args = ["--model", "tiny_qwen2vl", "--out", str(out), "--spec", str(spec), "--", "threads=1"]
    ran = run_main("experiments/stage1_search.py", args)
    assert ran.returncode == 0, ran.stderr[-3000:]
    state = json.loads((out / "search.json").read_text())
    jobs = state["axes"]["post"]["jobs"]
    assert all(sorted(j["scores"]) == ["general_jargon_dev", "general_wn_adv_dev"] for j in jobs)
    assert all(j["objective"] == pytest.approx(sum(j["scores"].values()) / 2) for j in jobs)
    ran = run_main("experiments/stage2_search.py", args)
    assert ran.returncode == 0, ran.stderr[-3000:]
    state = json.loads((out / "search.json").read_text())
    s2 = state["stage2"]
    assert len(s2["settings"]) == 2 * 2 * (2 + 1 + 2) and s2["n_rows"] == {"general_jargon_dev": 4, "general_wn_adv_dev": 4}
    assert s2["stage1"]["mean"] == pytest.approx(state["best_objective"])  # the same dev rows as the stage-1 search
    import stage1_search as driver

    forced = {**state, "stage2": {**s2, "chosen": s2["settings"][0]["setting"],
                                  "chosen_overrides": tune.Stage2Setting(**s2["settings"][0]["setting"]).overrides(),
                                  "objective": 1.0}}
    path = driver.write_preset(forced, out, root=tmp_path / "presets")
    written = path.read_text()
    assert "stage2:" in written and "scorer: candidate_likelihood" in written and "stage 2 chosen" in written
    (out / "search.json").write_text(json.dumps(forced))
    ran = run_main("experiments/stage1_search.py", [*args[:6], "--test", "--", "threads=1"])
    assert ran.returncode == 0, ran.stderr[-3000:]
    final = json.loads((out / "search.json").read_text())["test"]
    assert sorted(final) == ["bm25_dev", "bm25_test", "chosen_stage2_test", "chosen_test"]
    job = final["chosen_stage2_test"]["jobs"][0]
    assert job["stage1_scores"] == final["chosen_test"]["jobs"][0]["scores"]  # the same stage 1 under stage 2


def test_general_table_reads_the_test_runs_and_checks_the_goals(tmp_path):
    """experiments/general_table.py: a block per model from search.json's test runs, the issue's goals checked on
    them, and the figure by model size."""
    from helpers import script

    table = script("experiments/general_table.py")

    def run(a: float, b: float) -> dict:
        return {"jobs": [{"scores": {"general_wn_adj": a, "general_vera": b}}]}

    smol = {"model": "smollm2_135m", "best": {"prior": "fewshot"}, "stage2": {"chosen_overrides": {"scorer": "x"}},
            "test": {"chosen_test": run(0.4, 0.2), "chosen_stage2_test": run(0.6, 0.1), "bm25_test": run(0.1, 0.1),
                     "minilm_test": run(0.5, 0.3), "freeret_paper_test": run(0.1, 0.0)}}
    qwen = {"model": "qwen25coder_05b", "best": {}, "stage2": {"chosen_overrides": None},
            "test": {"chosen_test": run(0.7, 0.5), "bm25_test": run(0.1, 0.1), "minilm_test": run(0.5, 0.3)}}
    big = {"model": "qwen25coder_15b", "best": {"prior": "echo"}, "stage2": {"chosen_overrides": {"scorer": "x"}},
           "test": {"chosen_test": run(0.6, 0.2), "chosen_stage2_test": run(0.7, 0.4), "minilm_test": run(0.5, 0.3),
                    "chosen_test_before": run(0.2, 0.1)}}
    text, data = table.table([smol, qwen, big])
    assert "| chosen on general dev, + its stage 2 | 10.0 | **60.0** | **35.0** |" in text  # columns sorted
    assert "| issue 26's choice (before the technique axes), stage 1 | 10.0 | 20.0 | 15.0 |" in text
    assert "Qwen2.5-Coder-1.5B's chosen pipeline beats MiniLM on every domain: **yes**" in text
    assert "Qwen2.5-Coder-1.5B's chosen stage 1 alone beats MiniLM on every domain: **no** (not on vera)" in text
    assert "SmolLM2-135M's chosen pipeline reaches 80% of MiniLM's domain mean: **yes** (87%: 35.0 vs 40.0)" in text
    assert "SmolLM2-135M's chosen stage 1 alone reaches 80% of MiniLM's domain mean: **no** (75%" in text
    assert "beats BM25 on every domain: **no** (not on vera)" in text
    assert "beats MiniLM on the domain mean: **yes** (60.0 vs 40.0)" in text
    assert "smollm2_135m: the chosen stage 2 raises the domain mean over its stage 1: **yes** (30.0 -> 35.0)" in text
    assert "qwen25coder_05b: the chosen stage 2 raises the domain mean over its stage 1: **no stage 2 was chosen" in text
    assert data["qwen25coder_05b"]["rows"]["chosen_stage2"]["none"] == 1.0
    table.figure(data, tmp_path / "by_size.png")
    assert (tmp_path / "by_size.png").stat().st_size > 10_000
