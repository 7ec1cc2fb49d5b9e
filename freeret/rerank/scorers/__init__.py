"""Stage-2 scorers (``conf/scorer``): one small module per family of scorers behind one protocol (``base.py``).

``choice`` (the paper's option probability) and ``choice_debiased`` (both option orders) in ``choice.py``;
``candidate_likelihood`` (with BLiM's candidate-prior normalisation), ``query_likelihood`` (UPR) and
``bidirectional`` (BLiM) in ``likelihood.py``; ``listwise`` in ``listwise.py``. ``SCORERS`` (here) names each
one's spec class, imported when chosen and checked before weights load; :func:`scorer_spec` reads a config;
:func:`specs` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freeret.registry import Registry
from freeret.rerank.scorers.base import ScorerSpec

SCORERS: Registry[type[ScorerSpec]] = Registry("scorer", {
    "choice": "freeret.rerank.scorers.choice:ChoiceSpec",
    "choice_debiased": "freeret.rerank.scorers.choice:DebiasedChoiceSpec",
    "candidate_likelihood": "freeret.rerank.scorers.likelihood:CandidateLikelihoodSpec",
    "query_likelihood": "freeret.rerank.scorers.likelihood:QueryLikelihoodSpec",
    "bidirectional": "freeret.rerank.scorers.likelihood:BidirectionalSpec",
    "listwise": "freeret.rerank.scorers.listwise:ListwiseSpec",
}, message="{what}={name!r} is not available; choose one of {known}")
"""``scorer=<name>`` -> its spec class (``"module:Class"``; each class's ``name`` is its key)."""


def specs() -> dict[str, type[ScorerSpec]]:
    """Every scorer spec by name (imports every scorer module)."""
    return dict(SCORERS.items())


def scorer_spec(cfg: Mapping[str, Any] | None) -> ScorerSpec:
    """The spec named by ``cfg['name']`` (default ``choice``), built from the rest of ``cfg`` and checked."""
    cfg = dict(cfg or {})
    name = str(cfg.pop("name", "choice"))
    return SCORERS[name].from_dict(cfg)


__all__ = ["SCORERS", "scorer_spec", "specs"]
