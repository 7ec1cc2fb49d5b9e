"""Embedding throughput: FreeRet's path vs a naive E5-V-style loop (per item, and batched), same run; and MFU.

    python experiments/bench_embed.py --model smollm2_135m --items 128
    python experiments/bench_embed.py --model qwen2vl_2b_dims --layers 28 --items 32
    python experiments/bench_embed.py --model qwen2vl_2b_dims --layers 28 --items 512 --device cuda   # on a GPU

Paths, each over the same WordNet items (half definitions, half words) with the FreeRet prompts:
- freeret: the pipeline's default: ``Backbone.embed`` at h^Attn_L on length-sorted batches (plan_batches),
  forward stopped at that point, each batch's shared prompt prefix run once from a KV cache (``PrefixCache``);
- freeret_noprefix: the same without the prefix cache (every prompt token run);
- naive_item: one item per forward, ``model(**inputs, output_hidden_states=True)`` with full logits (E5-V style);
- naive_batched: the same call on batches of the same size in a seeded random order (padded, unsorted).
The naive loops read h^Attn_L with a non-stopping hook (it costs nothing), so embeddings compare at one point.
Useful (non-pad) and padded tokens are counted per path; for freeret, "useful" is the tokens actually run (each
prefix once, then every suffix). MFU = model FLOPs of those tokens per second / a plain fp32 matmul rate measured
in the same run (see ``freeret.bench.flops_per_sequence``), reported for freeret and freeret_noprefix.
"""

from __future__ import annotations

import random

import torch

from freeret.backbone.backbone import Backbone
from freeret.backbone.capture import run_until_captured
from freeret.backbone.prefix import PrefixCache
from freeret.bench import (
    BENCH_OUT,
    bar_chart,
    best_of,
    conf,
    dataset_prompt,
    flops_per_sequence,
    matmul_gflops,
    parser,
    set_threads,
    widths,
    write,
)
from freeret.bench_models import load
from freeret.data.datamodule import plan_batches
from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import Item
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.paths import repo_root

ATTN_LAST = LayerSpec(point="attn", index=-1)


def pick_items(n: int) -> list[Item]:
    """``n`` WordNet items: the first n/2 definitions (queries) and n/2 words (targets) of the shipped set."""
    rset = load_dataset({"name": "wordnet_rd", "path": str(repo_root() / "data/wordnet_rd/wordnet_rd.jsonl.gz"), "limit": n})
    queries = [rset.items[r.query] for r in rset.rows][: n - n // 2]
    targets = list(dict.fromkeys(c for r in rset.rows for c in r.candidates))[: n // 2]
    return queries + [rset.items[k] for k in targets]


class Paths:
    """The ways to embed the same items, each returning (embeddings, useful tokens, padded tokens).

    ``segments`` holds (first position, tokens) of every sequence the last freeret-family run computed.
    """

    def __init__(self, bb: Backbone, items: list[Item], batch_size: int, seed: int = 0) -> None:
        prior = Prior.from_dict(conf("prior", "freeret")).for_dataset(dataset_prompt("wordnet_rd"))
        self.bb, self.items, self.bs = bb, items, batch_size
        self.prompts = [bb.render(prior.render(it.role, it.text, False)) for it in items]
        self.sorted_batches = plan_batches(items, batch_size)
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        self.random_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.lengths = [len(bb.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in self.prompts]

    def _inputs(self, idx: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.bb.device) for k, v in self.bb.inputs([self.prompts[i] for i in idx]).items()}

    @torch.no_grad()
    def freeret(self, prefix: bool = True) -> tuple[torch.Tensor, int, int]:
        """Backbone.embed at h^Attn_L on length-sorted batches; the forward stops there; optional prefix cache."""
        out = torch.empty(len(self.items), self.bb.model.config.get_text_config().hidden_size)
        cache = PrefixCache(self.bb.model) if prefix else None
        if cache is not None:
            cache.stats.record = True
        useful = total = 0
        for idx in self.sorted_batches:
            inputs = self._inputs(idx)
            out[idx] = self.bb.embed(inputs, ATTN_LAST, cache).cpu()
            useful, total = useful + int(inputs["attention_mask"].sum()), total + inputs["attention_mask"].numel()
        padded = total - useful
        if cache is None:
            self.segments = [(0, n) for n in self.lengths]
            self.phase_tokens = {"full": useful}
            return out, useful, padded
        self.segments = cache.stats.segments
        run, stats = sum(n for _, n in self.segments), cache.stats
        self.phase_tokens = {"prefix": stats.prefix_tokens_run, "suffix": stats.suffix_tokens_run,
                             "full": run - stats.prefix_tokens_run - stats.suffix_tokens_run}  # batches sharing too little
        return out, run, stats.suffix_padding

    @torch.no_grad()
    def naive(self, batches: list[list[int]]) -> tuple[torch.Tensor, int, int]:
        """E5-V-style: the whole model with every hidden state and full logits; h^Attn_L read by a hook."""
        out = torch.empty(len(self.items), self.bb.model.config.get_text_config().hidden_size)
        useful = total = 0
        for idx in batches:
            inputs = self._inputs(idx)
            with self.bb.capture([ATTN_LAST], stop=False) as got:
                result = run_until_captured(self.bb.model, **inputs, output_hidden_states=True)
            assert result.logits.shape[1] == inputs["input_ids"].shape[1]  # full logits, every position
            out[idx] = got[ATTN_LAST][:, -1].float().cpu()
            useful, total = useful + int(inputs["attention_mask"].sum()), total + inputs["attention_mask"].numel()
        return out, useful, total - useful

    def run(self, name: str) -> tuple[torch.Tensor, int, int]:
        """Run one path by name."""
        if name in ("freeret", "freeret_noprefix"):
            return self.freeret(prefix=name == "freeret")
        if name == "naive_item":
            return self.naive([[i] for i in range(len(self.items))])
        return self.naive(self.random_batches)


def main() -> None:
    ap = parser(__doc__, model="smollm2_135m", layers=28, threads=1, repeats=2, device=True,
                device_help="cpu, or cuda (fp32 on the GPU; MFU against the GPU's fp32 matmul)")
    ap.add_argument("--items", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--paths", nargs="+", default=["freeret", "freeret_noprefix", "naive_batched", "naive_item"])
    args = ap.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or BENCH_OUT / f"embed_{args.model}.json"

    bb = load(args.model, args.layers)
    bb.model.to(device)
    w = widths(bb)
    paths = Paths(bb, pick_items(args.items), args.batch_size)
    paths.run("freeret") if len(paths.items) > 4 else None  # warm-up
    counts: dict[str, tuple[int, int]] = {}
    phase_tokens: dict[str, dict[str, int]] = {}  # freeret paths: tokens run per phase (prefix, suffix, or full)
    mfu_rounds = []
    ref: dict[int, float] = {}  # round -> fp32 matmul GFLOP/s measured before it

    def each(r: int, name: str, secs: float, cpu_secs: float, got: tuple[torch.Tensor, int, int]) -> None:
        _, useful, padded = got
        counts[name] = (useful, padded)
        if name.startswith("freeret"):
            phase_tokens[name] = dict(paths.phase_tokens)
            flops = sum(flops_per_sequence(w, n, early_exit=True, head=False, start=s0) for s0, n in paths.segments)
            mfu_rounds.append({"path": name, "round": r, "matmul_gflops": ref[r], "model_gflops": flops / secs / 1e9,
                               "mfu": flops / secs / 1e9 / ref[r]})
        print(f"round {r} {name}: {secs:.2f} s ({cpu_secs:.2f} CPU s), {len(paths.items) / secs:.2f} items/s "
              f"(useful {useful} / padded {padded} tokens); matmul {ref[r]:.1f} GFLOP/s", flush=True)

    def round_end(r: int) -> None:
        ref_after = matmul_gflops(device)
        for m in mfu_rounds:
            if m["round"] == r:
                m["matmul_gflops_after"] = ref_after

    # process CPU seconds of the best-wall round: steadier than wall time on a shared machine
    timings, last = best_of({name: (lambda name=name: paths.run(name)) for name in args.paths}, args.repeats, each,
                            round_start=lambda r: ref.__setitem__(r, matmul_gflops(device)), round_end=round_end)
    best = {name: t.seconds for name, t in timings.items() if name in last}
    cpu = {name: t.cpu_seconds for name, t in timings.items() if name in last}
    embs = {name: got[0] for name, got in last.items()}
    n = len(paths.items)
    results = {name: {"seconds": best[name], "cpu_seconds": cpu[name], "cpu_seconds_per_100_items": 100 * cpu[name] / n,
                      "items_per_s": n / best[name], "useful_tokens": counts[name][0],
                      "padded_tokens": counts[name][1], "tokens_per_s": counts[name][0] / best[name],
                      **({"phase_tokens": phase_tokens[name]} if name in phase_tokens else {})} for name in best}
    cos = {}
    for name, emb in embs.items():
        if name != "freeret" and "freeret" in embs:
            c = torch.nn.functional.cosine_similarity(embs["freeret"], emb, dim=1)
            cos[f"freeret_vs_{name}"] = {"min": float(c.min()), "mean": float(c.mean())}
    speedups = {f"vs_{k}": best[k] / best["freeret"] for k in best if k != "freeret" and "freeret" in best}
    mfu = {p: max((m for m in mfu_rounds if m["path"] == p), key=lambda m: m["mfu"])
           for p in dict.fromkeys(m["path"] for m in mfu_rounds)}
    for k, v in speedups.items():
        print(f"freeret {k}: x{v:.2f}")
    for k, v in cos.items():
        print(f"cos {k}: min {v['min']:.6f}")
    for p, m in mfu.items():
        print(f"MFU ({p}, tokens run): {m['mfu']:.1%} = {m['model_gflops']:.1f} / {m['matmul_gflops']:.1f} GFLOP/s")
    write(out, {"model": bb.metadata(), "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
               "widths": w, "items": n, "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "mean_prompt_tokens": sum(paths.lengths) / n,
               "results": results, "speedup": speedups, "cosine": cos, "mfu": mfu, "mfu_rounds": mfu_rounds,
               "flop_formula": flops_per_sequence.__doc__,
               "tokens_per_s_counts": "useful tokens (see useful_tokens: for freeret each prefix once plus every "
                                      "suffix, padding excluded) per wall second of the path's best round; "
                                      "phase_tokens splits freeret's into prefix, suffix and full (batches run "
                                      "without the prefix cache). "
                                      "Prefix and suffix are not timed apart here: the forward stops early at h^Attn_L"})
    bar_chart(out, list(results), {"items / s": [results[k]["items_per_s"] for k in results]}, "items / second",
              f"Embedding throughput, {bb.spec.name}, " + (f"{torch.get_num_threads()} CPU threads" if device.type == "cpu"
                                                            else torch.cuda.get_device_name(device)))


if __name__ == "__main__":
    main()
