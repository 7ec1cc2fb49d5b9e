"""Run the stage-2 scorer comparison of docs/rerankers.md: one run per (split, setting), one at a time.

    python experiments/rerankers_runs.py --model smollm2_135m --split dev
    python experiments/rerankers_runs.py --model gemma3_270m --split test --settings choice cl_lambda1

Each setting is FreeRet's stage 1 (method=freeret: h^Attn_L + the FreeRet prior) and one stage-2 scorer, on WordNet RD
(the first ``--limit`` queries, top-``--rd-k``) and on the WordNet meta-task suite (top-``--suite-k``); ``--split dev``
runs the dev twins (wordnet_rd_dev, suite=wordnet_meta_dev), where settings are chosen, ``test`` the shipped sets.
Stage 1 is embedded once per model and split and reused from the embedding cache by every setting. The runs go
through ``runs.run_sweep``: in this process on one loaded model (a finished run is skipped), or with ``--launcher``
through ``run.py -m hydra/launcher=<name>`` (a log per run beside its folder). Outputs go to
``<out>/<model>/<split>/<setting>/{rd,suite}/0/`` (each run's results/*.json and its rerank shards) and
``<out>/<model>/<split>/runs.json`` (command, exit status, wall seconds per run).

    python experiments/rerankers_runs.py --model smollm2_135m --split test --report

``--report`` runs nothing: it collects the finished runs into ``docs/results/<model>/rerankers_<split>.json`` (per
dataset: stage-1 hit@1 and each setting's hit@1 after reranking, pairs/s, flip rates, wall seconds) and a bar plot
beside it, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from runs import add_launcher_argument, run_sweep

from freeret.bench import bar_chart, write
from freeret.cli import quiet_lightning
from freeret.errors import FreeRetError
from freeret.experiment import Models, launcher_command
from freeret.paths import repo_root
from freeret.run.report import summary_line

REPO = repo_root()

# setting -> the stage-2 preset it runs (conf/scorer, conf/rerank) and, for the dev grid, the one value it changes;
# stage 1 alone is every run's "embed" metrics. Chosen values (lambda, weights, wording) are the presets' defaults,
# set from the dev split (docs/rerankers.md).
SETTINGS: dict[str, list[str]] = {
    "choice": ["scorer=choice"],
    "choice_debiased": ["scorer=choice_debiased"],
    "cl_lambda0": ["scorer=candidate_likelihood", "scorer.cpn_lambda=0"],
    "cl_lambda1": ["scorer=candidate_likelihood"],  # PMI: the preset's cpn_lambda
    "query_likelihood": ["scorer=query_likelihood"],
    "bidirectional": ["rerank=blim"],
    "listwise": ["scorer=listwise"],
    # dev-only grid around the defaults (docs/rerankers.md "Dev choice"): the CPN weight and BLiM's QL share
    "cl_lambda05": ["scorer=candidate_likelihood", "scorer.cpn_lambda=0.5"],
    "blim_w025": ["rerank=blim", "scorer.weight=0.25"],
    "blim_w075": ["rerank=blim", "scorer.weight=0.75"],
}


def runs(model: str, split: str, limit: int, rd_k: int, suite_k: int, threads: int) -> dict[str, list[str]]:
    """The two runs of a setting: WordNet RD and the meta-task suite, with the split's dataset names."""
    base = ["method=freeret", f"model={model}", f"threads={threads}", "logger=none", "trainer.enable_progress_bar=false"]
    rd = "wordnet_rd_dev" if split == "dev" else "wordnet_rd"
    suite = "wordnet_meta_dev" if split == "dev" else "wordnet_meta"
    return {"rd": [*base, f"dataset={rd}", f"dataset.limit={limit}", f"pipeline.top_k={rd_k}"],
            "suite": [*base, f"suite={suite}", f"pipeline.top_k={suite_k}"]}


def collect(folder: Path, settings: list[str]) -> dict:
    """Per dataset: stage-1 metrics and each finished setting's reranked metrics and run figures."""
    manifest = json.loads((folder / "runs.json").read_text()) if (folder / "runs.json").exists() else {}
    table: dict[str, dict] = {}
    for setting in settings:
        for which in ("rd", "suite"):
            for path in sorted((folder / setting / which).glob("**/results/*.json")):  # <which>/0/ (or <which>/)
                res = json.loads(path.read_text())
                if "rerank" not in res.get("metrics", {}):
                    continue
                row = table.setdefault(res["dataset"], {"embed": res["metrics"]["embed"],
                                                        "queries": res["counts"]["scored_queries"],
                                                        "top_k": res["rerank"]["top_k"], "settings": {}})
                pairs = row["queries"] * row["top_k"]  # every row here has at least K candidates
                seconds = res["timing"].get("rerank_seconds")
                row["settings"][setting] = {
                    "rerank": res["metrics"]["rerank"], "rerank_seconds": seconds,
                    "pairs_per_s": pairs / seconds if seconds and pairs else None,
                    "scorer": res["rerank"]["scorer"], "scorer_summary": res["rerank"].get("scorer_summary"),
                    "scorer_config": res["rerank"].get("scorer_config"), "fusion": res["rerank"].get("fusion"),
                    "run_wall_seconds": manifest.get(f"{setting}/{which}", {}).get("wall_seconds"),
                    "command": manifest.get(f"{setting}/{which}", {}).get("command"),
                    "model": res["model"], "environment": res.get("environment")}
    return table


def report(model: str, split: str, folder: Path, settings: list[str]) -> None:
    """docs/results/<model>/rerankers_<split>.json, its bar plot, and a markdown table on stdout."""
    table = collect(folder, settings)
    if not table:
        raise SystemExit(f"no finished runs under {folder}")
    out = REPO / "docs" / "results" / model / f"rerankers_{split}.json"
    write(out, {"model": model, "split": split, "datasets": table})
    names = list(table)
    shown = [s for s in settings if any(s in table[d]["settings"] for d in names)]
    series = {"stage 1": [table[d]["embed"]["hit@1"] for d in names]}
    for s in shown:
        series[s] = [table[d]["settings"].get(s, {}).get("rerank", {}).get("hit@1", float("nan")) for d in names]
    bar_chart(out, [d.replace("wordnet_", "") for d in names], series, "hit@1",
              f"Stage-2 scorers, {model}, {split} split")
    print("| dataset (split) | queries | K | stage 1 | ceiling (stage-1 hit@K) | " + " | ".join(shown) + " |")
    print("|---" * (5 + len(shown)) + "|")
    for d in names:
        row = table[d]
        cells = [f"{row['settings'][s]['rerank']['hit@1']:.3f}" if s in row["settings"] else "-" for s in shown]
        ceiling = row["embed"].get(f"hit@{row['top_k']}")
        print(f"| {d} ({split}) | {row['queries']} | {row['top_k']} | {row['embed']['hit@1']:.3f} | "
              f"{'-' if ceiling is None else f'{ceiling:.3f}'} | " + " | ".join(cells) + " |")
    print()
    print("| dataset (split) | setting | rerank pairs/s | rerank s | run wall s | flip rate |")
    print("|---|---|---|---|---|---|")
    for d in names:
        for s, got in table[d]["settings"].items():
            flip = (got.get("scorer_summary") or {}).get("flip_rate")
            print(f"| {d} ({split}) | {s} | {got['pairs_per_s']:.2f} | {got['rerank_seconds']:.0f} | "
                  f"{got['run_wall_seconds']} | {'-' if flip is None else f'{flip:.2f}'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", choices=["dev", "test"], required=True)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--sets", nargs="+", default=["rd", "suite"], choices=["rd", "suite"])
    ap.add_argument("--limit", type=int, default=200, help="WordNet RD: the first N queries")
    ap.add_argument("--rd-k", type=int, default=50)
    ap.add_argument("--suite-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", nargs="*", default=[], help="more run.py overrides for every run")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "rerankers")
    ap.add_argument("--report", action="store_true", help="collect finished runs into docs/results (runs nothing)")
    add_launcher_argument(ap)
    args = ap.parse_args()
    folder = args.out / args.model / args.split
    if args.report:
        return report(args.model, args.split, folder, args.settings)
    quiet_lightning()
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "runs.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    plans = runs(args.model, args.split, args.limit, args.rd_k, args.suite_k, args.threads)
    models = Models()  # in-process: the model loads once for every run
    for setting in args.settings:
        for which in args.sets:
            run_dir = folder / setting / which
            overrides = [*plans[which], *SETTINGS[setting], *args.extra]
            t = time.perf_counter()
            code, note = 0, ""
            try:
                done = run_sweep(overrides, run_dir, args.launcher, models=models,
                                 on_result=lambda r: print(f"  {summary_line(r)}", flush=True))
                if done and all(d.skipped for d in done):
                    note = " (its results were there: skipped; remove the folder to run it again)"
            except FreeRetError as exc:  # one line, then the next run (as a failed run.py process was)
                print(f"error: {exc}", file=sys.stderr)
                code = getattr(exc, "exit_code", 2)
            except SystemExit as exc:  # a failed launcher sweep: its log names the cause
                print(exc, file=sys.stderr)
                code = 1
            wall = time.perf_counter() - t
            if note and f"{setting}/{which}" in manifest:  # keep the record of the run that made them
                print(f"{args.model} {args.split} {setting}/{which}{note}", flush=True)
                continue
            manifest[f"{setting}/{which}"] = {"command": launcher_command(overrides, run_dir, args.launcher)[1:],
                                             "exit": code, "wall_seconds": round(wall, 1),
                                             "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
            print(f"{args.model} {args.split} {setting}/{which}: exit {code}, {wall:.0f} s{note}", flush=True)


if __name__ == "__main__":
    main()
