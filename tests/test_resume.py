"""Run integrity: a SIGKILLed run resumes from its finished shards, a torn shard is recomputed, the cache skips
finished work, and the same config twice gives the same results file (apart from timings)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from freeret.retrieve.shards import check_shard
from freeret.run.pipeline import run
from helpers import REPO, compose

QUIET = ["logger=none", "trainer.enable_progress_bar=false"]
# one shard per batch of 2 prompts, in the run dir: 16 shards for the 32 items of the image smoke set
ARGS = ["model=tiny_qwen2vl", "dataset=smoke_mm", "embed.cache=false", "embed.batch_size=2", "embed.shard_size=2", *QUIET]


def comparable(payload: dict) -> dict:
    """A results payload without what may differ between identical runs: timings and the run dir."""
    out = copy.deepcopy(payload)
    out.pop("timing")
    out["config"].pop("run_dir", None)
    return out


def run_in_process(run_dir: Path, overrides: list[str]) -> dict:
    cfg = OmegaConf.to_container(compose([*ARGS, *overrides]), resolve=True)
    cfg["run_dir"] = str(run_dir)
    run(cfg)
    return json.loads((run_dir / "results" / "smoke_mm.json").read_text())  # the file, not the in-memory dict


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted single-process run with ARGS."""
    return run_in_process(tmp_path_factory.mktemp("reference"), [])


def test_same_config_twice_gives_identical_results(tmp_path, reference):
    again = run_in_process(tmp_path, [])
    assert reference["timing"]["embed_items_computed"] == again["timing"]["embed_items_computed"] == 32
    assert comparable(again) == comparable(reference)


def test_cache_skips_finished_work_and_a_torn_shard_is_recomputed(tmp_path):
    args = ["embed.cache=true", f"embed.cache_dir={tmp_path / 'cache'}", "embed.batch_size=4", "embed.shard_size=4"]
    first = run_in_process(tmp_path / "r1", args)
    assert first["timing"]["embed_items_computed"] == 32
    second = run_in_process(tmp_path / "r2", args)  # another run dir, same vectors: nothing to embed
    assert second["timing"]["embed_items_computed"] == 0 and second["timing"]["embed_items_reused"] == 32
    store = Path(second["timing"]["embed_store"])
    victim = sorted(store.glob("*.safetensors"))[2]
    victim.write_bytes(victim.read_bytes()[:-100])  # torn: a crash mid-write on a filesystem without atomic rename
    third = run_in_process(tmp_path / "r3", args)
    assert third["timing"]["embed_shards_dropped"] == 1 and third["timing"]["embed_items_computed"] == 4
    assert comparable(first) == comparable(second) == comparable(third)


def start(run_dir: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=run_dir.parent)


def kill_when(proc: subprocess.Popen, run_dir: Path, pattern: str, n: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` (SIGKILL: and wait for the death) as soon as ``n`` files match ``pattern`` under its run dir."""
    deadline = time.time() + 300
    while len(list(run_dir.glob(pattern))) < n:
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(sig)
    if sig == signal.SIGKILL:
        assert proc.wait() == -signal.SIGKILL


def test_sigkill_mid_prediction_resumes_from_finished_shards(tmp_path, reference):
    """kill -9 once 2 of the 16 shards exist, rerun with the same config and run dir, compare."""
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    kill_when(start(run_dir, ARGS), run_dir, "embeddings/*/*/rank0-*.safetensors", 2)
    assert not (run_dir / "results").exists()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run_dir.glob("embeddings/*/*/*.safetensors")}
    done_items = 2 * len(finished)
    assert 2 <= len(finished) < 16

    again = start(run_dir, ARGS)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    resumed = json.loads((run_dir / "results" / "smoke_mm.json").read_text())
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == stat for p, stat in finished.items())  # reused untouched
    assert resumed["timing"]["embed_items_reused"] == done_items
    assert resumed["timing"]["embed_items_computed"] == 32 - done_items  # none of the finished shards recomputed
    assert comparable(resumed) == comparable(reference)


def test_sigterm_mid_prediction_stops_cleanly_and_a_rerun_resumes(tmp_path, reference):
    """SLURM preemption / scancel: SIGTERM once 2 of the 16 shards exist. The run finishes or drops its batch in
    flight, leaves whole shards and no temporary, exits 143 with one line; the rerun recomputes no finished shard."""
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    proc = start(run_dir, ARGS)
    kill_when(proc, run_dir, "embeddings/*/*/rank0-*.safetensors", 2, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("error:")]
    assert said == ["error: stopped by SIGTERM; every finished shard is saved, so a rerun with the same config "
                    "resumes where this one stopped"] and "Traceback" not in err
    assert not (run_dir / "results").exists() and not list(run_dir.rglob(".*.tmp"))
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run_dir.glob("embeddings/*/*/*.safetensors")}
    assert 2 <= len(finished) < 16 and all(check_shard(p) for p in finished)

    again = start(run_dir, ARGS)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    resumed = json.loads((run_dir / "results" / "smoke_mm.json").read_text())
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == stat for p, stat in finished.items())  # reused untouched
    assert resumed["timing"]["embed_items_computed"] == 32 - 2 * len(finished)  # no finished shard recomputed
    assert comparable(resumed) == comparable(reference)


def test_ddp_two_cpu_processes_write_rank_shards_that_merge(tmp_path, reference):
    """trainer=ddp (2 processes, gloo): each rank writes its own shards; rank 0 scores the union."""
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    proc = start(run_dir, [*ARGS, "trainer=ddp", "trainer.enable_progress_bar=false"])
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    res = json.loads((run_dir / "results" / "smoke_mm.json").read_text())
    keys = {rank: [k for p in run_dir.glob(f"embeddings/*/*/rank{rank}-*.safetensors") for k in check_shard(p)]
            for rank in (0, 1)}
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])  # disjoint shares, both ranks worked
    assert len(set(keys[0]) | set(keys[1])) == 32 == res["timing"]["embed_items_computed"]
    single, multi = comparable(reference), comparable(res)
    for payload in (single, multi):  # the trainer and the threads per process differ, nothing else may
        payload["config"].pop("trainer"), payload["environment"].pop("cpu_threads")
    assert multi == single  # same batches, same vectors, same scores and metrics


def test_ddp_sweep_gives_each_job_one_run_dir_shared_by_its_ranks(tmp_path, reference):
    """``run.py -m ... trainer=ddp`` with 2 jobs: Lightning restarts rank 1 from the command line (which holds
    ``-m``); rank 1 used to open a sweep folder of its own and write its shards where rank 0 never read them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "-m", *ARGS, "trainer=ddp", "layer=attn_last,mlp_last"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the default sweep folder, multirun/<date>/<time>/: one for the whole sweep, from every rank, and nothing else
    assert [p.name for p in tmp_path.iterdir()] == ["multirun"]
    [sweep] = tmp_path.glob("multirun/*/*")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, layer in (("0", "attn_last"), ("1", "mlp_last")):
        run_dir = sweep / job
        assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 ran in this job's folder
        res = json.loads((run_dir / "results" / "smoke_mm.json").read_text())
        assert res["config"]["layer"] == OmegaConf.to_container(compose([f"layer={layer}"]).layer)
        for rank in (0, 1):
            assert list(run_dir.glob(f"embeddings/smoke_mm/*/rank{rank}-*.safetensors")), (job, rank)
        assert res["timing"]["embed_items_computed"] == 32
    single, multi = comparable(reference), comparable(json.loads((sweep / "0" / "results" / "smoke_mm.json").read_text()))
    for payload in (single, multi):
        payload["config"].pop("trainer"), payload["environment"].pop("cpu_threads")
    assert multi == single  # job 0 (attn_last, the default) scores exactly as one process does


SUITE = ["suite=wordnet_meta", "benchmark.only=[wordnet_cls_lexname,wordnet_ret_def2lemma]", "benchmark.limit=4",
         "model=tiny_qwen2vl", "pipeline=two_stage", "pipeline.top_k=3", "embed.cache=false", "embed.batch_size=8",
         "embed.shard_size=8", "pipeline.shard_size=1", "pipeline.queries_per_step=1", *QUIET]


def test_ddp_runs_a_two_stage_suite_like_one_process(tmp_path):
    """trainer=ddp over a two-dataset suite with reranking: every rank embeds and reranks its share of every
    dataset, rank 0 alone writes results, and they equal the single-process run's."""
    runs = {}
    for name, extra in (("single", []), ("ddp", ["trainer=ddp"])):
        run_dir = tmp_path / name
        run_dir.mkdir()
        proc = start(run_dir, [*SUITE, *extra])
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        runs[name] = run_dir
        assert out.count("rerank") == 2  # one summary line per dataset, printed once (by rank 0)
    for dataset in ("wordnet_cls_lexname", "wordnet_ret_def2lemma"):
        ddp = runs["ddp"]
        for pattern in (f"embeddings/{dataset}/*/rank{{r}}-*.safetensors", f"rerank/{dataset}/*/rank{{r}}-*.jsonl"):
            assert all(list(ddp.glob(pattern.format(r=r))) for r in (0, 1)), pattern  # both ranks worked
        rows = [json.loads(line)["row"] for p in ddp.glob(f"rerank/{dataset}/*/*.jsonl") for line in p.read_text().splitlines()]
        assert len(rows) == len(set(rows)) == 4  # each row reranked once, by one rank
        single, multi = (comparable(json.loads((runs[n] / "results" / f"{dataset}.json").read_text())) for n in ("single", "ddp"))
        for payload in (single, multi):
            payload["config"].pop("trainer"), payload["environment"].pop("cpu_threads")
        assert multi == single


def test_slurm_launcher_config_composes_for_a_sweep():
    """The README's cluster command: hydra/launcher=slurm resolves to submitit's SLURM launcher."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True,
                            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "embed.cache_dir=/shared/emb"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and cfg.embed.cache_dir == "/shared/emb"


def test_sigkill_mid_rerank_resumes_from_finished_rerank_shards(tmp_path):
    """Stage 2 resumes too: kill -9 once 2 of the 8 rerank shards exist; the rerun scores only the other rows."""
    stage2 = ["pipeline=two_stage", "pipeline.top_k=3", "pipeline.shard_size=2", "pipeline.queries_per_step=2"]
    args = [*ARGS, *stage2]
    reference = run_in_process(tmp_path / "reference", stage2)
    assert reference["timing"]["rerank_rows_computed"] == 16
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    kill_when(start(run_dir, args), run_dir, "rerank/*/*/rank0-*.jsonl", 2)
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run_dir.glob("rerank/*/*/*.jsonl")}
    assert 2 <= len(finished) < 8
    again = start(run_dir, args)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    resumed = json.loads((run_dir / "results" / "smoke_mm.json").read_text())
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == stat for p, stat in finished.items())
    assert resumed["timing"]["rerank_rows_reused"] == 2 * len(finished)
    assert resumed["timing"]["rerank_rows_computed"] == 16 - 2 * len(finished)
    assert resumed["timing"]["embed_items_computed"] == 0  # stage 1 had finished before the kill
    assert comparable(resumed) == comparable(reference)


def test_torn_rerank_shard_is_dropped_and_rescored(tmp_path):
    args = ["pipeline=two_stage", "pipeline.top_k=3", "pipeline.shard_size=4", "pipeline.queries_per_step=4"]
    first = run_in_process(tmp_path, args)
    shards = sorted(tmp_path.glob("rerank/*/*/*.jsonl"))
    assert len(shards) == 4
    shards[1].write_text(shards[1].read_text()[:-40])  # a half-written line
    second = run_in_process(tmp_path, args)
    assert second["timing"]["rerank_rows_reused"] == 12 and second["timing"]["rerank_rows_computed"] == 4
    assert comparable(second) == comparable(first)
