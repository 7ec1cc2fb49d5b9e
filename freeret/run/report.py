"""What a run reports: the :class:`~freeret.eval.results.RunResult` (written to ``results/<dataset>.json`` and
logged, rank 0) and the one summary line the entry points print per dataset."""

from __future__ import annotations

import dataclasses

from freeret.backbone import Backbone
from freeret.distributed import is_main
from freeret.embed.layers import Readout
from freeret.embed.pooling import PoolingSpec
from freeret.eval.loggers import make_logger
from freeret.eval.results import (
    Counts,
    LayerRecord,
    RerankRecord,
    RunResult,
    environment,
)
from freeret.presets import record as preset_record
from freeret.run.inputs import Inputs
from freeret.run.plan import Plan
from freeret.run.stages import StageResults


def layer_record(layer: Readout, num_layers: int) -> LayerRecord:
    """The result file's record of the point(s) read: the first point, and every point when several are averaged."""
    first, detail = layer.points[0], layer.describe(num_layers)
    several = len(layer.points) > 1
    return LayerRecord(layer.label, first.point, first.index, layer.resolve(num_layers)[0], first.apply_final_norm,
                       detail["points"] if several else None, detail.get("normalize_points"))


def report(plan: Plan, inputs: Inputs, backbone: Backbone, done: StageResults, seconds: float) -> RunResult:
    """The run's :class:`RunResult`, written to ``results/<dataset>.json`` and logged (rank 0)."""
    rset, layer, framing = inputs.rset, plan.layer, plan.framing
    rerank = None
    if plan.scorer is not None and plan.rerank is not None and done.scorer is not None:
        settings = {k: v for k, v in dataclasses.asdict(plan.rerank).items() if k != "top_k"}
        settings.update(scorer_config=plan.scorer.as_dict(), scorer_summary=done.scorer_summary,
                        **{k: v for k, v in done.scorer.describe().items() if k not in ("options", "match", "option_token_ids")})
        rerank = RerankRecord(plan.rerank.top_k, list(framing.options) if framing else [], framing.match if framing else None,
                              list(getattr(done.scorer, "option_ids", None) or []), framing.variant if framing else None,
                              settings, plan.scorer.name)
    result = RunResult(
        dataset=rset.name,
        pipeline=plan.pipeline,
        main_score_name=plan.main_metric,
        main_score=done.metrics["rerank" if plan.staged else "embed"][plan.main_metric],
        metrics=done.metrics,
        layer=layer_record(layer, backbone.num_layers),
        prior=plan.prior.name,
        pooling=(layer.pooling or PoolingSpec()).describe(),
        retriever=done.stage1.get("retriever"),
        postprocess=done.stage1.get("postprocess"),
        prior_detail=plan.prior.describe(),
        views=done.stage1.get("views"),
        preset=preset_record(plan.cfg),
        task=plan.task,
        counts=Counts(**{**rset.summary(), **inputs.report.counts(), "num_items_embedded": len(rset.items),
                         "num_queries": len(rset.rows) + inputs.missed, "scored_queries": len(rset.rows),
                         "failed_queries": inputs.missed}),
        model=backbone.metadata(),
        framing=framing.name if framing else None,
        rerank=rerank,
        rag=done.rag,
        timing={**done.timing, "wall_seconds": seconds},
        environment=environment(),
        config=dict(plan.cfg),
    )
    if is_main():
        result.write(plan.run_dir / "results" / f"{rset.name}.json", "hydra.run.dir")
        logger = make_logger(plan.cfg.get("logger"), plan.run_dir)
        if logger is not None:
            logger.log_hyperparams(dict(plan.cfg))
            logger.log_metrics({f"{rset.name}/{stage}/{k}": v for stage, m in done.metrics.items() for k, v in m.items()})
            logger.finalize("success")
    return result


def summary_line(result: RunResult) -> str:
    """The one-line summary printed after a run."""
    name = result.main_score_name
    scores = " -> ".join(f"{stage} {name}={m[name]:.4f}" for stage, m in result.metrics.items())
    framing = f" | framing={result.framing}" if result.framing else ""
    if result.rerank is not None:
        framing += f" | scorer={result.rerank.scorer}" if result.rerank.scorer != "choice" else ""
        framing += f" top{result.rerank.top_k}"
    preset = f" | preset={result.preset['name']}/{result.preset['model']}" if result.preset else ""
    rag = ""
    if result.rag:
        rag = f" | RAG EM={result.rag['exact_match_with_retrieval']:.3f} (closed-book {result.rag['exact_match_closed_book']:.3f})"
    stage1 = "".join(f" | {key}={label}" for key, label, default in (
        ("retriever", (result.retriever or {}).get("label", "dense"), "dense"),
        ("postprocess", (result.postprocess or {}).get("label", "none"), "none")) if label != default)
    return (
        f"{result.dataset}: {scores} | layer={result.layer.label} | prior={result.prior}{stage1}{framing}{preset} "
        f"| model={result.model_name} | {result.counts.num_queries} queries x "
        f"{result.counts.candidates_per_query} candidates{rag}{failed_note(result)} | {result.timing['wall_seconds']:.0f}s"
    )


def failed_note(result: RunResult) -> str:
    """The summary line's note on failed queries (empty when none failed)."""
    failed = result.counts.failed_queries
    return f" | {failed} failed queries counted as misses (errors.jsonl)" if failed else ""
