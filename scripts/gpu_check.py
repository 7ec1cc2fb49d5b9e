"""The GPU check: every device path our users take, end to end on one GPU, in one command (~8 minutes on an H200).

    python scripts/gpu_check.py                    # on a GPU machine, after `bash scripts/setup.sh`
    python scripts/gpu_check.py --out $OUT         # write gpu_check.json and gpu_check.log there
    python scripts/gpu_check.py --device cpu --steps families --families tiny_qwen2vl   # the same wiring on a CPU

Steps (each a subprocess with its own time limit; a failed step is recorded and the next one runs):
- ``env``: torch, CUDA, the device name, bf16 support;
- ``families``: every tiny VLM family in bf16, stage 1 + reranking (``pipeline=two_stage``) on the bundled
  smoke set, which has image queries (image -> caption) and image candidates (caption -> image), as one
  ``-m`` sweep so Python starts once;
- ``mmeb_images``: the MMEB miniature's image -> image and image+text -> image datasets (NIGHTS, CIRR,
  RefCOCO-Matching) through the full Table-1 pipeline in bf16;
- ``ddp``: a one-GPU DDP run (``trainer=ddp trainer.devices=1``) with reranking;
- ``sweep``: a 2-job ``-m`` sweep under DDP (each job's ranks share its run dir);
- ``bench_embed``, ``bench_rerank_text``, ``bench_rerank_images``: the throughput benchmarks on the device.

Each run step checks its result files: the model ran on the device in the asked dtype, every dataset wrote
results, reranking scored rows. ``gpu_check.json`` holds every step's verdict, wall time, checks and figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from freeret.eval.results import RunResult

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("tiny_qwen2vl", "tiny_qwen25vl", "tiny_idefics3", "tiny_llava_ov", "tiny_internvl")
IMAGE_DATASETS = ("NIGHTS", "CIRR", "RefCOCO-Matching")  # image -> image, image + text -> image, both sides mixed
STEPS = ("env", "families", "mmeb_images", "ddp", "sweep", "bench_embed", "bench_rerank_text", "bench_rerank_images")
ENV_PROBE = (
    "import json, torch, transformers; c = torch.cuda.is_available(); print(json.dumps({"
    "'torch': torch.__version__, 'transformers': transformers.__version__, 'cuda_available': c, "
    "'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name(0) if c else None, "
    "'bf16': torch.cuda.is_bf16_supported() if c else None, 'gpus': torch.cuda.device_count()}))"
)


def run_args(device: str, dtype: str) -> list[str]:
    """Overrides every run.py step shares: the device, the dtype, quiet output."""
    accelerator = "gpu" if device == "cuda" else "cpu"
    return [f"trainer.accelerator={accelerator}", f"model.dtype={dtype}", "logger=none",
            "trainer.enable_progress_bar=false"]


def results_in(folder: Path) -> list[RunResult]:
    """Every result file under ``folder`` (a run dir or a sweep dir)."""
    return [RunResult.read(p) for p in sorted(folder.rglob("results/*.json"))]


def check_results(folder: Path, device: str, dtype: str, expect: int, rerank: bool) -> dict[str, Any]:
    """What the result files under ``folder`` say: device, dtype, datasets, reranked rows. Raises on a miss."""
    found = results_in(folder)
    problems = []
    if len(found) != expect:
        problems.append(f"{len(found)} result files, expected {expect}")
    for res in found:
        model, name = res.model, f"{res.model_name}/{res.dataset}"
        if model.get("device") != device:
            problems.append(f"{name}: ran on {model.get('device')}, not {device}")
        if model.get("dtype") != dtype:
            problems.append(f"{name}: dtype {model.get('dtype')}, not {dtype}")
        if rerank and not res.metrics.get("rerank"):
            problems.append(f"{name}: no rerank metrics")
    if problems:
        raise AssertionError("; ".join(problems))
    return {"results": len(found), "scores": {f"{r.model_name}/{r.dataset}": r.main_score for r in found},
            "wall_s": {f"{r.model_name}/{r.dataset}": round(r.timing["wall_seconds"], 2) for r in found}}


def check_sweep_dirs(folder: Path, jobs: int) -> dict[str, Any]:
    """A sweep wrote one folder per job and no stray timestamped sweep (the DDP rerun bug)."""
    job_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if len(job_dirs) != jobs:
        raise AssertionError(f"{len(job_dirs)} job folders under {folder}, expected {jobs}")
    return {"job_dirs": [p.name for p in job_dirs]}


def bench_figures(path: Path) -> dict[str, Any]:
    """The headline numbers of a benchmark JSON (its whole payload minus the environment)."""
    data = json.loads(path.read_text())
    data.pop("environment", None)
    return data


def plan(args: argparse.Namespace, out: Path) -> dict[str, tuple[list[str], Callable[[], dict[str, Any]] | None, int]]:
    """Each step: (command, check run after it, time limit in seconds)."""
    py, dev, dtype = sys.executable, args.device, args.dtype
    common = run_args(dev, dtype)
    fam = ",".join(args.families)
    steps: dict[str, tuple[list[str], Callable[[], dict[str, Any]] | None, int]] = {
        "env": ([py, "-c", ENV_PROBE], None, 60),
        "families": ([py, "run.py", "-m", f"model={fam}", "dataset=smoke_mm", "pipeline=two_stage", "pipeline.top_k=4",
                      *common, f"hydra.sweep.dir={out / 'families'}"],
                     lambda: {**check_results(out / "families", dev, dtype, len(args.families), True),
                              **check_sweep_dirs(out / "families", len(args.families))}, 240),
        "mmeb_images": ([py, "run.py", "experiment=mmeb_table1", "mode=fast", "model=tiny_qwen25vl",
                         f"benchmark.only=[{','.join(IMAGE_DATASETS)}]", *common, f"hydra.run.dir={out / 'mmeb_images'}"],
                        lambda: check_results(out / "mmeb_images", dev, dtype, len(IMAGE_DATASETS), True), 150),
        "ddp": ([py, "run.py", "trainer=ddp", "trainer.devices=1", "model=tiny_qwen2vl", "dataset=smoke_mm",
                 "pipeline=two_stage", "pipeline.top_k=4", *common, f"hydra.run.dir={out / 'ddp'}"],
                lambda: check_results(out / "ddp", dev, dtype, 1, True), 150),
        "sweep": ([py, "run.py", "-m", "trainer=ddp", "trainer.devices=1", "model=tiny_idefics3", "dataset=smoke_mm",
                   "layer=attn_last,mlp_last", *common, f"hydra.sweep.dir={out / 'sweep'}"],
                  lambda: {**check_results(out / "sweep", dev, dtype, 2, False), **check_sweep_dirs(out / "sweep", 2)}, 150),
        "bench_embed": ([py, "experiments/bench_embed.py", "--model", "qwen2vl_2b_dims", "--layers", str(args.bench_layers),
                         "--items", str(args.bench_items), "--device", dev, "--out", str(out / "bench_embed.json")],
                        lambda: bench_figures(out / "bench_embed.json"), 240),
        "bench_rerank_text": ([py, "experiments/bench_rerank.py", "--device", dev, "--queries", "2", "--k", "10", "50",
                               "--out", str(out / "bench_rerank_text.json")],
                              lambda: bench_figures(out / "bench_rerank_text.json"), 180),
        "bench_rerank_images": ([py, "experiments/bench_rerank.py", "--device", dev, "--case", "image_candidates",
                                 "--model", "qwen2vl_2b_dims", "--layers", str(args.bench_layers), "--queries", "4",
                                 "--k", "8", "32", "--workers", "4", "--out", str(out / "bench_rerank_images.json")],
                                lambda: bench_figures(out / "bench_rerank_images.json"), 240),
    }
    return {name: steps[name] for name in args.steps}


def run_step(name: str, command: list[str], check: Callable[[], dict[str, Any]] | None, limit: int,
             log: Any) -> dict[str, Any]:
    """Run one step with its time limit, append its output to the log, then check what it wrote."""
    log.write(f"\n===== {name}: {' '.join(command)}\n")
    log.flush()
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    record: dict[str, Any] = {"command": command}
    try:
        proc = subprocess.run(command, check=False, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=limit)
        output, record["returncode"] = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        record["returncode"] = None
        record["error"] = f"timed out after {limit} s"
    record["wall_s"] = round(time.perf_counter() - start, 1)
    log.write(output)
    log.flush()
    record["tail"] = output.strip().splitlines()[-6:]
    if record["returncode"] == 0:
        try:
            record["figures"] = check() if check else json.loads(output.strip().splitlines()[-1])
            record["ok"] = True
        except Exception as exc:  # noqa: BLE001 - a failed check is this step's verdict, the next step still runs
            record["ok"], record["error"] = False, f"{type(exc).__name__}: {exc}"
    else:
        record["ok"] = False
        record.setdefault("error", f"exit code {record['returncode']}")
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the chosen steps, write ``gpu_check.json`` and ``gpu_check.log``; exit 1 if any step failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON, the log and the runs")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", default=None, help="model dtype of the runs (default bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--families", default=",".join(FAMILIES), help="tiny model configs of the families step")
    parser.add_argument("--bench-layers", type=int, default=28, help="decoder layers of the 2B-width benchmark model")
    parser.add_argument("--bench-items", type=int, default=512)
    args = parser.parse_args(argv)
    args.steps = [s for s in args.steps.split(",") if s]
    args.families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(args.steps) - set(STEPS)) + sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown step or family: {', '.join(unknown)}")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    out = (args.out or REPO / "gpu_check" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "host": platform.node(),
                              "started": datetime.now().isoformat(timespec="seconds"), "steps": {}}
    start = time.perf_counter()
    with open(out / "gpu_check.log", "w") as log:
        for name, (command, check, limit) in plan(args, out).items():
            print(f"[gpu_check] {name} ...", flush=True)
            record = run_step(name, command, check, limit, log)
            report["steps"][name] = record
            print(f"[gpu_check] {name}: {'ok' if record['ok'] else 'FAILED (' + record['error'] + ')'} "
                  f"in {record['wall_s']} s", flush=True)
            report["wall_s"] = round(time.perf_counter() - start, 1)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")  # kept current if killed
    failed = [n for n, r in report["steps"].items() if not r["ok"]]
    print(f"[gpu_check] {len(report['steps']) - len(failed)}/{len(report['steps'])} steps ok in {report['wall_s']} s; "
          f"{out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
