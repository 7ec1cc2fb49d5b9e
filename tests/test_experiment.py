"""The experiments' one runner (freeret/experiment.py, experiments/runs.py): a plan's jobs run in this process on one
loaded model, resume, and go to ``run.py -m`` through Hydra's launcher with the same overrides and folders."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from helpers import QUIET, REPO, run_main, script, sweep_jobs

sys.path.insert(0, str(REPO / "experiments"))
import runs  # noqa: E402

import freeret.run.inputs as inputs  # noqa: E402
from freeret.eval.tables import load_results  # noqa: E402
from freeret.experiment import Models, launcher_command  # noqa: E402


def test_a_sweep_runs_in_process_on_one_loaded_model_and_resumes(tmp_path, monkeypatch):
    loads = []
    real = inputs.load_backbone
    monkeypatch.setattr(inputs, "load_backbone", lambda *a, **k: loads.append(a[0].name) or real(*a, **k))
    sweep = ["model=tiny_qwen2vl", "dataset=smoke_mm", "pipeline=embed", "prior=e5v,freeret", *QUIET]
    done = runs.run_sweep(sweep, tmp_path)
    assert loads == ["tiny_qwen2vl"]  # two configs, one model load
    assert [d.job.run_dir for d in done] == [tmp_path / "0", tmp_path / "1"]
    assert [d.results[0].prior for d in done] == ["e5v", "freeret"] and not any(d.skipped for d in done)
    # the folders run.py -m writes: results per job, and its overrides where Hydra keeps them
    assert yaml.safe_load((tmp_path / "1" / ".hydra" / "overrides.yaml").read_text()) == sweep_jobs(sweep)[1]
    again = runs.run_sweep(sweep, tmp_path)
    assert loads == ["tiny_qwen2vl"] and all(d.skipped for d in again)  # resumed: nothing ran, nothing loaded
    assert [d.results[0].main_score for d in again] == [d.results[0].main_score for d in done]
    other = runs.run_sweep([*sweep[:-len(QUIET)], "seed=1", *QUIET], tmp_path)  # same folders, other settings: run
    assert not any(d.skipped for d in other) and loads == ["tiny_qwen2vl"] * 2


def test_a_drivers_sweeps_share_one_model_load(tmp_path, monkeypatch):
    """A driver's plan of several sweeps (one per setting) on one model: ``models`` keeps it loaded across them."""
    loads = []
    real = inputs.load_backbone
    monkeypatch.setattr(inputs, "load_backbone", lambda *a, **k: loads.append(a[0].name) or real(*a, **k))
    models = Models()
    base = ["model=tiny_qwen2vl", "dataset=smoke_mm", "dataset.limit=2", "pipeline=embed", *QUIET]
    for prior in ("e5v", "freeret"):
        (done,) = runs.run_sweep([*base, f"prior={prior}"], tmp_path / prior, models=models)
        assert done.results[0].prior == prior and (tmp_path / prior / "0" / "results" / "smoke_mm.json").is_file()
    assert loads == ["tiny_qwen2vl"]


def test_expansion_is_hydras(tmp_path):
    """A sweep expands as ``run.py -m`` expands it: the experiment's own sweeper params, then the command line."""
    args = ["experiment=ablation_layer", "model=tiny_qwen2vl", "prior=e5v,freeret"]
    layers = yaml.safe_load((REPO / "conf/experiment/ablation_layer.yaml").read_text())["hydra"]["sweeper"]["params"]["layer"]
    assert runs.expand(args) == [[f"layer={layer}", *args[:2], f"prior={prior}"]
                                 for layer in layers.split(",") for prior in ("e5v", "freeret")]
    assert [j.run_dir for j in runs.sweep_jobs(args, tmp_path)] == [tmp_path / str(n) for n in range(8)]


def test_launcher_mode_hands_the_sweep_to_run_py(tmp_path, monkeypatch):
    """``--launcher slurm``: the same overrides to ``run.py -m hydra/launcher=slurm`` into the same sweep folder
    (no cluster here: the process is not started)."""
    import freeret.experiment as experiment

    sweep = ["experiment=stage1_search", "model=smollm2_135m", "prior=e5v,freeret"]
    cmd = launcher_command(sweep, tmp_path / "prior", "slurm")
    assert cmd == [sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=slurm", *sweep,
                   f"hydra.sweep.dir={tmp_path / 'prior'}"]
    started = []
    monkeypatch.setattr(experiment.subprocess, "run", lambda cmd, **kw: started.append((cmd, kw["cwd"])) or
                        type("Done", (), {"returncode": 0})())
    assert runs.run_sweep(sweep, tmp_path / "prior", "slurm") is None
    assert started == [(cmd, REPO)]
    assert (tmp_path / "prior.log").read_text().splitlines()[0] == " ".join(cmd)


def test_drivers_offer_the_launcher(tmp_path):
    """Every driver that runs configs takes --launcher with the launchers conf/hydra/launcher holds."""
    assert runs.LAUNCHERS == ["local", "slurm"]
    for name in ("stage1_search", "rerankers_runs", "compare_framings"):
        text = (REPO / "experiments" / f"{name}.py").read_text()
        assert "add_launcher_argument(" in text and "subprocess" not in text, name
    assert script("experiments/stage1_search.py").run_plan is runs.run_sweep


@pytest.mark.slow
def test_rerankers_runs_runs_its_settings_on_one_load(tmp_path, monkeypatch):
    """The scorer comparison: each (setting, set) is one job in ``<setting>/<set>/0``, all on one model load, the
    manifest names each run's command; a rerun skips finished runs and keeps their records; --report's collect
    reads them."""
    loads = []
    real = inputs.load_backbone
    monkeypatch.setattr(inputs, "load_backbone", lambda *a, **k: loads.append(a[0].name) or real(*a, **k))
    argv = ["--model", "tiny_qwen2vl", "--split", "dev", "--sets", "rd", "--settings", "choice", "cl_lambda1",
            "--limit", "2", "--rd-k", "2", "--threads", "1", "--out", str(tmp_path)]
    ran = run_main("experiments/rerankers_runs.py", argv)
    assert ran.returncode == 0, ran.stderr[-3000:]
    folder = tmp_path / "tiny_qwen2vl" / "dev"
    assert loads == ["tiny_qwen2vl"] and (folder / "cl_lambda1" / "rd" / "0" / "results" / "wordnet_rd_dev.json").is_file()
    manifest = json.loads((folder / "runs.json").read_text())
    assert manifest["cl_lambda1/rd"]["exit"] == 0 and "scorer=candidate_likelihood" in manifest["cl_lambda1/rd"]["command"]
    again = run_main("experiments/rerankers_runs.py", argv)
    assert again.returncode == 0 and "skipped" in again.stdout and json.loads((folder / "runs.json").read_text()) == manifest
    table = script("experiments/rerankers_runs.py").collect(folder, ["choice", "cl_lambda1"])
    assert list(table["wordnet_rd_dev"]["settings"]) == ["choice", "cl_lambda1"]


@pytest.mark.slow
def test_compare_framings_is_one_run_per_framing(tmp_path):
    """Each framing a ``scorer=choice framing=<name>`` run over ``--dataset``; the table and the plot as before."""
    out = tmp_path / "cf.json"
    ran = run_main("experiments/compare_framings.py", ["--model", "tiny_qwen2vl", "--dataset", "smoke_mm", "--limit", "3",
                                                      "--k", "2", "--framings", "mcq", "yes_no", "--out", str(out)])
    assert ran.returncode == 0, ran.stderr[-3000:]
    got = json.loads(out.read_text())
    assert list(got["results"]) == ["embed", "mcq", "yes_no"] and got["queries"] == 3 and got["top_k"] == 2
    assert out.with_suffix(".png").is_file()
    for name in ("mcq", "yes_no"):
        (result,) = load_results(tmp_path / name)
        assert (result.framing, result.rerank.top_k, result.dataset) == (name, 2, "smoke_mm")
        assert got["results"][name]["metrics"] == result.metrics["rerank"]


@pytest.mark.slow
def test_stage1_search_runs_its_axes_in_process(tmp_path):
    """The dev search's axis is one sweep run here (jobs in ``<out>/<axis>/<n>`` with Hydra's overrides file, which
    the bookkeeping reads back); a --spec file takes the start from the experiment."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("search:\n  axes:\n    - {name: post, sweep: {postprocess: [none, center]}}\n"
                    "  baselines:\n    bm25: {retriever: bm25}\n")
    small = ["--", "++benchmark.only=[wordnet_rd_dev]", "++benchmark.datasets.rd.limit=3",
             "++benchmark.datasets.rd.pool=positives", "threads=1"]
    out = tmp_path / "out"
    ran = run_main("experiments/stage1_search.py", ["--model", "tiny_qwen2vl", "--out", str(out), "--spec", str(spec), *small])
    assert ran.returncode == 0, ran.stderr[-3000:]
    state = json.loads((out / "search.json").read_text())
    jobs = state["axes"]["post"]["jobs"]
    assert [j["setting"]["postprocess"] for j in jobs] == ["none", "center"]
    assert state["best"]["layer"] == "attn_last" and all(j["scores"]["wordnet_rd_dev"] is not None for j in jobs)
    ran = run_main("experiments/stage1_search.py", ["--model", "tiny_qwen2vl", "--out", str(out), "--spec", str(spec),
                                                    "--test", "--suites", "stage1_dev", *small])
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert list(json.loads((out / "search.json").read_text())["test"]) == ["bm25_dev"]
