"""Stage-2 search on DEV data, after the stage-1 search (issue 26): none, or a likelihood scorer with its K, lambda,
BLiM weight and fusion with stage 1.

    python experiments/stage2_search.py --spec experiments/general_search.yaml --model smollm2_135m --out DIR
    python experiments/stage2_search.py ... --report      # print the leaderboard from DIR/search.json; run nothing

One run: the stage-1 search's chosen setting (``DIR/search.json``'s ``best``) with ``scorer=bidirectional`` at the
spec's largest K on the dev suite (``DIR/stage2_run``; resumable, its rerank shards keep every likelihood part). Every
setting of the spec's ``stage2.grid`` is then scored from those records without a forward pass
(``freeret/rerank/tune.py``), after checking that the run's own setting scores what the run reported. The chosen
setting (the best dev mean over datasets, kept only if it beats stage 1 alone) goes to ``search.json``'s ``stage2``;
``stage1_search.py --write-preset`` writes it as the preset's ``stage2`` block and ``--test`` runs it once on test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from stage1_search import CONFIG, TWO_STAGE, dev_data, load_search, overrides, run_sweep, stage2_report, write_state

from freeret.cli import one_line_errors, quiet_lightning
from freeret.errors import ConfigError
from freeret.rerank import tune
from freeret.rerank.stage import read_rerank


def run_overrides(spec: dict[str, Any]) -> dict[str, Any]:
    """The overrides of the one stage-2 run: BLiM at the grid's largest K, its parts kept in every record."""
    run = dict(spec.get("run") or {})
    run.setdefault("scorer", "bidirectional")
    run.setdefault("pipeline.top_k", max(spec["grid"]["top_k"]))
    if run["scorer"] != "bidirectional" or run.get("scorer.candidate.cpn_lambda", 1.0) == 0:
        raise ConfigError("stage2.run must be scorer=bidirectional with cpn_lambda != 0: its records keep every part "
                          "the grid is scored from")
    if run["pipeline.top_k"] < max(spec["grid"]["top_k"]):
        raise ConfigError(f"stage2.run's pipeline.top_k={run['pipeline.top_k']} is below the grid's largest K")
    return run


def run_folder(out: Path, args: list[str]) -> Path:
    """The stage-2 run's folder: ``stage2_run`` when it is new or holds this very run (its recorded overrides include
    ``args``), else ``stage2_run_<hash of args>``: a stage-1 choice that moved (a later axis won) gets a fresh run."""
    first = out / "stage2_run"
    recorded = first / "0" / ".hydra" / "overrides.yaml"
    if not recorded.exists() or set(args) <= set(yaml.safe_load(recorded.read_text())):
        return first
    return out / f"stage2_run_{hashlib.sha256(json.dumps(args).encode()).hexdigest()[:8]}"


def load_records(job: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float], dict[str, float]]:
    """A two-stage job's rerank records per dataset (in row order), and its reported stage-1 and stage-2 hit@1."""
    records, stage1, stage2 = {}, {}, {}
    for path in sorted((job / "results").glob("*.json")):
        result = json.loads(path.read_text())
        name = result["dataset"]
        folders = [p for p in (job / "rerank" / name).iterdir() if p.is_dir()]
        if len(folders) != 1:
            raise ConfigError(f"{job / 'rerank' / name}: expected one scorer folder, found {len(folders)}")
        by_row = read_rerank(folders[0])
        records[name] = [by_row[row] for row in sorted(by_row)]
        stage1[name] = result["metrics"]["embed"]["hit@1"]
        stage2[name] = result["metrics"]["rerank"]["hit@1"]
    if not records:
        raise ConfigError(f"{job}: no results (did the stage-2 run finish?)")
    return records, stage1, stage2


def search(model: str, out: Path, extra: list[str], spec_path: Path = CONFIG, launcher: str | None = None) -> dict[str, Any]:
    """Run the one stage-2 run (or reuse it), score the grid and record the choice in ``<out>/search.json``."""
    spec = load_search(spec_path)
    if "stage2" not in spec:
        raise ConfigError(f"{spec_path}: no `stage2` section (the run and the grid the stage-2 search scores)")
    state_file = out / "search.json"
    if not state_file.exists():
        raise ConfigError(f"{state_file} does not exist: run experiments/stage1_search.py first")
    state = json.loads(state_file.read_text())
    run = run_overrides(spec["stage2"])
    args = [*overrides({**state["best"], **TWO_STAGE, **run}), *dev_data(spec)]
    job_dir = run_folder(out, args)
    if not (job_dir / "0" / "results").exists():
        run_sweep(model, args, job_dir, extra, launcher)
    records, stage1, reported = load_records(job_dir / "0")
    own = tune.Stage2Setting("bidirectional", int(run["pipeline.top_k"]), str(run.get("pipeline.fusion", "rerank")),
                             float(run.get("pipeline.fusion_weight", 0.5)),
                             float(run.get("scorer.candidate.cpn_lambda", 1.0)), float(run.get("scorer.weight", 0.5)))
    tune.check_against_run(records, own, reported)
    result = tune.search(records, tune.grid(spec["stage2"]["grid"]))
    if any(abs(result["stage1"]["scores"][d] - stage1[d]) > 1e-9 for d in stage1):
        raise AssertionError(f"stage-1 hit@1 from the records {result['stage1']['scores']} differs from the run's {stage1}")
    state["stage2"] = {"run": run, "n_rows": {d: len(r) for d, r in records.items()}, **result}
    write_state(state_file, state)
    return state


def transfer(out: Path, source: Path, max_k: int | None = None) -> dict[str, Any]:
    """Stage 2 taken from another model's stage-2 search (``source``: its search.json), not searched here: the best
    of its dev grid with ``top_k <= max_k`` (a cost cap: stage 2's forwards grow with K), kept only if it beat that
    model's stage 1. Recorded in ``<out>/search.json``'s ``stage2`` with where it came from."""
    state_file = out / "search.json"
    if not state_file.exists():
        raise ConfigError(f"{state_file} does not exist: run experiments/stage1_search.py first")
    other = json.loads(source.read_text())
    grid_rows = [r for r in (other.get("stage2") or {}).get("settings", [])
                 if max_k is None or r["setting"]["top_k"] <= max_k]
    if not grid_rows:
        raise ConfigError(f"{source}: no stage-2 grid{f' with top_k <= {max_k}' if max_k else ''} to transfer")
    best = max(grid_rows, key=lambda r: r["mean"])
    base = other["stage2"]["stage1"]["mean"]
    state = json.loads(state_file.read_text())
    state["stage2"] = {"transferred_from": str(source), "source_model": other["model"], "max_k": max_k,
                       "chosen": best["setting"] if best["mean"] > base else None,
                       "chosen_overrides": tune.Stage2Setting(**best["setting"]).overrides() if best["mean"] > base else None,
                       "source_dev": {"label": best["label"], "mean": best["mean"], "stage1_mean": base}}
    write_state(state_file, state)
    return state


def keep_previous(out: Path) -> dict[str, Any]:
    """Keep the stage 2 chosen on dev with an EARLIER stage-1 choice (a later stage-1 axis won since) instead of
    searching again: recorded in ``stage2.kept_for`` (the stage 1 it now runs on) beside ``stage2.searched_on``, so
    the preset's note and the report say so. A CPU-time shortcut; the stage-2 run of the new stage 1 is not made."""
    state_file = out / "search.json"
    state = json.loads(state_file.read_text())
    if not (state.get("stage2") or {}).get("settings"):
        raise ConfigError(f"{state_file}: no stage-2 search to keep (run experiments/stage2_search.py first)")
    recorded = yaml.safe_load((out / "stage2_run" / "0" / ".hydra" / "overrides.yaml").read_text())
    state["stage2"]["searched_on"] = [o for o in recorded if not o.startswith(("++benchmark.", "suite=", "logger=",
                                                                                "trainer.", "experiment=", "model="))]
    state["stage2"]["kept_for"] = state["best"]
    write_state(state_file, state)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a conf/model name")
    parser.add_argument("--out", type=Path, required=True, help="the stage-1 search's folder (its search.json)")
    parser.add_argument("--spec", type=Path, default=CONFIG, help="the search spec with a `stage2` section")
    parser.add_argument("--report", action="store_true", help="print the leaderboard of <out>/search.json; run nothing")
    parser.add_argument("--transfer-from", type=Path, default=None, metavar="SEARCH_JSON",
                        help="run nothing: take the stage 2 another model's search chose on its dev data (e.g. a "
                             "smaller model of the family), the best of its grid with top_k <= --max-k")
    parser.add_argument("--max-k", type=int, default=None, help="with --transfer-from: the largest K allowed (cost)")
    parser.add_argument("--keep-previous", action="store_true",
                        help="run nothing: keep the stage 2 chosen with an earlier stage-1 choice for the new one")
    parser.add_argument("overrides", nargs="*", help="extra run.py overrides for the run")
    args = parser.parse_args(argv)
    if args.keep_previous:
        state = one_line_errors(lambda: keep_previous(args.out))
        print(f"stage 2 for {state['model']}: {state['stage2']['chosen_overrides']} kept (searched on "
              f"{state['stage2']['searched_on']})")
        return 0
    if args.transfer_from is not None:
        state = one_line_errors(lambda: transfer(args.out, args.transfer_from, args.max_k))
        print(f"stage 2 for {state['model']}: {state['stage2']['source_dev']} from {state['stage2']['source_model']} "
              f"-> {state['stage2']['chosen_overrides']}")
        return 0
    if args.report:
        print(stage2_report(json.loads((args.out / "search.json").read_text())))
        return 0
    quiet_lightning()
    state = one_line_errors(lambda: search(args.model, args.out, args.overrides, args.spec))
    print(stage2_report(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
