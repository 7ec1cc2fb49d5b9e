"""The scaling study (issue 17): run the grid of conf/experiment/scaling.yaml, one run at a time, resumably.

    nice -n 10 python experiments/scaling.py                          # every run not yet done: tier 1 on every model, then tier 2...
    python experiments/scaling.py --models smollm2_135m --runs layer_attn_last,method_e5v
    python experiments/scaling.py --dry-run                           # list the runs and their overrides

Each model loads once and serves all its runs (retrieval runs through the experiments' runner,
``freeret.experiment.run_jobs`` on the shared model; probes through ``freeret.probes.run_probe.run_probe``).
A run whose ``<out>/<model>/<run>.json`` exists is skipped. Every result
file holds the run's payload plus a ``scaling`` section: wall and CPU seconds of the run, the model's load time,
the limits, the split, the overrides and whether the model is code-tuned. Scratch (rerank shards, probe PNGs) goes
to ``$FREERET_CACHE/scaling-runs``; embeddings go to the usual cache, so runs that share items share vectors.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from runs import compose

from freeret.atomic_files import write_json
from freeret.backbone import ModelSpec
from freeret.backbone.loading import load_backbone, resolve_checkpoint
from freeret.cli import quiet_lightning
from freeret.errors import ConfigError
from freeret.experiment import Job, run_jobs
from freeret.paths import cache_dir, repo_root
from freeret.probes.run_probe import resolve_framings, run_probe
from freeret.run.inputs import SharedModel
from freeret.run.report import summary_line

CONF = repo_root() / "conf"


def study() -> dict[str, Any]:
    """The ``scaling`` section of conf/experiment/scaling.yaml (read afresh, so edits apply to the next model)."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / "scaling.yaml"), resolve=True)["scaling"]


def limits_for(spec: dict[str, Any], model: str) -> dict[str, int]:
    """The study's limits with the model's reductions applied."""
    return {**spec["limits"], **(spec.get("per_model") or {}).get(model, {})}


def overrides_for(spec: dict[str, Any], run_spec: dict[str, Any], model: str, limits: dict[str, int]) -> list[str]:
    """Hydra overrides of one run: its groups, then the limits its kind uses."""
    kind = run_spec["kind"]
    common = [f"model={model}", "threads=1", "logger=none", "trainer.enable_progress_bar=false"]
    if kind == "probe":
        return [*common, f"probe.lexical_bias.n_pairs={limits['lexical_pairs']}",
                f"probe.anisotropy.n_items={limits['anisotropy_items']}",
                f"probe.framing_sensitivity.n_queries={limits['framing_queries']}"]
    base = ["experiment=scaling", *common, *run_spec.get("overrides", [])]
    if kind == "rd":
        return [*base, "dataset=wordnet_rd", f"dataset.limit={limits['rd_queries']}", "dataset.pool=positives"]
    if kind == "rerank":
        return [*base, "dataset=wordnet_rd", f"dataset.limit={limits['rerank_queries']}", "dataset.pool=positives",
                f"pipeline.top_k={limits['top_k']}"]
    if kind == "meta":
        pools = [f"benchmark.datasets.{name}.pool=positives" for name in spec.get("meta_pool_positives", [])]
        return [*base, f"benchmark.limit={limits['meta_queries']}", f"pipeline.top_k={limits['top_k']}", *pools]
    raise ConfigError(f"scaling run {run_spec['name']!r} has unknown kind {kind!r} (rd, rerank, meta, probe)")


def compose_run(run_spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The plain config of one run, composed as run.py / probes/*.py would."""
    return compose(overrides, "probe" if run_spec["kind"] == "probe" else "config")


def plan(spec: dict[str, Any], model: str, only: set[str] | None) -> list[dict[str, Any]]:
    """The runs of ``model`` in order, less its skips and (with ``only``) the runs not named."""
    skip = set((spec.get("skip") or {}).get(model, []))
    return [r for r in spec["runs"] if r["name"] not in skip and (only is None or r["name"] in only)]


def execute(run_spec: dict[str, Any], overrides: list[str], config: dict[str, Any], shared: SharedModel) -> Any:
    """Run one config on the shared backbone; returns the probe payload or the result mappings."""
    if run_spec["kind"] == "probe":
        resolve_framings(config)
        return run_probe(run_spec["probe"], config, backbone=shared.backbone)
    (done,) = run_jobs([Job(tuple(overrides), Path(config["run_dir"]))], compose,
                       on_result=lambda result: print(f"  {summary_line(result)}", flush=True), shared=shared,
                       resume=False)  # a run's own result file is what resumes the grid
    return [result.to_dict() for result in done.results]  # the mappings of results/<dataset>.json (RunResult.from_dict)


def run_model(spec: dict[str, Any], model: str, out: Path, only: set[str] | None = None, dry_run: bool = False,
              scratch: Path | None = None) -> list[str]:
    """Every pending run of one model, with the model loaded once (when anything is pending); returns the runs done
    (or, with ``dry_run``, those pending). ``scratch``: rerank shards and probe PNGs (default the FreeRet cache)."""
    limits = limits_for(spec, model)
    pending = [r for r in plan(spec, model, only) if not (out / model / f"{r['name']}.json").exists()]
    print(f"{model}: {len(pending)} run(s) pending, limits {limits}", flush=True)
    if dry_run:
        for r in pending:
            print(f"  {r['name']}: {' '.join(overrides_for(spec, r, model, limits))}")
        return [r["name"] for r in pending]
    if not pending:
        return []
    shared = SharedModel()
    t = time.perf_counter()
    first = compose_run(pending[0], overrides_for(spec, pending[0], model, limits))
    model_spec = ModelSpec.from_dict(first["model"])
    shared.backbone = load_backbone(model_spec, resolve_checkpoint(model_spec), "cpu")
    load_seconds = time.perf_counter() - t
    n_params = sum(p.numel() for p in shared.backbone.model.parameters())
    print(f"  loaded {model} in {load_seconds:.0f}s", flush=True)
    scratch = (scratch or cache_dir() / "scaling-runs") / model
    for run_spec in pending:
        overrides = overrides_for(spec, run_spec, model, limits)
        config = compose_run(run_spec, overrides)
        config["run_dir"] = str(scratch / run_spec["name"])
        wall, cpu = time.perf_counter(), time.process_time()
        result = execute(run_spec, overrides, config, shared)
        record = {
            "run": run_spec["name"], "kind": run_spec["kind"], "model": model,
            "code_tuned": model in spec.get("code_tuned", []),
            "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "model_load_seconds": load_seconds, "num_parameters": n_params, "limits": limits, "overrides": overrides,
            "split": "test",  # WordNet RD and the meta-task suite: test sets (nothing is tuned on them here)
        }
        body = {"probe": result} if run_spec["kind"] == "probe" else {"results": result}
        write_json(out / model / f"{run_spec['name']}.json", {"scaling": record, **body})
        print(f"  {model}/{run_spec['name']}: {record['wall_seconds']:.0f}s wall, {record['cpu_seconds']:.0f}s CPU",
              flush=True)
    shared.backbone = None
    gc.collect()
    return [r["name"] for r in pending]


def main(argv: list[str] | None = None) -> int:
    """Run (or list) the grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated subset of scaling.models")
    parser.add_argument("--runs", default=None, help="comma-separated subset of run names")
    parser.add_argument("--out", type=Path, default=None, help="result folder (default scaling.out)")
    parser.add_argument("--dry-run", action="store_true", help="list pending runs and their overrides")
    args = parser.parse_args(argv)
    quiet_lightning()
    spec = study()
    models = args.models.split(",") if args.models else spec["models"]
    named = set(args.runs.split(",")) if args.runs else None
    for tier in sorted({int(r.get("tier", 1)) for r in spec["runs"]}):
        for model in models:
            spec = study()  # re-read: limits edited while the grid runs apply to the next model
            tier_runs = {r["name"] for r in spec["runs"] if int(r.get("tier", 1)) == tier}
            run_model(spec, model, args.out or repo_root() / spec["out"], tier_runs & named if named else tier_runs,
                      args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
