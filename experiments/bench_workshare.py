"""What work sharing (``embed.lock``) costs per batch, beside the shard write it guards.

    python experiments/bench_workshare.py --shards 16 256 2048 --batches 200
For a store already holding S shards, per planned batch: take the batch's file lock, re-read the store (list the
folder, index new shards) and check the batch is missing, then release the lock and remove its file, which is
what a job does around each batch with ``embed.lock`` on. The atomic write of one shard of ``--batch-size`` vectors
(temporary, fsync, rename) is timed in the same run for scale. Writes JSON and a PNG.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from freeret.bench import BENCH_OUT, bar_chart, parser, write

DIM = 576  # SmolLM2-135M hidden size


def measure(n_shards: int, batches: int, batch_size: int, folder: Path) -> dict:
    """Milliseconds per batch: lock + store re-read + release, and one shard write, over a store of n_shards."""
    from freeret.lit import batch_finished
    from freeret.retrieve.shards import ShardStore, shard_name, write_shard
    from freeret.workshare import BatchClaims, batch_id

    gen = torch.Generator().manual_seed(0)
    for s in range(n_shards):
        keys = [f"s{s}-{i}" for i in range(batch_size)]
        write_shard(folder / shard_name(keys), keys, torch.randn(batch_size, DIM, generator=gen))
    store = ShardStore(folder).scan()
    claims = BatchClaims(folder)
    todo = [[f"b{b}-{i}" for i in range(batch_size)] for b in range(batches)]
    t = time.perf_counter()
    for keys in todo:
        bid = batch_id(keys)
        assert claims.try_claim(bid) and not batch_finished(store, keys)
        claims.release(bid, done=True)
    lock_ms = (time.perf_counter() - t) / batches * 1e3
    vectors = torch.randn(batch_size, DIM, generator=gen)
    t = time.perf_counter()
    for keys in todo:
        write_shard(folder / shard_name(keys), keys, vectors)
    write_ms = (time.perf_counter() - t) / batches * 1e3
    return {"shards": n_shards, "lock_refresh_release_ms": lock_ms, "shard_write_ms": write_ms}


def main() -> None:
    ap = parser(__doc__, out=BENCH_OUT / "workshare.json")
    ap.add_argument("--shards", type=int, nargs="+", default=[16, 256, 2048])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dir", type=Path, default=None, help="where the store goes (default: a temporary folder; "
                    "point it at a shared disk to measure that disk)")
    args = ap.parse_args()
    runs = []
    for n in args.shards:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            res = measure(n, args.batches, args.batch_size, Path(tmp))
        res["ratio"] = res["lock_refresh_release_ms"] / res["shard_write_ms"]
        print(f"store of {n:>5d} shards: lock + re-read + release {res['lock_refresh_release_ms']:.2f} ms/batch, "
              f"shard write {res['shard_write_ms']:.2f} ms/batch (x{res['ratio']:.2f})")
        runs.append(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, {"dim": DIM, "batch_size": args.batch_size, "batches": args.batches, "runs": runs})
    bar_chart(args.out.with_suffix(".png"), [str(r["shards"]) for r in runs],
              {"lock + re-read + release": [r["lock_refresh_release_ms"] for r in runs],
               "shard write": [r["shard_write_ms"] for r in runs]},
              "ms per batch", "work sharing cost vs store size (shards)")


if __name__ == "__main__":
    main()
