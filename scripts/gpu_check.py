"""The GPU check: every device path our users take, end to end on one GPU, in one command within a time budget.

    bash scripts/gpu_check.sh --out $OUT           # the way to run it (PYTHONPATH, the offline bundle; docs/gpu.md)
    bash scripts/gpu_check.sh --device cpu --steps env,families --families tiny_qwen2vl   # the same wiring on a CPU

Steps (each a subprocess with a stated minimum time and a time limit; a failed step is recorded and the next runs):
- ``env``: Python, torch, CUDA, the device, bf16, transformers, lightning, hydra, omegaconf, torchvision, where each
  key module imports from, and any version outside setup.cfg's ranges (then the step fails);
- ``families``: every tiny VLM family in bf16, stage 1 + reranking (``pipeline=two_stage``) on the bundled
  smoke set, which has image queries (image -> caption) and image candidates (caption -> image), as one
  ``-m`` sweep so Python starts once;
- ``mmeb_images``: the MMEB miniature's image -> image and image+text -> image datasets (NIGHTS, CIRR,
  RefCOCO-Matching) through the full Table-1 pipeline in bf16;
- ``ddp``: a one-GPU DDP run (``trainer=ddp trainer.devices=1``) with reranking;
- ``sweep``: a 2-job ``-m`` sweep under DDP (each job's ranks share its run dir);
- ``bench_embed``, ``bench_rerank_text``, ``bench_rerank_images``: the throughput benchmarks on the device, with
  tokens/s of prefix and suffix work (``bench_rerank_text`` runs random SmolLM2-shaped weights where the real
  ones are absent; its figures say which).

``--budget`` (seconds, default 480) bounds the whole run: a step starts only when at least its minimum is left and
its limit is capped by what is left; one that cannot start is recorded as skipped. Each run step checks its result
files: the model ran on the device in the asked dtype, every dataset wrote results, reranking scored rows.
``--out`` receives ``gpu_check.json`` (every step's verdict, wall time, checks and figures) and ``gpu_check.log``
only; runs, benchmark JSONs and plots go to ``--scratch`` (default a temporary folder; the JSON names it).
Exit status: 0 when no step failed (skipped steps included), 1 when one did, 2 when freeret does not import.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("tiny_qwen2vl", "tiny_qwen25vl", "tiny_idefics3", "tiny_llava_ov", "tiny_internvl")
IMAGE_DATASETS = ("NIGHTS", "CIRR", "RefCOCO-Matching")  # image -> image, image + text -> image, both sides mixed
STEPS = ("env", "families", "mmeb_images", "ddp", "sweep", "bench_embed", "bench_rerank_text", "bench_rerank_images",
         "bench_rerank_scorers")
DEFAULT_BUDGET = 480  # seconds: the whole default list on one H100 (estimated, docs/gpu.md), under the host's 9 minutes
CPU_LIMITS = 10  # step limits are sized for a GPU; with --device cpu they are this many times longer (budget still caps)


class StepFailed(AssertionError):
    """A check that failed but has figures worth keeping (e.g. the env step's versions)."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


class Step(NamedTuple):
    """One step: its command, the check of what it wrote (given its output), its limit and minimum (seconds), and
    the scratch paths it writes."""

    command: list[str]
    check: Callable[[str], dict[str, Any]]
    limit: int
    minimum: int
    artifacts: tuple[Path, ...] = ()


def run_args(device: str, dtype: str) -> list[str]:
    """Overrides every run.py step shares: the device, the dtype, quiet output."""
    accelerator = "gpu" if device == "cuda" else "cpu"
    return [f"trainer.accelerator={accelerator}", f"model.dtype={dtype}", "logger=none",
            "trainer.enable_progress_bar=false"]


def results_in(folder: Path) -> list[Any]:
    """Every result file under ``folder`` (a run dir or a sweep dir), as ``RunResult``s."""
    from freeret.eval.results import RunResult

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


def check_env(output: str, device: str) -> dict[str, Any]:
    """The env probe's record; fails when a version is outside setup.cfg's ranges or CUDA was asked but is absent."""
    figures = json.loads(output.strip().splitlines()[-1])
    problems = list(figures.get("unmet") or [])
    if device == "cuda" and not figures.get("cuda_available"):
        problems.append("CUDA is not available")
    if problems:
        raise StepFailed("; ".join(problems), figures)
    return figures


def plan(args: argparse.Namespace, scratch: Path) -> dict[str, Step]:
    """Each chosen step: command, check, limit and minimum (seconds, sized for one H100), scratch paths."""
    py, dev, dtype = sys.executable, args.device, args.dtype
    common = run_args(dev, dtype)
    fam = ",".join(args.families)
    bench = {name: scratch / f"{name}.json" for name in ("bench_embed", "bench_rerank_text", "bench_rerank_images",
                                                         "bench_rerank_scorers")}
    steps = {
        "env": Step([py, "scripts/gpu_env.py", "probe"], lambda out: check_env(out, dev), 60, 5),
        "families": Step([py, "run.py", "-m", f"model={fam}", "dataset=smoke_mm", "pipeline=two_stage",
                          "pipeline.top_k=4", *common, f"hydra.sweep.dir={scratch / 'families'}"],
                         lambda _: {**check_results(scratch / "families", dev, dtype, len(args.families), True),
                                    **check_sweep_dirs(scratch / "families", len(args.families))},
                         150, 40, (scratch / "families",)),
        "mmeb_images": Step([py, "run.py", "experiment=mmeb_table1", "mode=fast", "model=tiny_qwen25vl",
                             f"benchmark.only=[{','.join(IMAGE_DATASETS)}]", *common,
                             f"hydra.run.dir={scratch / 'mmeb_images'}"],
                            lambda _: check_results(scratch / "mmeb_images", dev, dtype, len(IMAGE_DATASETS), True),
                            100, 30, (scratch / "mmeb_images",)),
        "ddp": Step([py, "run.py", "trainer=ddp", "trainer.devices=1", "model=tiny_qwen2vl", "dataset=smoke_mm",
                     "pipeline=two_stage", "pipeline.top_k=4", *common, f"hydra.run.dir={scratch / 'ddp'}"],
                    lambda _: check_results(scratch / "ddp", dev, dtype, 1, True), 90, 30, (scratch / "ddp",)),
        "sweep": Step([py, "run.py", "-m", "trainer=ddp", "trainer.devices=1", "model=tiny_idefics3",
                       "dataset=smoke_mm", "layer=attn_last,mlp_last", *common, f"hydra.sweep.dir={scratch / 'sweep'}"],
                      lambda _: {**check_results(scratch / "sweep", dev, dtype, 2, False),
                                 **check_sweep_dirs(scratch / "sweep", 2)}, 90, 30, (scratch / "sweep",)),
        "bench_embed": Step([py, "experiments/bench_embed.py", "--model", "qwen2vl_2b_dims", "--layers",
                             str(args.bench_layers), "--items", str(args.bench_items), "--device", dev,
                             "--out", str(bench["bench_embed"])],
                            lambda _: bench_figures(bench["bench_embed"]), 120, 45, plots(bench["bench_embed"])),
        "bench_rerank_text": Step([py, "experiments/bench_rerank.py", "--device", dev, "--queries", "2", "--k", "10",
                                   "50", "--weights", "auto", "--out", str(bench["bench_rerank_text"])],
                                  lambda _: bench_figures(bench["bench_rerank_text"]), 60, 20,
                                  plots(bench["bench_rerank_text"])),
        "bench_rerank_images": Step([py, "experiments/bench_rerank.py", "--device", dev, "--case", "image_candidates",
                                     "--model", "qwen2vl_2b_dims", "--layers", str(args.bench_layers), "--queries", "2",
                                     "--k", "8", "32", "--workers", "4", "--out", str(bench["bench_rerank_images"])],
                                    lambda _: bench_figures(bench["bench_rerank_images"]), 120, 45,
                                    plots(bench["bench_rerank_images"])),
        "bench_rerank_scorers": Step([py, "experiments/bench_rerank.py", "--device", dev, "--scorers",
                                      "candidate_likelihood", "query_likelihood", "bidirectional", "choice", "--k", "50",
                                      "--queries", "8", "--queries-per-step", "8", "--repeats", "1", "--weights", "auto",
                                      "--out", str(bench["bench_rerank_scorers"])],
                                     lambda _: bench_figures(bench["bench_rerank_scorers"]), 120, 30,
                                     plots(bench["bench_rerank_scorers"])),
    }
    return {name: steps[name] for name in args.steps}


def plots(json_path: Path) -> tuple[Path, ...]:
    """A benchmark's files: its JSON and the bar plot beside it."""
    return json_path, json_path.with_suffix(".png")


def step_env() -> dict[str, str]:
    """The environment of every step: this one, with the repo on PYTHONPATH (after the bundle's site, if any)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        paths.append(str(REPO))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1",
            "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}


def run_command(command: list[str], limit: float) -> tuple[str, int | None]:
    """(output, exit code or None on timeout); on timeout the whole process group goes (DDP ranks, workers)."""
    proc = subprocess.Popen(command, cwd=REPO, env=step_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        return proc.communicate(timeout=limit)[0], proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0] or "", None


def run_step(name: str, step: Step, limit: int, log: Any) -> dict[str, Any]:
    """Run one step within ``limit`` seconds, append its output to the log, then check what it wrote."""
    log.write(f"\n===== {name} (limit {limit} s): {' '.join(step.command)}\n")
    log.flush()
    start = time.perf_counter()
    record: dict[str, Any] = {"command": step.command, "limit_s": limit, "minimum_s": step.minimum}
    output, record["returncode"] = run_command(step.command, limit)
    if record["returncode"] is None:
        record["error"] = f"timed out after {limit} s"
    record["wall_s"] = round(time.perf_counter() - start, 1)
    log.write(output)
    log.flush()
    record["tail"] = output.strip().splitlines()[-6:]
    record["ok"] = False
    if record["returncode"] == 0:
        try:
            record["figures"], record["ok"] = step.check(output), True
        except StepFailed as exc:
            record["figures"], record["error"] = exc.figures, str(exc)
        except Exception as exc:  # noqa: BLE001 - a failed check is this step's verdict, the next step still runs
            record["error"] = f"{type(exc).__name__}: {exc}"
    if not record["ok"]:
        record.setdefault("error", f"exit code {record['returncode']}")
    record["artifacts"] = [str(p) for p in step.artifacts if p.exists()]
    record.update(status="ok" if record["ok"] else "failed", skipped=False)
    return record


def skipped(step: Step, left: float) -> dict[str, Any]:
    """The record of a step the budget has no room for."""
    return {"command": step.command, "ok": None, "status": "skipped", "skipped": True, "wall_s": 0.0,
            "minimum_s": step.minimum, "reason": f"{max(left, 0):.0f} s of the budget left, it needs at least "
                                                 f"{step.minimum} s"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked (steps and families known)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for runs, benchmark JSONs and plots "
                        "(default: a new temporary folder)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for all the steps together")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", default=None, help="model dtype of the runs (default bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--families", default=",".join(FAMILIES), help="tiny model configs of the families step")
    parser.add_argument("--bench-layers", type=int, default=28, help="decoder layers of the 2B-width benchmark model")
    parser.add_argument("--bench-items", type=int, default=128)
    args = parser.parse_args(argv)
    args.steps = [s for s in args.steps.split(",") if s]
    args.families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(args.steps) - set(STEPS)) + sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown step or family: {', '.join(unknown)}")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen steps within the budget, write ``gpu_check.json`` and ``gpu_check.log``; exit 1 if one failed."""
    args = parse_args(argv)
    if importlib.util.find_spec("freeret") is None:
        print(f"error: freeret does not import: run `bash scripts/gpu_check.sh` or set PYTHONPATH={REPO}", flush=True)
        return 2
    out = (args.out or REPO / "gpu_check" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = (args.scratch or Path(tempfile.mkdtemp(prefix="gpu_check_"))).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": args.device, "dtype": args.dtype, "host": platform.node(),
                              "started": datetime.now().isoformat(timespec="seconds"), "budget_s": args.budget,
                              "scratch": str(scratch), "steps": {}, "wall_s": 0.0,
                              "summary": {"ok": [], "failed": [], "skipped": []}}
    start = time.perf_counter()
    with open(out / "gpu_check.log", "w") as log:
        for name, step in plan(args, scratch).items():
            left = args.budget - (time.perf_counter() - start)
            if left < step.minimum:
                record = skipped(step, left)
            else:
                print(f"[gpu_check] {name} ...", flush=True)
                limit = step.limit * (CPU_LIMITS if args.device == "cpu" else 1)
                record = run_step(name, step, int(min(limit, left)), log)
            report["steps"][name] = record
            print(f"[gpu_check] {name}: " + {"ok": "ok", "skipped": f"skipped ({record.get('reason')})"}.get(
                record["status"], f"FAILED ({record.get('error')})") + f" in {record['wall_s']} s", flush=True)
            report["wall_s"] = round(time.perf_counter() - start, 1)
            report["summary"] = {k: [n for n, r in report["steps"].items() if r["status"] == k]
                                 for k in ("ok", "failed", "skipped")}
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")  # kept current if killed
    summary = report["summary"]
    print(f"[gpu_check] {len(summary['ok'])}/{len(report['steps'])} steps ok, {len(summary['skipped'])} skipped, in "
          f"{report['wall_s']} s of {args.budget:.0f}; {out / 'gpu_check.json'}"
          + (f"; failed: {', '.join(summary['failed'])}" if summary["failed"] else ""), flush=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
