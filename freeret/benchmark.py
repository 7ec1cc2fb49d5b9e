"""Many datasets in one run: the model loads once, each dataset writes its own ``results/<name>.json``.

An experiment config (``conf/experiment``) fills ``benchmark.datasets`` with dataset configs;
without it a run is the single ``dataset``. ``benchmark.limit`` / ``max_per_task`` / ``source``
shrink a benchmark for the offline fast mode (``conf/mode/fast.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from freeret.data.datasets import MMEB_KINDS
from freeret.data.mmeb import locate
from freeret.distributed import is_main
from freeret.errors import ConfigError
from freeret.eval.results import RunResult
from freeret.run.inputs import SharedModel
from freeret.run.pipeline import run
from freeret.run.plan import check

log = logging.getLogger(__name__)


def dataset_configs(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dataset configs this run covers, in config order, with the benchmark-wide overrides applied."""
    bench = cfg.get("benchmark") or {}
    datasets = [dict(d) for d in (bench.get("datasets") or {}).values()] or [dict(cfg["dataset"])]
    only = bench.get("only")
    if only:
        names = {d.get("name") for d in datasets}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ConfigError(f"benchmark.only names unknown dataset(s) {', '.join(unknown)}; this run has {', '.join(sorted(names))}")
        datasets = [d for d in datasets if d.get("name") in set(only)]
    per_task = bench.get("max_per_task")
    if per_task:
        seen: dict[Any, int] = {}
        kept = []
        for d in datasets:
            task = d.get("meta_task")
            if seen.get(task, 0) < int(per_task):
                kept.append(d)
                seen[task] = seen.get(task, 0) + 1
        datasets = kept
    for d in datasets:
        if bench.get("limit") is not None:
            d["limit"] = int(bench["limit"])
        if bench.get("source") and d.get("kind") in MMEB_KINDS:
            d["source"] = bench["source"]
    return datasets


def check_datasets(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every dataset config of the run, each checked (and MMEB data located) before any model loads: a config mistake
    or missing data fails in one line, not after a (possibly large) model has loaded. The checks say nothing more:
    what a run would warn about is said when that dataset runs."""
    datasets = dataset_configs(cfg)
    for dataset in datasets:
        check({**cfg, "dataset": dataset}, warn=False)
        if dataset.get("kind") == "mmeb_subset":
            locate(dataset)
    return datasets


def run_all(cfg: Mapping[str, Any], on_result: Callable[[RunResult], None] | None = None,
            shared: SharedModel | None = None) -> list[RunResult]:
    """Run the pipeline on every dataset of the run with one loaded model; returns the results.

    ``shared``: a model (and tokenizer side) already loaded by the caller for ``cfg['model']``, kept across calls
    (experiments/scaling.py runs many configs on one model); by default a new one, loaded by the first dataset."""
    datasets = check_datasets(cfg)
    if shared is None:
        shared = SharedModel()  # loaded once, by the first dataset, after that dataset's checks
    results = []
    for i, dataset in enumerate(datasets, 1):
        log.info("dataset %d/%d: %s", i, len(datasets), dataset.get("name"))
        result = run({**cfg, "dataset": dataset}, shared)
        results.append(result)
        if on_result and is_main():
            on_result(result)
    return results
