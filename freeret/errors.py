"""User-facing errors: each carries one line that says what is wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class FreeRetError(Exception):
    """Base class of errors that entry points print as a single line (no traceback)."""


class CheckpointNotFoundError(FreeRetError):
    """A model checkpoint is neither on disk nor reachable on the hub."""


class ConfigError(FreeRetError):
    """A configuration value is invalid (unknown name, out-of-range index, bad template)."""


class UnknownNameError(ConfigError):
    """A config names something no registry holds (a scorer, model family or source, dataset kind or source); the
    message lists the names it does hold (``freeret.registry``)."""

    def __init__(self, message: str, what: str, name: str, known: tuple[str, ...]) -> None:
        super().__init__(message)
        self.what, self.name, self.known = what, name, known


class DataError(FreeRetError):
    """A dataset file is missing or malformed."""


class StorageError(FreeRetError):
    """A store or results folder cannot be written (full disk, read-only): nothing partial is left behind."""


class Interrupted(FreeRetError):
    """The run was stopped by a signal (SIGTERM, SIGINT) after its finished work was saved."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention for "killed by this signal"
        super().__init__(f"stopped by {signal.Signals(signum).name}; every finished shard is saved, so a rerun with "
                         f"the same config resumes where this one stopped")


def known_keys(cfg: Mapping[str, Any] | None, spec: type, where: str) -> dict[str, Any]:
    """``cfg`` as a dict once every key is a field of the dataclass ``spec``; else the one-line ConfigError
    ``unknown <where> key(s) ...`` (a typo in a config would otherwise do nothing)."""
    out = dict(cfg or {})
    unknown = sorted(set(out) - set(spec.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown {where} key(s) {', '.join(unknown)}")
    return out
