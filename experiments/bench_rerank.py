"""Rerank throughput: one forward per pair (naive) vs the shared-prefix KV-cache path (fast), same run.

    python experiments/bench_rerank.py --queries 2 --k 50
    python experiments/bench_rerank.py --case image --model qwen2vl_2b_dims --layers 2 --queries 1 --k 10 50
Prints pairs/s for both, the speed-up, and the largest score difference; writes JSON and a bar plot.
``naive`` is FreeRet's own reference (the decoder only, LM head on the last token's option rows); ``--hf`` adds
the textbook loop, ``model(**inputs).logits[:, -1]`` (full-vocabulary logits at every position), as a third path.
Cases: ``text`` = WordNet definitions against their candidate words; ``image`` = a bundled photo (scikit-image
astronaut, resized by the Qwen2-VL processor to ``--max-pixels``, 256 visual tokens at 448x448) as the query
against text candidates (the smoke captions, then WordNet definitions), the MMEB image->text setting.
Both paths get the same vision-feature cache, so the image tower runs once per image in either.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _bench_models import load
from _common import REPO, bar_chart, conf, save

from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import Item
from freeret.rerank.framing import Framing
from freeret.rerank.scorer import PairScorer


def image_rows(k_max: int, queries: int, candidates: str = "definitions") -> list[tuple[Item, list[Item]]]:
    """Image queries (full-size bundled photos) against the smoke captions then WordNet definitions or words."""
    from PIL import Image

    from freeret.data.smoke import CAPTIONS, _load

    folder = REPO / "outputs" / "bench" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    wn = load_dataset({"name": "wordnet_rd", "path": str(REPO / "data/wordnet_rd/wordnet_rd.jsonl.gz"), "limit": k_max})
    if candidates == "words":  # short, like class names in MMEB classification tasks
        words = dict.fromkeys(wn.items[c].text for r in wn.rows for c in r.candidates)
        texts = list(CAPTIONS.values()) + list(words)
    else:
        texts = list(CAPTIONS.values()) + [wn.items[r.query].text for r in wn.rows]
    cands = [Item.make("target", t, None) for t in texts[:k_max]]
    rows = []
    for name in list(CAPTIONS)[:queries]:
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(_load(name)).convert("RGB").save(path)
        rows.append((Item.make("query", "", str(path)), cands))
    return rows


def text_rows(k_max: int, queries: int) -> list[tuple[Item, list[Item]]]:
    """WordNet definitions with their own candidate words."""
    rset = load_dataset({"name": "wordnet_rd", "path": str(REPO / "data/wordnet_rd/wordnet_rd.jsonl.gz"), "limit": queries})
    return [(rset.items[r.query], [rset.items[c] for c in r.candidates[:k_max]]) for r in rset.rows]


@torch.no_grad()
def hf_naive(scorer: PairScorer, query: Item, cands: list[Item]) -> torch.Tensor:
    """One plain ``model(**inputs)`` per pair (full logits everywhere), softmax over the option tokens."""
    probs = []
    for cand in cands:
        inputs = scorer._with_images([scorer.prompt(query, cand)], [[p for p in (query.image, cand.image) if p]])
        logits = scorer.bb.model(**inputs, use_cache=False).logits[:, -1].float()  # softcapping (Gemma) included
        probs.append(logits[:, scorer.option_ids].softmax(-1).cpu())
    return torch.cat(probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m", help="a conf/model name, or qwen2vl_2b_dims (random weights)")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of qwen2vl_2b_dims (the real 2B has 28)")
    ap.add_argument("--case", choices=["text", "image"], default="text")
    ap.add_argument("--candidates", choices=["definitions", "words"], default="definitions",
                    help="image case: candidate texts after the 8 captions")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--framing", default="mcq")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--k", type=int, nargs="+", default=[50])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hf", action="store_true", help="also time the textbook per-pair loop with full logits")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or REPO / "outputs" / "bench" / ("rerank.json" if args.case == "text" else f"rerank_image_{args.candidates}_{args.model}.json")

    backbone = load(args.model, args.layers)
    dataset = "wordnet_rd" if args.case == "text" else "smoke_mm"
    scorer = PairScorer(backbone, Framing.from_dict(conf("framing", args.framing)), dataset, args.batch_size)
    qrows = (image_rows(max(args.k), args.queries, args.candidates) if args.case == "image"
             else text_rows(max(args.k), args.queries))
    scorer.fast(qrows[0][0], qrows[0][1][:4])  # warm-up (and the query image's features into the cache)
    scorer.naive(qrows[0][0], qrows[0][1][:1])
    rows = []
    for k in args.k:
        times = {"naive": 0.0, "fast": 0.0, **({"hf": 0.0} if args.hf else {})}
        max_diff = 0.0
        for query, all_cands in qrows:
            cands = all_cands[:k]
            t = time.perf_counter()
            naive = scorer.naive(query, cands, batch_size=1)
            times["naive"] += time.perf_counter() - t
            t = time.perf_counter()
            fast = scorer.fast(query, cands)
            times["fast"] += time.perf_counter() - t
            max_diff = max(max_diff, float((naive.probs - fast.probs).abs().max()))
            if args.hf:
                t = time.perf_counter()
                hf = hf_naive(scorer, query, cands)
                times["hf"] += time.perf_counter() - t
                max_diff = max(max_diff, float((hf - fast.probs).abs().max()))
        pairs = k * len(qrows)
        rec = {"k": k, "pairs": pairs, "naive_pairs_per_s": pairs / times["naive"], "fast_pairs_per_s": pairs / times["fast"],
               "speedup": times["naive"] / times["fast"], "max_abs_score_diff": max_diff}
        if args.hf:
            rec.update(hf_pairs_per_s=pairs / times["hf"], speedup_vs_hf=times["hf"] / times["fast"])
        rows.append(rec)
        print(f"K={k}: naive {rec['naive_pairs_per_s']:.1f} pairs/s | fast {rec['fast_pairs_per_s']:.1f} pairs/s | "
              f"speed-up x{rec['speedup']:.2f} | max |score diff| {max_diff:.2e}"
              + (f" | textbook loop {rec['hf_pairs_per_s']:.1f} pairs/s, fast x{rec['speedup_vs_hf']:.2f}" if args.hf else ""))
    prefix_tokens = len(backbone.tokenizer(scorer.split(qrows[0][0])[0], add_special_tokens=False)["input_ids"])
    if qrows[0][0].image:  # the image placeholder expands to the processor's visual tokens
        prefix_tokens = int(scorer._with_images([scorer.split(qrows[0][0])[0]], [[qrows[0][0].image]])["input_ids"].shape[1])
    save(out, {"model": backbone.metadata(), "case": args.case,
               "candidates": args.candidates if args.case == "image" else "wordnet_rd words", "framing": args.framing, "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "prefix_tokens_first_query": prefix_tokens, "results": rows})
    bar_chart(out, [f"K={r['k']}" for r in rows],
              {**({"textbook loop (full logits)": [r["hf_pairs_per_s"] for r in rows]} if args.hf else {}),
               "naive (one forward per pair)": [r["naive_pairs_per_s"] for r in rows],
               "fast (shared prefix cache)": [r["fast_pairs_per_s"] for r in rows]},
              "pairs / second", f"Rerank ({args.case}), {backbone.spec.name}, {torch.get_num_threads()} CPU threads")

if __name__ == "__main__":
    main()
