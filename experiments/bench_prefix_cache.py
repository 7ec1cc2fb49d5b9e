"""Prefix KV caches for N suffixes: three Cache APIs on the same model and pair prompts, one run; time and memory.

    python experiments/bench_prefix_cache.py --model smollm2_135m --batch-size 16 32 --k 64

A WordNet definition's MCQ pair prompt is split as the pair scorer splits it (query prefix, candidate suffixes);
the prefix runs once, then the K candidates run as right-padded suffixes in batches after it, through the cache:
- ``deepcopy``: ``copy.deepcopy`` of the prefix ``DynamicCache``, then ``batch_repeat_interleave(N)`` per batch
  (the pair scorer before issue 13);
- ``ddp_expand``: ``DynamicCache(ddp_cache_data=expanded prefix)`` per batch (stage 1 before issue 13; the
  constructor's ``update`` concatenates onto an empty tensor, so the expanded views are materialised);
- ``views``: ``freeret.backbone.shared_prefix`` (read-only expanded views: each layer concatenates prefix and batch
  states for its own attention and keeps nothing).
Reported per batch size: pairs/s (best of ``--repeats``), the peak bytes of tensor storage allocated during one
batch's suffix forward and alive at once (counted op by op with a dispatch mode, so CPU and GPU alike, timing runs
without it; plotted beside the JSON), and the largest option-logit difference to ``views``.
"""

from __future__ import annotations

import copy
import weakref

import torch
from bench_rerank import text_rows
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import DynamicCache

from freeret.backbone.shared_prefix import Prefix
from freeret.bench import BENCH_OUT, bar_chart, best_of, conf, dataset_prompt, parser, set_threads, write
from freeret.bench_models import load
from freeret.rerank.framing import Framing
from freeret.rerank.scorers.choice import Choice

PATHS = ("deepcopy", "ddp_expand", "views")


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage that ops inside allocated and that are still referenced; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors referencing it]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.live:
                if ptr in inputs or storage.nbytes() == 0:
                    continue  # a view (or in-place result) of a tensor allocated before
                self.live[ptr] = [storage.nbytes(), 0]
                self.now += storage.nbytes()
                self.peak = max(self.peak, self.now)
            self.live[ptr][1] += 1
            weakref.finalize(t, self._drop, ptr)
        return out

    def _drop(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]


def batch_cache(path: str, prefix: Prefix, n: int, config) -> object:
    """The cache a batch of ``n`` suffixes runs with, built as ``path`` builds it."""
    if path == "views":
        return prefix.view(n)
    if path == "deepcopy":
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(n)
        return cache
    return DynamicCache(ddp_cache_data=[(layer.keys.expand(n, *layer.keys.shape[1:]),
                                         layer.values.expand(n, *layer.values.shape[1:])) for layer in prefix.cache.layers],
                        config=config)


@torch.no_grad()
def option_logits(scorer: Choice, path: str, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pair scorer's option logits of one suffix batch through the ``path`` cache."""
    shared = scorer.shared
    n, width = ids.shape
    hidden = shared.base(input_ids=ids, attention_mask=torch.cat([mask.new_ones(n, prefix.length), mask], 1),
                         position_ids=prefix.positions.suffix(n, width, ids.device),
                         past_key_values=batch_cache(path, prefix, n, shared.config), use_cache=True).last_hidden_state
    return shared.head_logits(hidden[torch.arange(n, device=hidden.device), mask.sum(1) - 1], scorer.rows)


def main() -> None:
    ap = parser(__doc__, model="smollm2_135m", layers=28, threads=1, repeats=3, device=True)
    ap.add_argument("--k", type=int, default=64, help="candidates per query")
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[16, 32])
    args = ap.parse_args()
    set_threads(args.threads)
    out = args.out or BENCH_OUT / f"prefix_cache_{args.model}.json"
    backbone = load(args.model, args.layers)
    backbone.model.to(args.device)
    scorer = Choice(backbone, Framing.from_dict(conf("framing", "mcq")).for_dataset(dataset_prompt("wordnet_rd")))
    work = []
    for query, cands in text_rows(args.k, args.queries):
        split = scorer.split(query)
        prefix = scorer.shared.run_prefix(backbone.inputs([split.prefix]))
        enc = backbone.tokenizer([split.suffix_for(c.text) for c in cands[: args.k]], add_special_tokens=False,
                                 padding=True, padding_side="right", return_tensors="pt")
        work.append((prefix, enc["input_ids"].to(args.device), enc["attention_mask"].to(args.device)))
    rows = []
    for bs in args.batch_size:
        chunks = [(p, ids[i : i + bs], mask[i : i + bs]) for p, ids, mask in work for i in range(0, len(ids), bs)]
        rec: dict[str, float | int] = {"batch_size": bs, "prefix_tokens": work[0][0].length,
                                       "pairs": sum(len(c[1]) for c in chunks)}
        reference = [option_logits(scorer, "views", *c) for c in chunks]
        # interleaved, so a busy machine slows every path alike
        best, last = best_of({path: (lambda path=path, chunks=chunks: [option_logits(scorer, path, *c) for c in chunks])
                              for path in PATHS}, args.repeats)
        for path in PATHS:
            rec[f"{path}_max_diff"] = max(float((g - r).abs().max()) for g, r in zip(last[path], reference))
            counter = LiveBytes()
            with counter:
                option_logits(scorer, path, *chunks[0])
            rec[f"{path}_pairs_per_s"] = rec["pairs"] / best[path].seconds
            rec[f"{path}_peak_mib"] = counter.peak / 2**20
        rows.append(rec)
        print(f"batch {bs} (prefix {rec['prefix_tokens']} tokens): " + " | ".join(
            f"{p} {rec[f'{p}_pairs_per_s']:.1f} pairs/s, peak {rec[f'{p}_peak_mib']:.1f} MiB, "
            f"diff {rec[f'{p}_max_diff']:.1e}" for p in PATHS))
    write(out, {"model": backbone.metadata(), "k": args.k, "queries": args.queries, "threads": args.threads,
                "results": rows})
    bar_chart(out, [f"batch {r['batch_size']}" for r in rows], {p: [r[f"{p}_peak_mib"] for r in rows] for p in PATHS},
              "peak MiB allocated in one suffix batch", f"Prefix cache APIs, {backbone.spec.name}")


if __name__ == "__main__":
    main()
