"""Stage 1 once, then stage 2 with each framing on the same top-K: hit@1 embed-only vs two-stage per framing.

    python experiments/compare_framings.py --limit 100 --k 50
    python experiments/compare_framings.py --dataset wordnet_rd_dev --framings mcq yes_no --launcher slurm
Each framing is one two-stage run, ``scorer=choice framing=<name>`` over ``--dataset`` (a conf/dataset name), run
through ``runs.run_sweep``: in this process on one loaded model by default, and the stage-1 embeddings of the first
run come from the embedding cache for the others (a sweep with -m on separate processes shares them the same way).
Each run writes its folder under ``<out folder>/<framing>/0``; writes JSON (metrics per framing, timings) and a bar plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runs import add_launcher_argument, run_sweep

from freeret.bench import bar_chart, write
from freeret.cli import one_line_errors, quiet_lightning
from freeret.eval.tables import load_results
from freeret.experiment import Models
from freeret.paths import repo_root

QUIET = ["logger=none"]


def framing_runs(args: argparse.Namespace) -> dict[str, list[str]]:
    """framing -> the run.py overrides of its two-stage run (the same stage 1 for every framing)."""
    base = [f"model={args.model}", f"dataset={args.dataset}", f"dataset.limit={args.limit}", f"dataset.pool={args.pool}",
            "pipeline=two_stage", f"layer={args.layer}", f"prior={args.prior}", f"pipeline.top_k={args.k}",
            "scorer=choice", *QUIET]
    return {name: [*base, f"framing={name}"] for name in args.framings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--dataset", default="wordnet_rd", help="a conf/dataset name")
    ap.add_argument("--layer", default="attn_last")
    ap.add_argument("--prior", default="e5v")
    ap.add_argument("--framings", nargs="+", default=["mcq", "yes_no", "true_false", "right_wrong"])
    ap.add_argument("--limit", type=int, default=100, help="first N queries (each keeps its full candidate list)")
    ap.add_argument("--pool", default="rows", choices=["rows", "positives"], help="positives: a cheap small pool")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--out", type=Path, default=repo_root() / "outputs" / "framings" / "compare_framings.json")
    add_launcher_argument(ap)
    args = ap.parse_args()
    quiet_lightning()

    folder = args.out.parent
    plan = framing_runs(args)
    models = Models()  # in-process: one model load for every framing
    one_line_errors(lambda: [run_sweep(overrides, folder / name, args.launcher, models=models)
                             for name, overrides in plan.items()])
    found = {name: load_results(folder / name)[0] for name in plan}
    first = next(iter(found.values()))
    results = {"embed": {"metrics": first.metrics["embed"], "seconds": first.timing.get("embed_seconds")}}
    for name, res in found.items():
        results[name] = {"metrics": res.metrics["rerank"], "seconds": res.timing.get("rerank_seconds")}
    for name, rec in results.items():
        seconds = "-" if rec["seconds"] is None else f"{rec['seconds']:.0f}"
        print(f"{name:12s} hit@1={rec['metrics']['hit@1']:.3f}  hit@10={rec['metrics']['hit@10']:.3f}  "
              f"mrr={rec['metrics']['mrr']:.3f}  ({seconds}s)")
    queries = first.counts.num_queries
    write(args.out, {"model": first.model, "dataset": args.dataset, "layer": args.layer, "prior": args.prior,
                     "top_k": args.k, "queries": queries, "candidates_per_query": first.counts.candidates_per_query,
                     "runs": {name: str(folder / name) for name in plan}, "results": results})
    bar_chart(args.out, ["embed only" if n == "embed" else n for n in results],
              {"hit@1": [r["metrics"]["hit@1"] for r in results.values()]},
              "hit@1", f"{args.model}: stage 1 vs rerank of the top-{args.k}, {queries} queries")


if __name__ == "__main__":
    main()
