"""Per-model presets (issue 26): ``method=freeret_plus`` applies the loaded model's file in conf/presets/freeret_plus/,
else ``_general``; the command line wins over the file; the run records which file applied; a bad file is one line;
the pinned names compose as ``method=freeret_plus`` and ``method=freeret_plus_270m`` did before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from freeret import presets
from freeret.errors import ConfigError
from helpers import REPO, check_snapshot, compose, script

FOLDER = REPO / "conf/presets/freeret_plus"
SNAPSHOT = REPO / "tests/snapshots/presets.json"


def resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)


def without_record(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "preset"}


def _group(cfg: dict, key: str):
    """A composed config's value at a dotted key (a group's name for a group)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node["name"] if isinstance(node, dict) else node


@pytest.mark.parametrize("model, file", [("smollm2_135m", "smollm2_135m"), ("gemma3_270m", "gemma3_270m"),
                                         ("qwen25coder_05b", "qwen25coder_05b"), ("qwen25coder_15b", "qwen25coder_15b"),
                                         ("tiny_qwen2vl", "_general")])
def test_each_model_gets_its_own_file_else_the_general_one(model, file):
    """method=freeret_plus composes to exactly the file's settings (stage 1, and stage 2 where the file has one), and
    the run's record names the file, its sha256 and each override applied."""
    chosen = presets.PresetFile.load(FOLDER / f"{file}.yaml")
    cfg = resolved("method=freeret_plus", f"model={model}")
    assert cfg["model"]["name"] == model
    for key, value in [*chosen.stage1.items(), *(chosen.stage2 or {}).items()]:
        assert _group(cfg, key) == value, key
    assert cfg["pipeline"]["name"] == ("two_stage" if chosen.stage2 else "embed")
    assert presets.record(cfg) == {
        "name": "freeret_plus", "model": file, "file": f"conf/presets/freeret_plus/{file}.yaml",
        "sha256": chosen.sha256, "overridden": [], "applied": [presets._override(k, v) for k, v in chosen.settings()]}


def test_the_drivers_compose_with_the_preset_applied():
    """experiments/runs.py composes every driver's jobs (freeret/experiment.py's run_jobs): the same step as run.py."""
    runs = script("experiments/runs.py")
    cfg = runs.compose(["method=freeret_plus", "model=gemma3_270m"])
    gemma = presets.PresetFile.load(FOLDER / "gemma3_270m.yaml")
    assert cfg["preset"]["model"] == "gemma3_270m" and cfg["prior"]["name"] == gemma.stage1["prior"]
    assert "preset" not in runs.compose(["method=freeret_plus_270m", "model=gemma3_270m"])


def test_command_line_overrides_win_over_the_file():
    cfg = resolved("method=freeret_plus", "++expand.weight=0.5")  # SmolLM2's file sets 0.25 (issue 27); ++: the default
    # expand=none, which the first composition sees, has no weight
    assert cfg["expand"]["weight"] == 0.5 and cfg["preset"]["overridden"] == ["expand.weight"]
    assert resolved("method=freeret_plus", "model=gemma3_270m", "prior.demos.k=4")["prior"]["demos"]["k"] == 4
    # another prior drops the file's prior.* keys with it; the file's own prior keeps them
    other = resolved("method=freeret_plus", "model=gemma3_270m", "prior=e5v")
    assert other["prior"]["name"] == "e5v" and "demos" not in other["prior"]
    assert other["preset"]["overridden"] == ["prior", "prior.demos.k"] and other["postprocess"]["name"] == "abtt"
    same = resolved("method=freeret_plus", "model=gemma3_270m", "prior=fewshot")  # the file's own prior (few-shot)
    assert same["prior"]["demos"]["k"] == presets.PresetFile.load(FOLDER / "gemma3_270m.yaml").stage1["prior.demos.k"]
    assert same["preset"]["overridden"] == ["prior"]
    staged = resolved("method=freeret_plus", "pipeline=two_stage", "pipeline.top_k=7")
    assert staged["pipeline"]["name"] == "two_stage" and staged["pipeline"]["top_k"] == 7
    assert resolved("method=freeret_plus", "mode=fast")["preset"]["model"] == "_general"  # the model mode=fast loads


def test_the_pinned_names_are_the_settings_they_name_for_every_model():
    for model in ("smollm2_135m", "gemma3_270m", "tiny_qwen2vl"):
        v1 = resolved("method=freeret_plus_v1", f"model={model}")
        assert (v1["prior"]["name"], v1["prior"]["demos"]["k"], v1["postprocess"]["name"]) == ("fewshot", 0, "abtt")
        assert "preset" not in v1 and resolved("method=freeret_plus_270m", f"model={model}")["prior"]["demos"]["k"] == 1


def test_the_pinned_entries_of_the_config_snapshot_are_the_settings_chosen_before():
    """tests/snapshots/conf_resolved.json (checked by test_conf_resolved.py): method=freeret_plus_v1 is the RD dev
    search's choice on SmolLM2 (docs/results/smollm2_135m/stage1_search), freeret_plus_270m the same on Gemma; neither
    depends on a preset file."""
    snap = json.loads((REPO / "tests/snapshots/conf_resolved.json").read_text())
    for entry, model in (("method=freeret_plus_v1", "smollm2_135m"), ("method=freeret_plus_270m model=gemma3_270m",
                                                                       "gemma3_270m")):
        best = json.loads((REPO / f"docs/results/{model}/stage1_search/search.json").read_text())["best"]
        best = {"prior.demos.k": 1, **best}  # the few-shot default where the search kept it
        got = snap[entry]  # the keys that differ from the default config (python run.py)
        default = resolved()
        for key, value in best.items():
            flat = key if "." in key else f"{key}.name"
            assert (got[flat] if flat in got else _group(default, key)) == value, (entry, key)
        assert got.get("pipeline.name", "embed") == "embed" and not any(k.startswith("preset.") for k in got)


def test_the_shipped_files_are_valid_and_as_snapshotted():
    files = presets.check_all()
    assert sorted(f.model for f in files) == ["_general", "gemma3_270m", "qwen25coder_05b", "qwen25coder_15b",
                                              "smollm2_135m"]
    got = {str(f.path.relative_to(REPO)): {"stage1": f.stage1, "stage2": f.stage2, "provenance": f.provenance,
                                           "settings": [list(s) for s in f.settings()]} for f in files}
    check_snapshot(SNAPSHOT, got)
    driver = script("experiments/stage1_search.py")
    pins = driver.load_search(REPO / "experiments/general_search.yaml")["pins"]
    for f in files:  # each file names the search it came from, and that search chose this setting
        assert f.provenance["split"] == "dev" and (REPO / f.provenance["search"]).is_file()
        state = json.loads((REPO / f.provenance["search"]).read_text())
        assert driver.pinned(state["best"], pins) == f.stage1
        stage2 = (state.get("stage2") or {}).get("chosen_overrides")
        assert f.stage2 == (None if "--no-stage2" in f.provenance.get("note", "") else stage2)


def _write(root: Path, model: str, data: dict) -> Path:
    path = root / "freeret_plus" / f"{model}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


GOOD = yaml.safe_load((FOLDER / "_general.yaml").read_text())


@pytest.mark.parametrize("change, message", [
    ({"stage3": {}}, r"unknown key\(s\) stage3"),
    ({"stage1": {**GOOD["stage1"], "layr": "attn_last"}}, r"unknown stage1 key 'layr'"),
    ({"stage1": {k: v for k, v in GOOD["stage1"].items() if k != "pooling"}}, "missing pooling"),
    ({"stage1": {**GOOD["stage1"], "prior": "nope"}}, r"stage1.prior='nope': no conf/prior/nope.yaml"),
    ({"stage1": {**GOOD["stage1"], "expand": "nope"}}, r"stage1.expand='nope': no conf/expand/nope.yaml"),
    ({"stage1": {**GOOD["stage1"], "prior.demos": {"k": 1}}}, "must be a scalar"),
    ({"stage2": {"pipeline.top_k": 5}}, "stage2 must name its scorer"),
    ({"stage2": {"scorer": "query_likelihood", "pipeline.batch_size": 5}}, "unknown stage2 key 'pipeline.batch_size'"),
    ({"provenance": {**GOOD["provenance"], "split": "test"}}, "never on test"),
    ({"provenance": {**GOOD["provenance"], "by": "me"}}, r"unknown provenance key\(s\) by"),
    ({"provenance": {"split": "dev"}}, "must say search, date"),
    ({"model": "other"}, "must name its folder and file"),
])
def test_a_bad_preset_file_is_one_line_naming_it(tmp_path, change, message):
    _write(tmp_path, "_general", GOOD)
    path = _write(tmp_path, "gemma3_270m", {**GOOD, "model": "gemma3_270m", **change})
    with pytest.raises(ConfigError, match=message) as err:
        presets.choose("freeret_plus", "gemma3_270m", tmp_path)
    assert str(err.value).startswith(f"preset file {path}: ") and "\n" not in str(err.value)
    presets.choose("freeret_plus", "smollm2_135m", tmp_path)  # another model's file is not read
    (tmp_path / "freeret_plus" / "gemma3_270m.yaml").write_text("stage1: [")
    with pytest.raises(ConfigError, match="cannot read it"):
        presets.choose("freeret_plus", "gemma3_270m", tmp_path)
    _write(tmp_path, "gemma3_270M", {**GOOD, "model": "gemma3_270M"})  # a file no model's name matches
    with pytest.raises(ConfigError, match=r"no conf/model/gemma3_270M.yaml"):
        presets.check_all(tmp_path)


def test_a_preset_with_a_stage2_block_runs_two_stage(tmp_path):
    """A key only the file's choice has (two_stage's top_k; the start, freeret_plus_v1, embeds only) is given with
    ``++`` on the command line: the first composition, before the model is known, composes against the start."""
    _write(tmp_path, "_general", {**GOOD, "stage2": {"scorer": "candidate_likelihood", "scorer.cpn_lambda": 0.5,
                                                     "pipeline.top_k": 10, "pipeline.fusion": "weighted",
                                                     "pipeline.fusion_weight": 0.25}})
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = presets.resolve(lambda o: hydra_compose(config_name="config", overrides=o),
                              ["method=freeret_plus", "model=tiny_qwen2vl", "++pipeline.top_k=3"], root=tmp_path)
    cfg = OmegaConf.to_container(cfg, resolve=True)
    assert cfg["pipeline"]["name"] == "two_stage" and cfg["scorer"]["name"] == "candidate_likelihood"
    assert cfg["scorer"]["cpn_lambda"] == 0.5 and cfg["pipeline"]["fusion"] == "weighted"
    assert cfg["pipeline"]["fusion_weight"] == 0.25 and cfg["pipeline"]["top_k"] == 3  # the command line's
    assert cfg["preset"]["overridden"] == ["pipeline.top_k"]


def test_a_run_records_the_preset_it_applied(tmp_path):
    from freeret.benchmark import run_all
    from freeret.run.report import summary_line

    base = ["method=freeret_plus", "model=tiny_qwen2vl", "dataset=wordnet_rd_dev", "benchmark.limit=2",
            "dataset.pool=positives", "logger=none", "trainer.enable_progress_bar=false",
            f"embed.cache_dir={tmp_path / 'cache'}"]
    (result,) = run_all({**resolved(*base), "run_dir": str(tmp_path / "run")})
    written = json.loads((tmp_path / "run/results/wordnet_rd_dev.json").read_text())
    assert written["preset"] == presets.record(resolved(*base)) and written["preset"]["model"] == "_general"
    assert written["prior_detail"]["demos"]["k"] == 0 and written["postprocess"]["label"] == "abtt(d=1)"
    assert "| preset=freeret_plus/_general |" in summary_line(result)


def test_a_config_composed_without_the_preset_step_is_refused():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from freeret.run.plan import check

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        raw = OmegaConf.to_container(hydra_compose(config_name="config", overrides=["method=freeret_plus"]), resolve=True)
    with pytest.raises(ConfigError, match="picks its setting per model when the config is composed"):
        check(raw)
    assert check(resolved("method=freeret_plus")).prior.name == presets.PresetFile.load(
        FOLDER / "smollm2_135m.yaml").stage1["prior"]


def test_run_py_applies_the_preset_and_rewrites_the_job_config(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    run = script("run.py")
    overrides = ["method=freeret_plus", "model=gemma3_270m", "prior.demos.k=2"]
    hydra_cfg = OmegaConf.create({"overrides": {"task": overrides}, "output_subdir": ".hydra",
                                  "runtime": {"output_dir": str(tmp_path)}})
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        first = hydra_compose(config_name="config", overrides=overrides)  # what Hydra hands run.py's main
        cfg = run.with_preset(first, hydra_cfg)
        paper = hydra_compose(config_name="config", overrides=["method=freeret"])
        assert run.with_preset(paper, OmegaConf.create({"overrides": {"task": ["method=freeret"]}})) is paper
    assert first.prior.demos.k == 2 and "file" in first.preset and first.preset.file is None
    assert cfg.preset.model == "gemma3_270m" and cfg.prior.demos.k == 2 and list(cfg.preset.overridden) == ["prior.demos.k"]
    assert OmegaConf.load(tmp_path / ".hydra/config.yaml").preset.file == "conf/presets/freeret_plus/gemma3_270m.yaml"


def test_the_search_writes_a_preset_file_that_applies(tmp_path):
    """The shipped Gemma file is what --write-preset writes from its recorded general-suite search (stage 1 with the
    spec's pins, stage 2, provenance); written into another root it applies as the shipped one does."""
    driver = script("experiments/stage1_search.py")
    out = REPO / "docs/results/gemma3_270m/general_search"
    spec = REPO / "experiments/general_search.yaml"
    state = json.loads((out / "search.json").read_text())
    shipped = presets.PresetFile.load(FOLDER / "gemma3_270m.yaml")
    path = driver.write_preset(state, out, root=tmp_path, date=shipped.provenance["date"], spec_path=spec)
    written = presets.PresetFile.load(path)
    assert path == tmp_path / "freeret_plus/gemma3_270m.yaml"
    assert (written.stage1, written.stage2, written.provenance) == (shipped.stage1, shipped.stage2, shipped.provenance)
    assert written.stage1["prior.demos.k"] == 0 and written.stage2["scorer"] == "bidirectional"
    assert written.provenance["search"] == "docs/results/gemma3_270m/general_search/search.json"
    general = presets.PresetFile.load(driver.write_preset(state, out, "_general", root=tmp_path, spec_path=spec,
                                                          stage2=False))
    assert general.stage2 is None and "stage 1 only" in general.provenance["note"]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = presets.resolve(lambda o: hydra_compose(config_name="config", overrides=o),
                              ["method=freeret_plus", "model=gemma3_270m"], root=tmp_path)
    cfg = OmegaConf.to_container(cfg, resolve=True)
    assert without_record(cfg) == without_record(resolved("method=freeret_plus", "model=gemma3_270m"))
    with pytest.raises(ConfigError, match="unknown stage1 key 'embed.batch_size'"):  # checked before it is written
        driver.write_preset({**state, "best": {**state["best"], "embed.batch_size": 4}}, out, "tiny_qwen2vl",
                            root=tmp_path, spec_path=spec)
    assert not (tmp_path / "freeret_plus/tiny_qwen2vl.yaml").exists()


@pytest.mark.parametrize("value", ["fewshot", "conf/presets/a.yaml", "0", "1e5", "123e4567", "true", "null", "a b",
                                   "it's", "k=1", "++prior.demos.k=0", 3, 0.25, True, None, ["a=b", "c"]])
def test_override_values_read_back_as_written(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"key={presets.override_value(value)}")
    assert parsed.value() == value


def test_a_preset_may_name_the_technique_groups_it_chose(tmp_path):
    """Issue 27's optional stage-1 groups (``prepend``, ``expand`` and their keys) are allowed, not required."""
    _write(tmp_path, "_general", GOOD)
    stage1 = {**GOOD["stage1"], "expand": "hyde", "expand.weight": 0.25, "prepend": "tp"}
    _write(tmp_path, "gemma3_270m", {**GOOD, "model": "gemma3_270m", "stage1": stage1})
    chosen = presets.choose("freeret_plus", "gemma3_270m", tmp_path)
    assert chosen.stage1["expand"] == "hyde" and chosen.stage1["prepend"] == "tp"
