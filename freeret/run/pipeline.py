"""One run from a plain config mapping: embed a dataset, optionally rerank, score, write results.

``run.py`` composes the config with Hydra and calls :func:`freeret.benchmark.run_all`, which calls :func:`run` per
dataset; tests call it directly. Pipelines: ``embed`` (stage 1), ``two_stage`` (stage 1 + rerank of the top-K),
``rag`` (two_stage, then the same model answers from the top documents). The steps live in :mod:`freeret.run`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from freeret.eval.results import RunResult
from freeret.run.inputs import SharedModel, load, prepare
from freeret.run.plan import check
from freeret.run.report import report
from freeret.run.stages import stages


def run(cfg: Mapping[str, Any], shared: SharedModel | None = None) -> RunResult:
    """Run the configured pipeline on ``cfg['dataset']``: check the config, prepare and check the data, load the
    model, run the stages, report; returns the :class:`RunResult` also written to ``results/<dataset>.json``.

    With ``shared``, a backbone loaded by an earlier run of the same ``cfg['model']`` is reused (benchmarks).
    """
    start = time.perf_counter()
    plan = check(cfg)
    inputs = prepare(plan, shared)
    backbone = load(plan, inputs, shared)
    done = stages(plan, inputs, backbone)
    return report(plan, inputs, backbone, done, time.perf_counter() - start)
