"""The scorer registry: ``conf/scorer/<name>.yaml`` -> its spec class (``@register``), checked before weights load."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from freeret.errors import ConfigError
from freeret.rerank.scorers.base import ScorerSpec

SPECS: dict[str, type[ScorerSpec]] = {}
S = TypeVar("S", bound=type[ScorerSpec])


def register(cls: S) -> S:
    """Class decorator: make a spec class selectable as ``scorer=<cls.name>``."""
    SPECS[cls.name] = cls
    return cls


def specs() -> dict[str, type[ScorerSpec]]:
    """Every registered scorer spec by name (importing the scorer modules registers them; they import the model
    code, which imports this package's base, hence not at package import)."""
    from freeret.rerank.scorers import choice, likelihood, listwise  # noqa: F401

    return SPECS


def scorer_spec(cfg: Mapping[str, Any] | None) -> ScorerSpec:
    """The spec named by ``cfg['name']`` (default ``choice``), built from the rest of ``cfg`` and checked."""
    cfg = dict(cfg or {})
    name = str(cfg.pop("name", "choice"))
    if name not in specs():
        raise ConfigError(f"scorer={name!r} is not available; choose one of {', '.join(sorted(SPECS))}")
    return SPECS[name].from_dict(cfg)
