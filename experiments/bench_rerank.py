"""Rerank throughput: one forward per pair (naive) vs the shared-prefix KV-cache path (fast), same run.

    python experiments/bench_rerank.py --queries 2 --k 50
Prints pairs/s for both, the speed-up, and the largest score difference; writes JSON and a bar plot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import REPO, bar_chart, conf, save
from freeret.backbone import ModelSpec, load_backbone
from freeret.data.datasets import load_dataset
from freeret.rerank.framing import Framing
from freeret.rerank.scorer import PairScorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--framing", default="mcq")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--k", type=int, nargs="+", default=[50])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "rerank.json")
    args = ap.parse_args()

    backbone = load_backbone(ModelSpec.from_dict(conf("model", args.model)))
    scorer = PairScorer(backbone, Framing.from_dict(conf("framing", args.framing)), "wordnet_rd", args.batch_size)
    rset = load_dataset({"name": "wordnet_rd", "path": "data/wordnet_rd/wordnet_rd.jsonl.gz", "limit": args.queries})
    scorer.fast(rset.items[rset.rows[0].query], [rset.items[k] for k in rset.rows[0].candidates[:4]])  # warm-up
    rows = []
    for k in args.k:
        times = {"naive": 0.0, "fast": 0.0}
        max_diff = 0.0
        for row in rset.rows:
            query, cands = rset.items[row.query], [rset.items[c] for c in row.candidates[:k]]
            t = time.perf_counter()
            naive = scorer.naive(query, cands, batch_size=1)
            times["naive"] += time.perf_counter() - t
            t = time.perf_counter()
            fast = scorer.fast(query, cands)
            times["fast"] += time.perf_counter() - t
            max_diff = max(max_diff, float((naive.probs - fast.probs).abs().max()))
        pairs = k * len(rset.rows)
        rec = {"k": k, "pairs": pairs, "naive_pairs_per_s": pairs / times["naive"], "fast_pairs_per_s": pairs / times["fast"],
               "speedup": times["naive"] / times["fast"], "max_abs_score_diff": max_diff}
        rows.append(rec)
        print(f"K={k}: naive {rec['naive_pairs_per_s']:.1f} pairs/s | fast {rec['fast_pairs_per_s']:.1f} pairs/s | "
              f"speed-up x{rec['speedup']:.2f} | max |score diff| {max_diff:.2e}")
    save(args.out, {"model": backbone.metadata(), "framing": args.framing, "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(), "results": rows})
    bar_chart(args.out, [f"K={r['k']}" for r in rows],
              {"naive (one forward per pair)": [r["naive_pairs_per_s"] for r in rows],
               "fast (shared prefix cache)": [r["fast_pairs_per_s"] for r in rows]},
              "pairs / second", f"Rerank throughput, {args.model}, {torch.get_num_threads()} CPU threads")

if __name__ == "__main__":
    main()
