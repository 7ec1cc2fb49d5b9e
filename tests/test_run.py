"""End to end through run.py: tiny VLMs on the image smoke set, the real SmolLM2 on a WordNet slice,
the sweep, and the one-line errors; plus every config group composing and instantiating."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from freeret.backbone import ModelSpec
from freeret.data.datasets import load_dataset
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.eval.loggers import make_logger
from freeret.eval.results import RunResult
from freeret.rerank.framing import Framing
from freeret.rerank.stage import RerankConfig
from freeret.toy.models import TINY_FAMILIES
from helpers import QUIET, REPO, compose, results, run_py, run_py_process


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "layer", "prior", "dataset", "pipeline", "framing", "rerank", "trainer", "logger", "paths"])
def test_every_config_group_composes_and_instantiates(group, tmp_path):
    for option in options(group):
        cfg = compose([f"{group}={option}"])
        if group == "rerank":  # presets are global (no key of their own): they set the framing and stage-2 keys
            preset = OmegaConf.load(REPO / "conf" / "rerank" / f"{option}.yaml")
            framing = next((d["override /framing"] for d in preset.get("defaults") or [] if "override /framing" in d),
                           compose().framing.name)
            assert cfg.framing.name == framing, option
            assert all(cfg.pipeline[k] == v for k, v in (preset.get("pipeline") or {}).items()), option
        else:
            assert cfg[group] is not None
        ModelSpec.from_dict(cfg.model)
        LayerSpec.from_dict(cfg.layer)
        Prior.from_dict(cfg.prior)
        Framing.from_dict(cfg.framing)
        RerankConfig.from_dict(cfg.pipeline)
        if group == "dataset" and option == "local":
            with pytest.raises(ConfigError, match="dataset.path"):
                load_dataset(cfg.dataset)
        elif group == "dataset":
            assert load_dataset(cfg.dataset).rows
        if group == "logger":
            make_logger(cfg.logger, tmp_path)


def test_model_configs_cover_the_paper_families():
    models = set(options("model"))
    assert {"smollm2_135m", "gemma3_270m", "qwen2vl_2b", "qwen2vl_7b", "qwen25vl_3b", "qwen25vl_7b", "qwen25vl_32b",
            "internvl3_2b", "internvl3_8b", "llava_ov_7b", "smolvlm_256m", "smolvlm_500m"} <= models
    for family in TINY_FAMILIES:
        assert any(ModelSpec.from_dict(compose([f"model={m}"]).model).family == family for m in models if m.startswith("tiny_"))


@pytest.mark.parametrize("model", ["tiny_qwen2vl", "tiny_qwen25vl", "tiny_idefics3", "tiny_llava_ov", "tiny_internvl"])
def test_tiny_vlm_end_to_end_on_images(model, tmp_path):
    proc = run_py([f"model={model}", "dataset=smoke_mm", *QUIET], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path, "smoke_mm")
    assert res.counts.num_queries == 16 and res.counts.candidates_per_query == 8
    assert res.main_score == pytest.approx(hit_at_1_from_the_store(res), abs=1e-9)
    assert res.model["family"] == compose([f"model={model}"]).model.family
    assert f"smoke_mm: embed hit@1={res.main_score:.4f}" in proc.stdout


def hit_at_1_from_the_store(res: RunResult) -> float:
    """hit@1 recomputed by hand from the vectors the run stored: each item's key from its rendered prompt, cosine in
    fp32, a tie counted against the positive. Catches a metric, scoring, keying or storage bug in the run."""
    from freeret.backbone import load_backbone
    from freeret.data.datamodule import PromptCollator
    from freeret.prompts import DatasetPrompt
    from freeret.retrieve.shards import read_shards
    from freeret.signatures import item_cache_key

    cfg = res.config
    prior = Prior.from_dict(cfg["prior"]).for_dataset(DatasetPrompt.from_config(cfg["dataset"]))
    collate = PromptCollator(load_backbone(ModelSpec.from_dict(cfg["model"])), prior)
    stored = read_shards(Path(res.timing["embed_store"]))
    rset = load_dataset(cfg["dataset"])
    vec = {k: torch.nn.functional.normalize(stored[item_cache_key(it, collate.prompt(it))].float(), dim=-1)
           for k, it in rset.items.items()}
    hits = [all(vec[r.query] @ vec[r.candidates[0]] > vec[r.query] @ vec[c] for c in r.candidates[1:]) for r in rset.rows]
    return sum(hits) / len(hits)


def test_real_smollm2_wordnet_slice_beats_chance(tmp_path):
    proc = run_py(["dataset.limit=100", "dataset.pool=positives", *QUIET], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path, "wordnet_rd")
    assert res.counts.candidates_per_query == 100  # chance hit@1 = 0.01
    assert res.main_score >= 0.05
    for key in ("revision", "dtype", "attn_implementation"):
        assert res.model[key]
    assert res.environment["packages"]["transformers"]
    assert res.layer.label == "attn_last" and res.prior == "freeret"


def test_sweep_grid_fast(tmp_path):
    """The README's sweep (-m layer=... prior=...) with the joblib launcher, on a tiny model."""
    sweep = tmp_path / "sweep"
    proc = run_py_process(["-m", "layer=attn_last,mlp_last", "prior=e5v,freeret", "model=tiny_qwen2vl", "dataset=smoke_mm",
                           *QUIET], sweep)  # the real process: Hydra's sweeper and the joblib launcher
    assert proc.returncode == 0, proc.stderr[-3000:]
    combos = {(r.layer.label, r.prior) for r in map(RunResult.read, sweep.glob("*/results/smoke_mm.json"))}
    assert combos == {("attn_last", "e5v"), ("attn_last", "freeret"), ("mlp_last", "e5v"), ("mlp_last", "freeret")}


ONE_LINE_ERRORS = [
    (["model=qwen2vl_7b", "prior=caption"], "Qwen/Qwen2-VL-7B-Instruct"),
    (["model=qwen2vl_7b", "model.path=/nonexistent/ckpt"], "model.path=/nonexistent/ckpt"),
    (["model=tiny_qwen2vl", "layer.index=-9"], "layer.index=-9 is out of range"),
    (["dataset=local", "dataset.path=/nonexistent.jsonl"], "does not exist"),
    (["+dataset.prompt.query_knd=definition"], "dataset wordnet_rd: prompt.query_knd is not a prompt fact"),
]


@pytest.mark.parametrize("args, expected", ONE_LINE_ERRORS)
def test_errors_are_one_line(args, expected, tmp_path):
    """An error raised inside the run is one line and exit code 2; the first case in a real process (all it prints)."""
    runner = run_py_process if args == ONE_LINE_ERRORS[0][0] else run_py
    proc = runner([*args, *QUIET], tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr


def test_lightning_product_tips_are_not_printed(caplog, capfd):
    """A run prints what is about the run: Lightning's litlogger / litmodels adverts are dropped (issue 13) by the
    filter every entry point installs."""
    import logging

    from freeret.cli import quiet_lightning
    from freeret.lit import make_trainer

    quiet_lightning()
    with caplog.at_level(logging.INFO):
        make_trainer({"trainer": {"accelerator": "cpu", "enable_progress_bar": False}})
    printed = caplog.text + "".join(capfd.readouterr())
    assert "GPU available" in printed  # Lightning's own report still shows (the capture works)
    assert "litlogger" not in printed and "Tip:" not in printed
