"""What every entry point does with a user-facing error: one line on stderr, exit code 2 (``debug`` re-raises);
SIGTERM and SIGINT stop a run cleanly (one line, exit code 128 + signal); Lightning's noise is kept out of what a run
prints (:func:`quiet_lightning`)."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from freeret.errors import FreeRetError
from freeret.stop import handle_signals

T = TypeVar("T")


class _NoAdverts(logging.Filter):
    """Drops Lightning's product tips ("💡 Tip: ... litlogger / litmodels"): they say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Filter what Lightning says about our loops by design, and its adverts: process-wide, so the entry points that
    run pipelines call it (run.py, the probes, the experiments, the tests' in-process run.py); the library does not.
    Imports nothing (Lightning need not be loaded yet); calling it again adds nothing."""
    # Our batch sampler yields every index by construction (plan_batches); Lightning cannot know that.
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
    warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # one query group per step, by design
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning internals on recent torch
    # RerankModule keeps batches where they are (the scorer moves its own tensors); Lightning warns whenever a module
    # overrides this hook and a datamodule is used, on every two-stage run.
    warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device`")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdverts())


def one_line_errors(call: Callable[[], T], debug: bool = False) -> T:
    """Return ``call()``; on a FreeRetError print ``error: <message>`` and exit 2, unless ``debug``.

    During the call SIGTERM/SIGINT stop the run after the batch in flight (:mod:`freeret.stop`): exit code
    128 + signal, with one line saying that a rerun resumes.
    """
    try:
        with handle_signals():
            return call()
    except FreeRetError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))


_CHOICE = re.compile(r"^\+{0,2}(\w+)=([\w./,-]+)$")


def unknown_choice(args: list[str], conf_dir: Path) -> str | None:
    """One line naming a config-group choice (``model=...``, ``dataset=...``) that has no YAML, else None.

    Checked before Hydra starts, so a typo costs a second and one line instead of Hydra's multi-line report.
    """
    for arg in args:
        match = _CHOICE.match(arg)
        if not match or not (conf_dir / match[1]).is_dir():
            continue
        group = match[1]
        for name in match[2].split(","):
            if any(part.startswith("_") for part in name.split("/")):  # conf/dataset/_base/: what options extend
                return (f"{group}={name} is a base that other {group} configs extend (conf/{group}/{name}.yaml), "
                        f"not a {group} to pick; choose one of the files that build on it")
            if name != "null" and not (conf_dir / group / f"{name}.yaml").is_file():
                folder = (conf_dir / group / name).parent  # dataset=mmeb/Nope: the choices in conf/dataset/mmeb
                if "/" not in name or ".." in name.split("/") or not folder.is_dir():
                    folder = conf_dir / group
                prefix = "" if folder == conf_dir / group else f"{folder.relative_to(conf_dir / group).as_posix()}/"
                known = ", ".join(sorted(prefix + p.stem for p in folder.glob("*.yaml")))
                return (f"{group}={name} is not a known {group} (no conf/{group}/{name}.yaml); "
                        f"choose one of: {known}, or add that file")
    return None


def exit_on_unknown_choice(conf_dir: Path) -> None:
    """Exit 2 with one line when the command line picks a config that does not exist."""
    problem = unknown_choice(sys.argv[1:], conf_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
