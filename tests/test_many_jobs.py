"""Many jobs, one cache: three processes embed overlapping dataset sets into one shared store at the same time, one
of them is SIGKILLed part-way and restarted. All finish, the vectors equal a single-process run bit for bit, no
temporary or lock file is left, and with work sharing (``embed.lock``, on for the shared cache) every planned
batch is computed once while the jobs really contend for batches.

The tiny model embeds a batch in milliseconds, far less than the jitter of three processes starting; each job's
embedding step therefore sleeps STEP_DELAY first (a slower model, as real checkpoints are), so the jobs overlap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from freeret.benchmark import run_all
from freeret.eval.results import RunResult
from freeret.retrieve.shards import read_shards
from freeret.workshare import LOCK_DIR
from helpers import REPO, compose

DATASETS = ("wordnet_cls_lexname", "wordnet_cls_hypernym", "wordnet_ret_def2lemma")  # 29, 24 and 104 unique items
JOBS = {"p1": DATASETS[:2], "p2": (DATASETS[0], DATASETS[2]), "p3": DATASETS[1:]}  # each dataset in two jobs
KILLED = "p3"
STEP_DELAY = 0.5  # seconds per embedding batch
# run.py with a slower embedding step (test support only: the library is untouched)
DRIVER = """
import runpy, sys, time
repo, delay = sys.argv[1], float(sys.argv[2])
sys.path.insert(0, repo)
import freeret.lit as lit
step = lit.EmbedModule.predict_step
def slower(self, batch, batch_idx, dataloader_idx=0):
    time.sleep(delay)
    return step(self, batch, batch_idx, dataloader_idx)
lit.EmbedModule.predict_step = slower
sys.argv = [repo + "/run.py", *sys.argv[3:]]
runpy.run_path(repo + "/run.py", run_name="__main__")
"""
ARGS = ["suite=wordnet_meta", "benchmark.limit=4", "model=tiny_qwen2vl", "embed.batch_size=4", "embed.shard_size=4",
        "threads=1", "logger=none", "trainer.enable_progress_bar=false"]


def job_args(cache: Path, datasets, lock: bool = True) -> list[str]:
    return [*ARGS, f"embed.cache_dir={cache}", f"benchmark.only=[{','.join(datasets)}]", f"embed.lock={str(lock).lower()}"]


def start(run_dir: Path, args: list[str]) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), str(STEP_DELAY), *args, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=run_dir)


def shard_writers(store: Path) -> dict[Path, tuple[str, list[str]]]:
    """Every shard's writer (``host:pid``) and keys."""
    from safetensors import safe_open

    out = {}
    for path in store.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        out[path] = (meta["writer"], json.loads(meta["keys"]))
    return out


def kill_after_first_shard(proc: subprocess.Popen, cache: Path) -> None:
    """SIGKILL ``proc`` once a shard it wrote is in the store (it is then mid-way through its work)."""
    deadline = time.time() + 600
    while True:
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        stores = [p for p in cache.iterdir() if p.is_dir()] if cache.exists() else []
        if stores and any(w.endswith(f":{proc.pid}") for w, _ in shard_writers(stores[0]).values()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def embeddings(shard: Path) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as fh:
        return fh.get_tensor("embeddings")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """One process, all three datasets, its own cache: the store and each dataset's metrics."""
    tmp_path = tmp_path_factory.mktemp("reference")
    cfg = OmegaConf.to_container(compose(job_args(tmp_path / "ref-cache", DATASETS, lock=False)), resolve=True)
    cfg["run_dir"] = str(tmp_path / "ref-run")
    threads = torch.get_num_threads()
    try:
        payloads = run_all(cfg)
    finally:
        torch.set_num_threads(threads)
    (store,) = [p for p in (tmp_path / "ref-cache").iterdir() if p.is_dir()]
    return store, {p.dataset: p.metrics for p in payloads}


@pytest.mark.parametrize("lock", [True, False], ids=["lock", "nolock"])
def test_three_jobs_share_one_store_one_killed_and_restarted(tmp_path, reference, lock):
    cache = tmp_path / "shared"
    t0 = time.perf_counter()
    procs = {name: start(tmp_path / name, job_args(cache, datasets, lock)) for name, datasets in JOBS.items()}
    kill_after_first_shard(procs[KILLED], cache)
    killed = procs[KILLED].pid
    procs[KILLED] = start(tmp_path / KILLED, job_args(cache, JOBS[KILLED], lock))  # restarted: same config and run dir
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0 and "Traceback" not in err, f"{name}: {err[-3000:]}"
    wall = time.perf_counter() - t0

    (store,) = [p for p in cache.iterdir() if p.is_dir()]
    assert not list(cache.rglob(".*.tmp")) and not list((store / LOCK_DIR).glob("*"))
    written = shard_writers(store)
    ref_store, ref_metrics = reference
    # one shard per batch, named by its keys: the same batches as the single process, each computed once...
    assert sorted(p.name for p in written) == sorted(p.name for p in ref_store.glob("*.safetensors"))
    # ...and the same vectors bit for bit
    assert all(torch.equal(embeddings(p), embeddings(ref_store / p.name)) for p in written)

    batches = {}  # per job: batches its final run computed, and those another job held when it came to them
    for name, datasets in JOBS.items():
        results = [RunResult.read(tmp_path / name / "results" / f"{d}.json") for d in datasets]
        assert {r.dataset: r.metrics for r in results} == {d: ref_metrics[d] for d in datasets}
        batches[name] = (sum(r.timing["embed_batches_computed"] for r in results),
                         sum(r.timing["embed_batches_held_elsewhere"] for r in results))
    by_killed = sum(1 for w, _ in written.values() if w.endswith(f":{killed}"))
    computed = sum(b for b, _ in batches.values()) + by_killed
    print(f"\nembed.lock={lock}: 3 jobs, {len(read_shards(store))} unique items in {len(written)} planned batches, "
          f"{computed} batches written, wall {wall:.1f}s; per job (batches computed by its final run, batches "
          f"another job held): {batches}; killed {KILLED} wrote {by_killed} before SIGKILL")
    if lock:
        assert computed == len(written)  # no batch computed twice...
        assert sum(h for _, h in batches.values()) > 0  # ...while the jobs contended for batches
