"""The plan of a run: everything the config alone decides, parsed and checked before any data or weights load."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freeret.backbone import ModelSpec
from freeret.embed.layers import Readout
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.eval.metrics import MAIN_SCORE, METRICS
from freeret.eval.results import DISTRIBUTIONS, SPLITS, Task
from freeret.presets import unresolved
from freeret.prompts import DatasetPrompt
from freeret.rerank.framing import Framing
from freeret.rerank.scorers import scorer_spec
from freeret.rerank.scorers.base import ScorerSpec
from freeret.rerank.stage import RerankConfig
from freeret.retrieve.ranking import Stage1Scoring
from freeret.signatures import stale_after_s, work_sharing
from freeret.views import Views

PIPELINES = ("embed", "two_stage", "rag")
log = logging.getLogger(__name__)


def stage2_spec(cfg: Mapping[str, Any], rerank_cfg: RerankConfig, prompt: DatasetPrompt) -> tuple[ScorerSpec, Framing | None]:
    """The scorer spec and (for the choice scorers) the framing bound to the dataset, checked against the
    pipeline's stage-2 keys."""
    spec = scorer_spec(cfg.get("scorer"))
    spec.check_variant(prompt)  # the dataset's prompt.scorer_variant, where the scorer has prompts of its own
    framing = Framing.from_dict(cfg["framing"]).for_dataset(prompt) if spec.uses_framing else None
    if rerank_cfg.calibrate and not spec.takes_calibrate:
        raise ConfigError(f"pipeline.calibrate=true divides out an option prior: scorer={spec.name} has no options "
                          f"(candidate_likelihood has its own prior: scorer.cpn_lambda)")
    if rerank_cfg.tie_break == "entropy" and not spec.has_entropy:
        raise ConfigError(f"pipeline.tie_break=entropy needs a scorer that records an answer entropy "
                          f"(choice, choice_debiased); scorer={spec.name} does not: use tie_break=embed")
    return spec, framing


@dataclass(frozen=True)
class Plan:
    """One run's configuration, parsed and checked; nothing is loaded yet. The prior and framing are bound to the
    dataset's prompt facts (``dataset.prompt``)."""

    cfg: Mapping[str, Any]
    spec: ModelSpec
    layer: Readout  # the point(s) and the pooling stage 1 reads
    prior: Prior
    pipeline: str
    framing: Framing | None  # two-stage pipelines with a choice scorer only
    rerank: RerankConfig | None
    main_metric: str
    task: Task
    run_dir: Path
    scorer: ScorerSpec | None = None  # the stage-2 scorer's spec (conf/scorer); two-stage pipelines only
    prompt: DatasetPrompt | None = None  # the dataset's prompt facts
    views: Views | None = None  # a prompt ensemble (prior.ensemble) and/or a query expansion (conf/expand); None: neither

    @property
    def staged(self) -> bool:
        """Whether stage 2 (reranking) runs."""
        return self.pipeline != "embed"


def check(cfg: Mapping[str, Any], warn: bool = True) -> Plan:
    """Parse and check everything the config alone decides: a mistake is a one-line ConfigError here, before any
    data or weights load (:func:`freeret.benchmark.check_datasets` checks every dataset of a suite this way first,
    with ``warn=False``: what the config would run without is logged once, by the run itself)."""
    if (problem := unresolved(cfg)) is not None:
        raise ConfigError(problem)
    spec = ModelSpec.from_dict(cfg["model"])
    layer = Readout.from_config(cfg["layer"], cfg.get("pooling"), cfg.get("prepend"))
    pipeline_cfg = dict(cfg.get("pipeline") or {"name": "embed"})
    pipeline = pipeline_cfg.get("name", "embed")
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline={pipeline!r} is not available; choose one of {', '.join(PIPELINES)}")
    prompt = DatasetPrompt.from_config(cfg["dataset"])
    prior = Prior.from_dict(cfg["prior"]).for_dataset(prompt)
    views = Views.from_config(cfg["prior"], cfg.get("expand"), prompt, prior)
    if (dropped := prior.missing_demonstrations()) is not None:
        if cfg.get("strict", False):
            raise ConfigError(f"{dropped} (strict=true stops here; set prior.demos.k=0 or a dataset with a demo_set)")
        if warn:
            log.warning("%s; the result file records demos.k=0", dropped)
    staged = pipeline != "embed"
    rerank = RerankConfig.from_dict(pipeline_cfg) if staged else None
    scorer, framing = stage2_spec(cfg, rerank, prompt) if staged else (None, None)
    retriever = Stage1Scoring.from_config(cfg).retriever
    retriever.require()  # bad retriever / postprocess values; bm25s installed
    if views.active and retriever.uses_promptreps:  # a mean of (dense | token ids | weights) rows means nothing
        raise ConfigError(f"retriever={retriever.name} (PromptReps lexical vectors) cannot combine with a prompt "
                          f"ensemble or a query expansion (prior.ensemble / expand): use retriever=dense there")
    work_sharing(cfg.get("embed") or {}), stale_after_s(cfg.get("embed") or {})  # bad embed.* keys
    main_metric = str(cfg["dataset"].get("main_metric") or MAIN_SCORE)
    if main_metric not in METRICS:
        raise ConfigError(f"dataset.main_metric={main_metric!r} is not one of {', '.join(METRICS)}")
    task = Task.from_dict(cfg["dataset"])
    if task.split not in (None, *SPLITS) or task.distribution not in (None, *DISTRIBUTIONS):
        raise ConfigError(f"dataset {cfg['dataset'].get('name')}: split={task.split!r} must be one of "
                          f"{', '.join(SPLITS)} and distribution={task.distribution!r} one of {', '.join(DISTRIBUTIONS)}")
    return Plan(cfg, spec, layer, prior, pipeline, framing, rerank, main_metric, task,
                Path(cfg.get("run_dir") or "outputs/run"), scorer, prompt, views if views.active else None)
