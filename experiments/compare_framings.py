"""Stage 1 once, then stage 2 with each framing on the same top-K: hit@1 embed-only vs two-stage per framing.

    python experiments/compare_framings.py --limit 100 --k 50
Embeddings are computed once and shared by all framings (a sweep with -m would recompute them per job).
Writes JSON (metrics per framing, timings) and a bar plot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import REPO, bar_chart, conf, dataset_prompt, save
from freeret.backbone import ModelSpec, load_backbone
from freeret.cli import quiet_lightning
from freeret.data.datasets import load_dataset
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.eval.metrics import retrieval_metrics
from freeret.rerank.framing import Framing
from freeret.rerank.scorer import PairScorer
from freeret.rerank.stage import RerankConfig
from freeret.run.stages import embed_stage, rerank_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--layer", default="attn_last")
    ap.add_argument("--prior", default="e5v")
    ap.add_argument("--framings", nargs="+", default=["mcq", "yes_no", "true_false", "right_wrong"])
    ap.add_argument("--limit", type=int, default=100, help="first N queries (each keeps its full candidate list)")
    ap.add_argument("--pool", default="rows", choices=["rows", "positives"], help="positives: a cheap small pool")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "framings" / "compare_framings.json")
    args = ap.parse_args()
    quiet_lightning()

    cfg = {"trainer": {"accelerator": "auto", "devices": 1, "enable_progress_bar": True}, "embed": {"batch_size": 32}}
    backbone = load_backbone(ModelSpec.from_dict(conf("model", args.model)))
    rset = load_dataset({"name": "wordnet_rd", "path": "data/wordnet_rd/wordnet_rd.jsonl.gz", "limit": args.limit,
                         "pool": args.pool})
    run_dir = args.out.parent
    prompt = dataset_prompt("wordnet_rd")
    t = time.perf_counter()
    embed_scores = embed_stage(cfg, backbone, LayerSpec.from_dict(conf("layer", args.layer)),
                               Prior.from_dict(conf("prior", args.prior)).for_dataset(prompt), rset, run_dir)
    results = {"embed": {"metrics": retrieval_metrics(embed_scores), "seconds": time.perf_counter() - t}}
    rerank_cfg = RerankConfig(top_k=args.k)
    for name in args.framings:
        t = time.perf_counter()
        scorer = PairScorer(backbone, Framing.from_dict(conf("framing", name)).for_dataset(prompt), rerank_cfg.batch_size)
        final = rerank_stage(cfg, scorer, rerank_cfg, rset, embed_scores, run_dir / name)
        results[name] = {"metrics": retrieval_metrics(final), "seconds": time.perf_counter() - t}
    for name, rec in results.items():
        print(f"{name:12s} hit@1={rec['metrics']['hit@1']:.3f}  hit@10={rec['metrics']['hit@10']:.3f}  "
              f"mrr={rec['metrics']['mrr']:.3f}  ({rec['seconds']:.0f}s)")
    save(args.out, {"model": backbone.metadata(), "layer": args.layer, "prior": args.prior, "top_k": args.k,
                    "queries": len(rset.rows), "candidates_per_query": rset.summary()["candidates_per_query"],
                    "results": results})
    bar_chart(args.out, ["embed only" if n == "embed" else n for n in results],
              {"hit@1": [r["metrics"]["hit@1"] for r in results.values()]},
              "hit@1", f"{args.model}: stage 1 vs rerank of the top-{args.k}, {len(rset.rows)} queries")

if __name__ == "__main__":
    main()
