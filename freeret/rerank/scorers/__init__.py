"""Stage-2 scorers (``conf/scorer``): one small module per family of scorers behind one protocol (``base.py``).

``choice`` (the paper's option probability) and ``choice_debiased`` (both option orders) in ``choice.py``;
``candidate_likelihood`` (with BLiM's candidate-prior normalisation), ``query_likelihood`` (UPR) and
``bidirectional`` (BLiM) in ``likelihood.py``; ``listwise`` in ``listwise.py``. ``SCORERS`` (``registry.py``)
names each one's spec class, imported when chosen; :func:`scorer_spec` reads a config; :func:`specs` lists them.
"""

from freeret.rerank.scorers.registry import SCORERS, scorer_spec, specs

__all__ = ["SCORERS", "scorer_spec", "specs"]
