"""The drivers' one way to run a plan: Hydra composition for :mod:`freeret.experiment` (the library never imports
Hydra), and the ``--launcher`` choice every driver offers.

A plan is a list of sweeps: ``run.py`` override lists where a comma list sweeps, as on ``run.py -m``'s command line
(the experiment's own ``hydra.sweeper.params`` included). By default each sweep is expanded as Hydra's basic sweeper
expands it and its jobs run in this process into ``<sweep dir>/<job number>``, one model load per model
(:func:`freeret.experiment.run_jobs`: compose, check every job first, resume). With ``--launcher local|slurm`` the
same sweep goes to ``run.py -m hydra/launcher=<name>`` (:func:`freeret.experiment.launch`), which writes the same
folders, on a cluster if need be.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from freeret.eval.results import RunResult
from freeret.experiment import Done, Job, Models, launch, run_jobs
from freeret.paths import repo_root
from freeret.presets import resolve
from freeret.run.inputs import SharedModel

CONF = repo_root() / "conf"
LAUNCHERS = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))


def compose(overrides: Sequence[str], config_name: str = "config", hydra: bool = False) -> dict[str, Any]:
    """The plain config ``run.py OVERRIDES`` runs (``config_name="probe"``: a probe's), resolved; a per-model preset
    (``method=freeret_plus``) applied as run.py applies it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = resolve(lambda o: hydra_compose(config_name=config_name, overrides=o, return_hydra_config=hydra),
                      list(overrides))
    return OmegaConf.to_container(cfg, resolve=not hydra)


def composed(group: str, name: str, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """One config-group entry as Hydra composes it (its own defaults list applied), as a plain dict."""
    return compose([f"{group}={name}", *(overrides or [])])[group]


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of ``run.py -m OVERRIDES`` in Hydra's order: the experiment's ``hydra.sweeper.params``, then the
    command line (a key given twice keeps its last value), crossed as Hydra's basic sweeper crosses them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(list(overrides)) if not o.is_sweep_override()]
    params = (compose(fixed, hydra=True)["hydra"]["sweeper"].get("params")) or {}
    parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides])
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def sweep_jobs(overrides: Sequence[str], sweep_dir: Path) -> list[Job]:
    """The jobs of a sweep, each in ``sweep_dir/<job number>`` as ``run.py -m hydra.sweep.dir=SWEEP_DIR`` puts them."""
    return [Job(tuple(job), sweep_dir / str(n)) for n, job in enumerate(expand(overrides))]


def run_sweep(overrides: Sequence[str], sweep_dir: Path, launcher: str | None = None,
              on_result: Callable[[RunResult], None] | None = None, shared: SharedModel | None = None,
              resume: bool = True, models: Models | None = None) -> list[Done] | None:
    """Run one sweep in this process (``launcher`` None; returns each job's results) or through ``run.py -m`` and
    Hydra's launcher (returns None; a failed sweep exits with one line naming its log). ``models``: the loaded
    model a driver's sweeps share (one load for a whole plan on one model)."""
    if launcher is None:
        return run_jobs(sweep_jobs(overrides, sweep_dir), compose, on_result, shared, resume, models)
    if launch(overrides, sweep_dir, launcher) != 0:
        raise SystemExit(f"error: sweep failed ({sweep_dir.with_suffix('.log')}): {' '.join(overrides)}")
    return None


def add_launcher_argument(parser: argparse.ArgumentParser) -> None:
    """``--launcher NAME``: hand each sweep to ``run.py -m hydra/launcher=NAME`` instead of running it here."""
    parser.add_argument("--launcher", default=None, choices=LAUNCHERS,
                        help="run each sweep through run.py -m and this Hydra launcher (conf/hydra/launcher: local = "
                             "joblib here, slurm = a cluster) instead of in this process on one loaded model")
