"""One way to run an experiment: a driver's plan is a list of jobs (``run.py`` override lists, each with its run
folder), run in-process on one loaded model per model (the default), or handed to ``run.py -m`` and Hydra's
launcher (``hydra/launcher=slurm``) so that a search fans out over a cluster.

Both ways leave the same folders: a job's ``results/<dataset>.json`` (and its caches) in its run folder, and its
overrides in ``<run folder>/.hydra/overrides.yaml`` as Hydra writes them. The library never imports Hydra: the caller
passes ``compose`` (override list -> plain config), ``experiments/runs.py`` composes with Hydra's compose API.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freeret.benchmark import check_datasets, dataset_configs, run_all
from freeret.eval.results import RunResult
from freeret.paths import repo_root
from freeret.run.inputs import SharedModel

Compose = Callable[[list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """One run of ``run.py``: its overrides (one value each) and the folder it writes to."""

    overrides: tuple[str, ...]
    run_dir: Path


@dataclass
class Done:
    """What a job left: its results (read back when ``skipped``: a rerun found them all)."""

    job: Job
    results: list[RunResult] = field(default_factory=list)
    skipped: bool = False


class Models:
    """The loaded model a plan's jobs share, kept across calls while jobs use the same ``model`` config; another model
    replaces it (one in memory at a time)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.shared = SharedModel()

    def for_config(self, config: Mapping[str, Any]) -> SharedModel:
        """The shared model for ``config['model']`` (a fresh, empty one when the model changes)."""
        key = json.dumps(config["model"], sort_keys=True, default=str)
        if key != self.key:
            self.key, self.shared = key, SharedModel()
            gc.collect()  # the previous model's weights go before the next one loads
        return self.shared


def finished(job: Job, config: Mapping[str, Any]) -> list[RunResult] | None:
    """The results of a job whose run folder already holds every dataset's result file, written by a run with the
    same overrides (its ``.hydra/overrides.yaml``), else None: a folder reused with other settings runs again."""
    record = job.run_dir / ".hydra" / "overrides.yaml"
    if not record.is_file() or yaml.safe_load(record.read_text()) != list(job.overrides):
        return None
    paths = [job.run_dir / "results" / f"{d.get('name')}.json" for d in dataset_configs(config)]
    since = record.stat().st_mtime_ns  # written as the run began: an older result file is another run's
    if not all(p.is_file() and p.stat().st_mtime_ns >= since for p in paths):
        return None
    return [RunResult.read(p) for p in paths]


def record_overrides(job: Job) -> None:
    """``<run folder>/.hydra/overrides.yaml``, as Hydra writes it for a job of ``run.py -m`` (drivers read it)."""
    folder = job.run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "overrides.yaml").write_text(yaml.safe_dump(list(job.overrides), default_flow_style=False))


def run_jobs(jobs: Sequence[Job], compose: Compose, on_result: Callable[[RunResult], None] | None = None,
             shared: SharedModel | None = None, resume: bool = True, models: Models | None = None) -> list[Done]:
    """Run every job in this process, in order: all composed and checked first, then each model loaded once and
    kept while consecutive jobs use it (``models``: kept across calls too; one model in memory at a time). With
    ``resume`` a job whose result files all exist, from a run with the same overrides, is skipped. ``shared``: a
    model the caller already loaded, used by every job (same ``model``)."""
    configs = [{**compose(list(job.overrides)), "run_dir": str(job.run_dir)} for job in jobs]
    for config in configs:  # a mistake in the last job of a plan fails in one line, not after hours of the first ones
        check_datasets(config)
    models = models or Models()
    done = []
    for job, config in zip(jobs, configs):
        found = finished(job, config) if resume else None
        if found is not None:
            done.append(Done(job, found, skipped=True))
            continue
        job.run_dir.mkdir(parents=True, exist_ok=True)
        record_overrides(job)
        done.append(Done(job, run_all(config, on_result=on_result, shared=shared or models.for_config(config))))
    return done


def launcher_command(overrides: Sequence[str], sweep_dir: Path, launcher: str | None = None) -> list[str]:
    """The ``run.py -m`` command of a sweep (comma lists sweep, as on the command line) into ``sweep_dir/<job>``,
    through ``hydra/launcher=<launcher>`` (``local``: joblib on this machine; ``slurm``: submitit) when named."""
    chosen = [f"hydra/launcher={launcher}"] if launcher else []
    return [sys.executable, str(repo_root() / "run.py"), "-m", *chosen, *overrides, f"hydra.sweep.dir={sweep_dir}"]


def launch(overrides: Sequence[str], sweep_dir: Path, launcher: str | None = None, log: Path | None = None) -> int:
    """Run a sweep through ``run.py -m`` and Hydra's launcher, waiting for every job; returns the exit status.
    Its output goes to ``log`` (default ``<sweep_dir>.log``), the command on the first line."""
    cmd = launcher_command(overrides, sweep_dir, launcher)
    log = log or sweep_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        return subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT, cwd=repo_root()).returncode
