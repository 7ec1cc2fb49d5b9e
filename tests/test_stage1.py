"""Stage-1 axes end to end (issue 15): every option composes, the axes run in fast mode, post-processing and
retriever choices re-score stored vectors, BM25 alone embeds nothing, and the search driver's bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from freeret.benchmark import run_all
from freeret.data.datasets import load_dataset
from freeret.embed.layers import Readout
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.eval.metrics import retrieval_metrics
from freeret.retrieve.fusion import RetrieverSpec
from freeret.retrieve.lexical import bm25_scores
from freeret.retrieve.postprocess import PostprocessSpec, Statistics
from helpers import REPO, compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["pooling", "prepend", "postprocess", "retriever", "layer", "prior"])
def test_every_stage1_option_composes_and_builds(group):
    for option in options(group):
        cfg = OmegaConf.to_container(compose([f"{group}={option}"]), resolve=True)
        Readout.from_config(cfg["layer"], cfg["pooling"], cfg["prepend"]).resolve(30)
        PostprocessSpec.from_dict(cfg["postprocess"])
        RetrieverSpec.from_dict(cfg["retriever"])
        Prior.from_dict(cfg["prior"])


def _cfg(tmp_path: Path, *overrides: str) -> dict:
    base = ["dataset=wordnet_rd_dev", "mode=fast", "benchmark.limit=4", "dataset.pool=positives", "logger=none",
            "trainer.enable_progress_bar=false", f"embed.cache_dir={tmp_path / 'cache'}"]
    return {**OmegaConf.to_container(compose([*base, *overrides]), resolve=True), "run_dir": str(tmp_path / "run")}


def test_stage1_axes_run_in_fast_mode_and_rescore_stored_vectors(tmp_path):
    (first,) = _payloads(run_all(_cfg(tmp_path, "pooling=mean", "layer=attn_late_avg", "postprocess=abtt", "retriever=hybrid")))
    assert first["timing"]["embed_items_computed"] == 8  # 4 queries + their 4 positives
    assert first["pooling"]["name"] == "mean" and [p["index"] for p in first["layer"]["points"]] == [2, 2, 3]
    assert first["postprocess"]["label"] == "abtt(d=1)" and first["postprocess"]["fitted_on"] == {"all": 8}
    assert first["retriever"]["label"] == "hybrid(rrf, k=60)"
    stats = list(Path(first["timing"]["embed_store"]).rglob("postprocess-*.safetensors"))
    assert [p.name for p in stats] == [f"postprocess-{first['postprocess']['statistics_sha256'][:16]}.safetensors"]
    # another post-processing and fusion on the same vectors: nothing is embedded again
    (again,) = _payloads(run_all(_cfg(tmp_path, "pooling=mean", "layer=attn_late_avg", "postprocess=lmhead_filter",
                            "retriever=hybrid", "retriever.fusion=weighted")))
    assert again["timing"]["embed_items_computed"] == 0 and again["timing"]["embed_store"] == first["timing"]["embed_store"]
    assert again["postprocess"]["statistics_sha256"] != first["postprocess"]["statistics_sha256"]
    assert stats[0].exists() and again["timing"]["embed_shards_dropped"] == 0  # the store does not take them for shards
    # few-shot prior, last-k pooling, statistics fitted per role on an unlabeled corpus embedded beside the set
    (fewshot,) = _payloads(run_all(_cfg(tmp_path, "prior=fewshot", "pooling=last_k", "postprocess=center",
                              "postprocess.fit_on=corpus", "+dataset@postprocess.corpus=wordnet_dev/ret_def2lemma",
                              "postprocess.corpus.limit=3", "postprocess.corpus.pool=positives")))
    assert fewshot["prior_detail"]["demos"]["set"] == "wordnet_rd" and fewshot["prior_detail"]["demos"]["k"] == 1
    assert fewshot["postprocess"]["corpus"] == "wordnet_ret_def2lemma_dev"
    assert fewshot["postprocess"]["fitted_on"] == {"all": 6}  # the corpus's 3 queries + 3 positives, not the set's
    assert fewshot["timing"]["embed_items_computed"] == 14


def _payloads(results):
    """Result files as the JSON mappings they are written as."""
    return [r.to_dict() for r in results]


def test_bm25_alone_embeds_nothing_and_scores_as_bm25s_does(tmp_path):
    (payload,) = _payloads(run_all(_cfg(tmp_path, "retriever=bm25", "benchmark.limit=30")))
    assert "embed_items_computed" not in payload["timing"] and not (tmp_path / "cache").exists()
    assert payload["retriever"]["name"] == "bm25" and payload.get("postprocess") is None
    rset = load_dataset({**compose(["dataset=wordnet_rd_dev"]).dataset, "limit": 30, "pool": "positives"})
    scores = bm25_scores(rset.rows, rset.items, RetrieverSpec.from_dict(compose(["retriever=bm25"]).retriever).bm25)
    want = retrieval_metrics(scores, [1] * len(scores))
    assert payload["metrics"]["embed"] == pytest.approx(want)
    assert payload["main_score"] > 1 / 30  # definitions share stems with some of their words


def test_bad_stage1_values_stop_before_weights_load(tmp_path):
    for override, match in [("postprocess.d=-1", "postprocess.d"), ("++retriever.weight=3", "retriever.weight"),
                            ("pooling.name=max", "pooling.name"), ("layer.index=1.5", "relative depth")]:
        cfg = _cfg(tmp_path, "postprocess=abtt" if override.startswith("postprocess") else "retriever=dense", override)
        with pytest.raises(ConfigError, match=match):
            run_all(cfg)


def test_statistics_file_round_trips(tmp_path):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    from freeret.retrieve.postprocess import fit

    stats = fit(PostprocessSpec(name="abtt", d=2), {"all": x})
    back = Statistics.load(stats.spec, stats.save(tmp_path))
    assert torch.allclose(back.apply(x, "query"), stats.apply(x, "query"))


def test_search_driver_bookkeeping(tmp_path):
    """Overrides from the best setting, group choices dropping their old keys, `when`, and job records."""
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    import stage1_search as driver

    best = {"prior": "fewshot", "prior.demos.k": 4, "postprocess": "abtt", "postprocess.d": 8}
    assert driver.overrides(best, {"postprocess": ["center", "whiten"]}) == [
        "prior=fewshot", "++prior.demos.k=4", "postprocess=center,whiten", "++postprocess.d=8"]
    assert driver.set_choice(best, "postprocess", "whiten") == {"prior": "fewshot", "prior.demos.k": 4,
                                                               "postprocess": "whiten"}
    assert driver.matches(best, {"postprocess": ["center", "abtt"]}) and not driver.matches(best, {"prior": "e5v"})
    job = tmp_path / "sweep" / "0"
    (job / "results").mkdir(parents=True)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text("- prior=e5v\n- ++postprocess.d=2\n")
    for name, score in [("wordnet_rd_dev", 0.2), ("wordnet_qa_blank_dev", 0.5), ("wordnet_cls_lexname_dev", 0.3)]:
        (job / "results" / f"{name}.json").write_text(json.dumps(
            {"dataset": name, "main_score": score, "timing": {"wall_seconds": 2.0, "embed_seconds": 1.0}}))
    (record,) = driver.job_records(tmp_path / "sweep")
    assert record["rd"] == 0.2 and record["meta"] == pytest.approx(0.4) and record["objective"] == pytest.approx(0.3)
    assert record["wall_s"] == 6.0
    assert driver.parse_overrides(record["overrides"], {"prior", "postprocess.d"}) == {"prior": "e5v", "postprocess.d": 2}


def test_search_report_names_the_split_and_marks_the_choice(tmp_path):
    """The report keeps each job's scores and wall time, marks the chosen setting and names the split of each row."""
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    import stage1_search as driver

    job = {"setting": {"prior": "e5v"}, "scores": {"wordnet_rd_dev": 0.25}, "rd": 0.25, "meta": None,
           "objective": 0.25, "wall_s": 3.0, "embed_s": 1.0, "overrides": ["prior=e5v"]}
    other = {**job, "setting": {"prior": "freeret"}, "rd": 0.1, "objective": 0.1}
    final = {"setting": {"prior": "e5v"}, "wall_s": 9.0, "jobs": [{**job, "rd": 0.2}]}
    state = {"model": "m", "objective": "o", "best": {"prior": "e5v"}, "best_objective": 0.25,
             "axes": {"prior": {"sweep": {"prior": ["e5v", "freeret"]}, "from": {"prior": "freeret"}, "wall_s": 5.0,
                                "jobs": [other, job], "chosen": {"prior": "e5v"}}},
             "test": {"chosen_test": final, "bm25_dev": final}}
    text = driver.report(state, tmp_path)
    assert "| prior=e5v **(chosen)** | 25.0 | - | 25.0 | 3 |" in text and "| prior=freeret | 10.0 |" in text
    assert "| chosen | test | 20.0 | - | 9 |" in text and "| bm25 | dev | 20.0 |" in text
    saved = json.loads((tmp_path / "search.json").read_text())
    assert "overrides" not in saved["axes"]["prior"]["jobs"][0] and (tmp_path / "final.png").exists()


def test_search_compare_puts_models_side_by_side():
    """--compare: one row per swept value, a column per model, bold where a value became the model's best."""
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    import stage1_search as driver

    def state(model, scores, chosen):
        jobs = [{"setting": {"prior": p}, "objective": v} for p, v in scores.items()]
        return {"model": model, "best": {"prior": chosen}, "best_objective": scores[chosen],
                "axes": {"prior": {"sweep": {"prior": list(scores)}, "jobs": jobs, "chosen": {"prior": chosen}}}}

    text = driver.compare([state("a", {"e5v": 0.3, "fewshot": 0.2}, "e5v"), state("b", {"fewshot": 0.5}, "fewshot")])
    assert "| prior | prior=e5v | **30.0** | - |" in text and "| prior | prior=fewshot | 20.0 | **50.0** |" in text
    assert "| a | `prior=e5v` | 30.0 |" in text


@pytest.mark.parametrize("preset, model", [("freeret_plus", "smollm2_135m"), ("freeret_plus", "gemma3_270m"),
                                           ("freeret_plus", "qwen25coder_05b"), ("freeret_plus", "qwen25coder_15b"),
                                           ("freeret_plus_v1", "smollm2_135m"), ("freeret_plus_270m", "gemma3_270m")])
def test_freeret_plus_is_the_setting_chosen_on_dev(preset, model):
    """method=freeret_plus on each model composes to exactly what that model's recorded dev search chose (the search
    file its preset names: stage 1 with the spec's pins, and its stage 2), and the pinned names of the earlier choices
    to what the RD dev search chose (config is data); a key a search never moved keeps the search's start (e.g. the
    few-shot prior's default k)."""
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    import stage1_search as driver

    from freeret.presets import PresetFile

    if preset == "freeret_plus":
        provenance = PresetFile.load(REPO / f"conf/presets/freeret_plus/{model}.yaml").provenance
        state = json.loads((REPO / provenance["search"]).read_text())
        spec = driver.load_search(REPO / "experiments/general_search.yaml")
        best = driver.pinned(state["best"], spec.get("pins", []))
        stage2 = (state.get("stage2") or {}).get("chosen_overrides") or {}
    else:
        state = json.loads((REPO / f"docs/results/{model}/stage1_search/search.json").read_text())
        best, stage2 = state["best"], {}
    cfg = OmegaConf.to_container(compose([f"method={preset}", f"model={model}"]), resolve=True)
    if best.get("prior") == "fewshot":
        best = {"prior.demos.k": OmegaConf.load(REPO / "conf/prior/fewshot.yaml").demos.k, **best}
    best = {**best, **stage2}
    for key, value in best.items():
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        leaf = key.split(".")[-1]
        got = node[leaf]["name"] if isinstance(node[leaf], dict) else node[leaf]
        assert got == value, key
    assert cfg["pipeline"]["name"] == ("two_stage" if stage2 else "embed")
    paper = OmegaConf.to_container(compose([]), resolve=True)  # the default stays the paper's method
    assert (paper["prior"]["name"], paper["layer"]["name"], paper["pooling"]["name"], paper["postprocess"]["name"],
            paper["retriever"]["name"]) == ("freeret", "attn_last", "last", "none", "dense")


def test_a_search_started_from_another_scores_its_start_first_and_stage2_reruns_when_stage1_moves(tmp_path, monkeypatch):
    """``--start-from``: the state starts at the other search's choice; the empty-sweep axis runs exactly that setting
    once (and is skipped in a search that already has a best score); the stage-2 run gets a fresh folder only when
    the stage-1 setting it would run on is not the one its folder holds (issue 27)."""
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    import stage1_search as driver
    import stage2_search

    ran: list[list[str]] = []

    def fake_sweep(model, args, sweep_dir, extra, launcher=None):
        ran.append(args)
        job = sweep_dir / "0"
        (job / "results").mkdir(parents=True)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {a}\n" for a in args))
        (job / "results" / "d.json").write_text(json.dumps(
            {"dataset": "d", "main_score": 0.25, "timing": {"wall_seconds": 1.0}}))
        return 1.0

    monkeypatch.setattr(driver, "run_sweep", fake_sweep)
    spec = tmp_path / "spec.yaml"
    spec.write_text("search:\n  objective: mean\n  start: {prior: freeret}\n"
                    "  axes:\n    - {name: baseline, sweep: {}}\n"
                    "    - {name: lexical, unless: [{expand: hyde}, {prior: fewshot}], sweep: {prior: [e5v]}}\n")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model": "small", "best": {"prior": "fewshot", "postprocess": "abtt"}}))
    state = driver.search("big", tmp_path / "big", None, [], spec, start_from=other)
    assert ran == [["prior=fewshot", "postprocess=abtt"]]
    assert state["best"] == {"prior": "fewshot", "postprocess": "abtt"} and state["best_objective"] == 0.25
    assert "small" in state["started_from"]
    assert state["axes"]["lexical"] == {"skipped": "best setting matches {'prior': 'fewshot'}"}  # `unless`
    on_disk = json.loads((tmp_path / "big" / "search.json").read_text())
    assert on_disk["axes"]["lexical"] == state["axes"]["lexical"]  # a skip as the last axis is saved too
    again = driver.search("small", tmp_path / "scored", None, [], spec)  # starts at the spec's start: scored once
    assert again["axes"]["baseline"]["chosen"] == {"prior": "freeret"}
    state_file = tmp_path / "scored" / "search.json"
    scored = json.loads(state_file.read_text())
    del scored["axes"]["baseline"]
    state_file.write_text(json.dumps(scored))
    assert "skipped" in driver.search("small", tmp_path / "scored", None, [], spec)["axes"]["baseline"]
    with pytest.raises(ConfigError, match="not a file"):
        driver.search("big", tmp_path / "none", None, [], spec, start_from=tmp_path / "missing.json")

    out = tmp_path / "s2"
    first = ["prior=fewshot", "scorer=bidirectional"]
    assert stage2_search.run_folder(out, first) == out / "stage2_run"
    fake_sweep("big", first, out / "stage2_run", [])
    assert stage2_search.run_folder(out, first) == out / "stage2_run"
    moved = stage2_search.run_folder(out, ["prior=echo", "scorer=bidirectional"])
    assert moved.name.startswith("stage2_run_") and moved != out / "stage2_run"

    def row(k: int, mean: float) -> dict:
        return {"label": f"BLiM K={k}", "mean": mean, "scores": {"d": mean},
                "setting": {"scorer": "bidirectional", "top_k": k, "fusion": "rerank",
                                                                    "fusion_weight": 0.5, "cpn_lambda": 0.5, "weight": 0.75}}

    source = tmp_path / "small_s2.json"
    source.write_text(json.dumps({"model": "small", "stage2": {"stage1": {"mean": 0.5},
                                                                "settings": [row(10, 0.7), row(5, 0.6), row(3, 0.55)]}}))
    s2 = stage2_search.transfer(tmp_path / "big", source, max_k=5)["stage2"]  # the best with K <= 5, not K=10's
    assert s2["chosen"]["top_k"] == 5 and s2["chosen_overrides"]["pipeline.top_k"] == 5 and s2["source_model"] == "small"
    assert "transferred, not searched" in driver.stage2_report(json.loads((tmp_path / "big" / "search.json").read_text()))

    big = json.loads((tmp_path / "big" / "search.json").read_text())  # --keep-previous: an earlier stage 1's choice
    big["stage2"] = {"settings": [row(5, 0.6)], "chosen": row(5, 0.6)["setting"], "objective": 0.6,
                     "stage1": {"mean": 0.5, "scores": {"d": 0.5}}, "run": {"pipeline.top_k": 10},
                     "chosen_overrides": {"scorer": "bidirectional", "pipeline.top_k": 5}}
    (tmp_path / "big" / "search.json").write_text(json.dumps(big))
    fake_sweep("big", ["prior=freeret", "scorer=bidirectional", "suite=general_dev"], tmp_path / "big" / "stage2_run", [])
    kept = stage2_search.keep_previous(tmp_path / "big")
    assert kept["stage2"]["searched_on"] == ["prior=freeret", "scorer=bidirectional"]
    assert kept["stage2"]["kept_for"] == kept["best"]
    assert "Searched with an earlier stage 1 (prior=freeret scorer=bidirectional)" in driver.stage2_report(kept)


def test_a_moved_choice_runs_once_more_on_test_and_keeps_the_earlier_run(tmp_path, monkeypatch):
    """``--test`` after a later axis changed the choice: the earlier choice's test run becomes ``<tag>_before`` (kept
    for the table), the new choice runs once, the unchanged baselines do not rerun."""
    import sys

    sys.path.insert(0, str(REPO / "experiments"))
    import stage1_search as driver

    ran: list[str] = []

    def fake_sweep(model, args, sweep_dir, extra, launcher=None):
        ran.append(sweep_dir.name)
        (sweep_dir / "0" / "results").mkdir(parents=True)
        (sweep_dir / "0" / ".hydra").mkdir()
        (sweep_dir / "0" / ".hydra" / "overrides.yaml").write_text("".join(f"- {a}\n" for a in args))
        (sweep_dir / "0" / "results" / "d.json").write_text(json.dumps(
            {"dataset": "d", "main_score": 0.5, "timing": {"wall_seconds": 1.0}}))
        return 1.0

    monkeypatch.setattr(driver, "run_sweep", fake_sweep)
    spec = tmp_path / "spec.yaml"
    spec.write_text("search:\n  objective: mean\n  start: {prior: freeret}\n  axes: []\n"
                    "  baselines: {bm25: {retriever: bm25}}\n")
    out = tmp_path / "s"
    out.mkdir()
    (out / "search.json").write_text(json.dumps({"model": "m", "best": {"prior": "fewshot"}, "axes": {}}))
    driver.test("m", out, [], spec, ("x_test",), only=["bm25"])  # --only: the baseline alone
    assert ran == ["bm25_test"]
    with pytest.raises(ConfigError, match="--only e5v: not a run of this search"):
        driver.test("m", out, [], spec, ("x_test",), only=["e5v"])
    driver.test("m", out, [], spec, ("x_test",))
    assert ran == ["bm25_test", "chosen_test"]
    state = json.loads((out / "search.json").read_text())
    state["best"] = {"prior": "echo"}
    (out / "search.json").write_text(json.dumps(state))
    state = driver.test("m", out, [], spec, ("x_test",))
    assert ran[2:] == ["chosen_test"]  # the unchanged baseline does not rerun
    assert state["test"]["chosen_test_before"]["setting"] == {"prior": "fewshot"}
    assert state["test"]["chosen_test"]["setting"] == {"prior": "echo"}
    assert (out / "final" / "chosen_test_before" / "0" / "results").is_dir()


def test_the_techniques_report_compares_each_job_with_its_start():
    """experiments/techniques_report.py: a job is found by its setting, labelled by what it changed, and tabled
    against its axis's start (Δ, cost ratios), skipped axes named (issue 27)."""
    from helpers import script

    rep = script("experiments/techniques_report.py")
    start = {"prior": "fewshot", "pooling": "last"}
    state = {"axes": {"prior": {"jobs": [{"setting": start, "objective": 0.4}]}}}
    assert rep.job_folder(state, start)[1]["objective"] == 0.4 and rep.job_folder(state, {"prior": "x"}) is None
    assert rep.label({**start, "prior": "echo_eol", "expand": "hyde"}, start) == "prior=echo_eol, expand=hyde"
    cost = {"query_forwards": 1.0, "target_forwards": 1.0, "query_tokens": 50.0, "target_tokens": 40.0,
            "query_generated": 0.0}
    job = {"label": "prior=metaeol", "setting": {}, "mean": 0.45, "scores": {"a": 0.5, "b": 0.4}, "chosen": True,
           "cost": {**cost, "query_forwards": 4.0, "target_forwards": 4.0, "query_tokens": 150.0, "target_tokens": 160.0}}
    text = rep.table([{"model": "m", "best": start, "axes": {
        "ensemble": {"what": "prompt ensemble", "start": {"mean": 0.4, "scores": {"a": 0.3, "b": 0.5}, "cost": cost},
                     "jobs": [job]},
        "promptreps": {"what": "PromptReps", "skipped": "best setting matches {'expand': 'hyde'}"}}}])
    assert "| prompt ensemble | without (the start) | 30.0 | 50.0 | 40.0 | | 1.0 / 1.0 | 50 / 40 tokens | 0.0 |" in text
    assert "| | prior=metaeol (chosen) | 50.0 | 40.0 | 45.0 | +5.0 | 4.0 / 4.0 | 3.00x / 4.00x | 0.0 |" in text
    assert "- skipped: PromptReps: best setting matches {'expand': 'hyde'}" in text
