"""Cost growth of the embedding store: time and peak memory vs corpus size and vs K.

    python experiments/bench_scale.py --sizes 1000 10000 100000 --k 10 100 1000
Each size runs in its own process (peak RSS from getrusage): random vectors written as checksummed shards
(as the writer does), the store scanned and verified, a top-K search of Q queries over the whole corpus, and
per-row scoring of Q rows x 1,000 candidates. ``--mode gather`` does the same through the old path (every
embedding in one dict) for comparison. Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from freeret.bench import BENCH_OUT, parser, write

DIM = 576  # SmolLM2-135M hidden size


def worker(n: int, mode: str, ks: list[int], queries: int, shard_size: int, folder: Path) -> dict:
    """One corpus size in this process: write, scan, search, score; times and peak RSS."""
    from freeret.data.retrieval_set import Row
    from freeret.retrieve.scoring import score_rows, score_store, search_store
    from freeret.retrieve.shards import ShardStore, read_shards, shard_name, write_shard

    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for lo in range(0, n, shard_size):
        keys = [f"t-{i:07d}" for i in range(lo, min(n, lo + shard_size))]
        write_shard(folder / shard_name(keys), keys, torch.randn(len(keys), DIM, generator=gen))
    out = {"n": n, "mode": mode, "write_s": time.perf_counter() - t, "peak_rss_mb_after": {"write": peak_mb()}}
    q = torch.randn(queries, DIM, generator=gen)
    cands = torch.randint(0, n, (queries, min(1000, n)), generator=gen).tolist()
    rows = [Row(f"r{i}", f"t-{i:07d}", tuple(f"t-{j:07d}" for j in c)) for i, c in enumerate(cands)]  # fixed size
    t = time.perf_counter()
    if mode == "stream":
        store = ShardStore(folder).scan(want={k for r in rows for k in (r.query, *r.candidates)})
        out["scan_s"] = time.perf_counter() - t
        out["peak_rss_mb_after"]["scan"] = peak_mb()
        out["search_s"] = {}
        for k in ks:
            t = time.perf_counter()
            search_store(q, store, k)
            out["search_s"][str(k)] = time.perf_counter() - t
        out["peak_rss_mb_after"]["search"] = peak_mb()
        t = time.perf_counter()
        score_store(rows, store)
    else:
        emb = read_shards(folder)
        out["scan_s"] = time.perf_counter() - t
        out["search_s"] = {}
        for k in ks:
            t = time.perf_counter()
            dense = torch.nn.functional.normalize(torch.stack(list(emb.values())), dim=-1)
            (torch.nn.functional.normalize(q, dim=-1) @ dense.T).topk(k, dim=1)
            out["search_s"][str(k)] = time.perf_counter() - t
            del dense
        t = time.perf_counter()
        score_rows(rows, emb)
    out["score_rows_s"] = time.perf_counter() - t
    out["peak_rss_mb"] = out["peak_rss_mb_after"]["score_rows"] = peak_mb()
    return out


def peak_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = parser(__doc__, out=BENCH_OUT / "scale.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--k", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--modes", nargs="+", default=["stream", "gather"])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.mode, args.k, args.queries, args.shard_size, args.folder)))
        return

    runs = []
    for mode in args.modes:
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, __file__, "--worker", str(n), "--mode", mode, "--folder", tmp,
                       "--queries", str(args.queries), "--shard-size", str(args.shard_size), "--k", *map(str, args.k)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"{mode:6s} n={n:>7d}: write {res['write_s']:.2f}s scan {res['scan_s']:.2f}s "
                  f"search {res['search_s']} score_rows {res['score_rows_s']:.2f}s peak {res['peak_rss_mb']:.0f} MB")
            runs.append(res)
    stream = {r["n"]: r["peak_rss_mb"] for r in runs if r["mode"] == "stream"}
    growth = None
    if 10000 in stream and 100000 in stream:
        growth = stream[100000] / stream[10000] - 1
        print(f"stream peak RSS growth 10k -> 100k: {growth:+.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, {"dim": DIM, "queries": args.queries, "shard_size": args.shard_size, "runs": runs,
                    "stream_peak_growth_10k_100k": growth})
    plot(args.out, runs)


def plot(out: Path, runs: list[dict]) -> None:
    """Peak RSS and search time vs corpus size, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    for mode in sorted({r["mode"] for r in runs}):
        rs = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["n"])
        a.plot([r["n"] for r in rs], [r["peak_rss_mb"] for r in rs], "o-", label=mode)
        k = max(rs[0]["search_s"], key=int)
        b.plot([r["n"] for r in rs], [r["scan_s"] + r["search_s"][k] for r in rs], "o-", label=f"{mode} (scan + top-{k})")
    for ax, label in ((a, "peak RSS (MB)"), (b, "seconds")):
        ax.set_xscale("log"), ax.set_xlabel("candidates"), ax.set_ylabel(label), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
