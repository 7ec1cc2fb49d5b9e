"""What every entry point does with a user-facing error: one line on stderr, exit code 2 (``debug`` re-raises);
SIGTERM and SIGINT stop a run cleanly (one line, exit code 128 + signal)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable, TypeVar

from freeret.errors import FreeRetError
from freeret.stop import handle_signals

T = TypeVar("T")


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


_CHOICE = re.compile(r"^\+{0,2}(\w+)=([\w.,-]+)$")


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
            if name != "null" and not (conf_dir / group / f"{name}.yaml").is_file():
                known = ", ".join(sorted(p.stem for p in (conf_dir / group).glob("*.yaml")))
                return (f"{group}={name} is not a known {group} (no conf/{group}/{name}.yaml); "
                        f"choose one of: {known}, or add that file")
    return None


def exit_on_unknown_choice(conf_dir: Path) -> None:
    """Exit 2 with one line when the command line picks a config that does not exist."""
    problem = unknown_choice(sys.argv[1:], conf_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
