"""Search: exact torch top-k vs faiss IndexFlatIP vs faiss IVF (an nprobe sweep) and optionally HNSW (an efSearch
sweep) on random unit vectors, same run.

    python experiments/bench_search.py --n 1000000 --dims 576 1536 --data uniform clustered
    python experiments/bench_search.py --n 1000000 --dims 576 --data clustered --hnsw --threads 2
Prints queries/s of each, the speed-up over exact torch, and recall@k against the exact top-k; writes JSON + plot.
"uniform" = i.i.d. Gaussian directions (the hardest case for any ANN index); "clustered" = a Gaussian mixture
(unit centres + noise, then normalised), closer to real embeddings, which are far from uniform.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import numpy as np
import torch

from freeret.bench import BENCH_OUT, best_of, parser, write
from freeret.cli import one_line_errors
from freeret.search import build_index, exact_topk, faiss_module, recall_at_k


def make_vectors(n: int, dim: int, kind: str, centres: int, noise: float, seed: int) -> np.ndarray:
    """(n, dim) float32 unit vectors: uniform directions or a Gaussian mixture; generated in chunks."""
    gen = torch.Generator().manual_seed(seed)
    centre_gen = torch.Generator().manual_seed(12345)  # base and queries share the mixture's centres
    mix = torch.nn.functional.normalize(torch.randn(centres, dim, generator=centre_gen), dim=1)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 131_072):
        m = min(131_072, n - start)
        x = torch.randn(m, dim, generator=gen)
        if kind == "clustered":
            x = mix[torch.randint(centres, (m,), generator=gen)] + noise * x / dim**0.5
        out[start : start + m] = torch.nn.functional.normalize(x, dim=1).numpy()
    return out


def set_threads(n: int) -> None:
    """Same thread count for torch and faiss, so neither side gets more cores (a missing faiss stops here)."""
    faiss = faiss_module("experiments/bench_search.py")
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last result (the shared best-of-N timer, one variant)."""
    best, last = best_of({"search": fn}, repeats)
    return best["search"].seconds, last["search"]


def knob_sweep(index, knob: str, values: list[int], queries: np.ndarray, truth: np.ndarray, exact_s: float,
               args: argparse.Namespace, label: str) -> tuple[list[dict], dict | None]:
    """Search at each value of one query-time knob (nprobe, ef_search): rows of speed and recall@k against exact,
    and the fastest row at the target recall (None if none reaches it)."""
    k, sweep = args.k, []
    for value in values:
        index.set_search_params(**{knob: value})
        s, (_, ids) = timed(lambda: index.search(queries, k), args.repeats)
        sweep.append({knob: value, "seconds": s, "qps": args.queries / s, "speedup_vs_exact": exact_s / s,
                      f"recall@{k}": recall_at_k(ids, truth)})
        print(f"  {label}={value}: {args.queries / s:.0f} q/s (x{exact_s / s:.1f}) "
              f"recall@{k} {sweep[-1][f'recall@{k}']:.4f}", flush=True)
    good = [r for r in sweep if r[f"recall@{k}"] >= args.target_recall]
    return sweep, max(good, key=lambda r: r["qps"]) if good else None


def bench_one(n: int, dim: int, kind: str, args: argparse.Namespace) -> dict:
    """One (size, dim, data kind) case: exact, flat, IVF at each nprobe."""
    t0 = time.perf_counter()
    base = make_vectors(n, dim, kind, args.centres, args.noise, seed=1)
    queries = make_vectors(args.queries, dim, kind, args.centres, args.noise, seed=2)
    gen_s = time.perf_counter() - t0
    q = torch.from_numpy(queries)
    base_t = torch.from_numpy(base)  # shares memory with ``base``
    k = args.k
    exact_s, (_, truth) = timed(lambda b=base_t: exact_topk(b, q, k), args.repeats)
    truth = truth.numpy()
    rec: dict = {"n": n, "dim": dim, "data": kind, "queries": args.queries, "k": k, "generate_s": gen_s,
                 "exact": {"seconds": exact_s, "qps": args.queries / exact_s}}
    line = f"n={n} d={dim} {kind}: exact torch {args.queries / exact_s:.0f} q/s"

    t = time.perf_counter()
    flat = build_index(base, "flat")
    build_s = time.perf_counter() - t
    flat_s, (_, ids) = timed(lambda index=flat: index.search(queries, k), args.repeats)
    rec["flat"] = {"seconds": flat_s, "qps": args.queries / flat_s, "speedup_vs_exact": exact_s / flat_s,
                   "build_s": build_s, f"recall@{k}": recall_at_k(ids, truth)}
    line += f" | faiss flat {args.queries / flat_s:.0f} q/s (x{exact_s / flat_s:.2f}, recall {rec['flat'][f'recall@{k}']:.4f})"
    del flat
    gc.collect()

    t = time.perf_counter()
    ivf = build_index(base, "ivf", nlist=args.nlist, train_size=args.train_size)
    build_s = time.perf_counter() - t
    sweep, best = knob_sweep(ivf, "nprobe", args.nprobe, queries, truth, exact_s, args, f"ivf nlist={args.nlist} nprobe")
    rec["ivf"] = {"nlist": ivf.params["nlist"], "train_size": ivf.params["train_size"], "build_s": build_s,
                  "sweep": sweep, "best_at_target": best, "target_recall": args.target_recall}
    line += (f" | ivf nprobe={best['nprobe']} {best['qps']:.0f} q/s (x{best['speedup_vs_exact']:.1f}, "
             f"recall {best[f'recall@{k}']:.4f})" if best else f" | ivf never reached recall {args.target_recall}")
    del ivf
    gc.collect()
    if args.hnsw:
        rec["hnsw"] = bench_hnsw(base, queries, truth, exact_s, args)
        best = rec["hnsw"]["best_at_target"]
        line += (f" | hnsw ef={best['ef_search']} {best['qps']:.0f} q/s (x{best['speedup_vs_exact']:.1f}, "
                 f"recall {best[f'recall@{k}']:.4f})" if best else f" | hnsw never reached recall {args.target_recall}")
    print(line, flush=True)
    del base, base_t
    gc.collect()
    return rec


def bench_hnsw(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, exact_s: float, args: argparse.Namespace) -> dict:
    """faiss HNSW (graph index): build once, then an efSearch sweep; speed-up and recall against exact torch."""
    t = time.perf_counter()
    index = build_index(base, "hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    build_s = time.perf_counter() - t
    print(f"  hnsw M={args.hnsw_m} efConstruction={args.ef_construction}: built in {build_s:.0f} s", flush=True)
    sweep, best = knob_sweep(index, "ef_search", args.ef_search, queries, truth, exact_s, args, "hnsw efSearch")
    del index
    gc.collect()
    return {"m": args.hnsw_m, "ef_construction": args.ef_construction, "build_s": build_s, "sweep": sweep,
            "best_at_target": best, "target_recall": args.target_recall}


def plot(out: Path, cases: list[dict], k: int) -> None:
    """Recall@k vs speed-up over exact torch, one line per case (the IVF nprobe sweep), flat as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for c in cases:
        sweep = c["ivf"]["sweep"]
        label = f"ivf d={c['dim']} {c['data']}"
        ax.plot([r["speedup_vs_exact"] for r in sweep], [r[f"recall@{k}"] for r in sweep], "o-", ms=3, label=label)
        ax.plot([c["flat"]["speedup_vs_exact"]], [c["flat"][f"recall@{k}"]], "k^", ms=5)
        if "hnsw" in c:
            hs = c["hnsw"]["sweep"]
            ax.plot([r["speedup_vs_exact"] for r in hs], [r[f"recall@{k}"] for r in hs], "s--", ms=3,
                    label=f"hnsw d={c['dim']} {c['data']}")
    ax.axhline(0.99, color="grey", ls="--", lw=1)
    ax.axvline(10, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s relative to exact torch (log)")
    ax.set_ylabel(f"recall@{k} vs exact")
    ax.set_title(f"Search on {cases[0]['n']:,} unit vectors (triangles: faiss flat)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")


def main() -> None:
    ap = parser(__doc__, threads=1, threads_help="torch and faiss threads (1 is steadiest on a shared CPU)", repeats=2,
                repeats_help="best of N timed runs per search", out=BENCH_OUT / "search.json")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[576, 1536])
    ap.add_argument("--data", nargs="+", default=["clustered", "uniform"], choices=["clustered", "uniform"])
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--train-size", type=int, default=40_960, help="k-means sample (faiss wants >= 39 per list)")
    ap.add_argument("--centres", type=int, default=1024, help="mixture components of the clustered data")
    ap.add_argument("--noise", type=float, default=1.5, help="noise norm relative to the unit centre")
    ap.add_argument("--target-recall", type=float, default=0.99)
    ap.add_argument("--hnsw", action="store_true", help="also build and sweep an HNSW index (slow to build at 1M)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    args = ap.parse_args()
    one_line_errors(lambda: set_threads(args.threads))

    cases = []
    for dim in args.dims:
        for kind in args.data:
            cases.append(bench_one(args.n, dim, kind, args))
            write(args.out, {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                            "torch_threads": torch.get_num_threads(), "cases": cases})  # after each case
            plot(args.out, cases, args.k)


if __name__ == "__main__":
    main()
