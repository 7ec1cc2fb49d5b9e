"""One run from a plain config mapping: embed a dataset, optionally rerank, score, write results.

``run.py`` composes the config with Hydra and calls :func:`run`; tests call it directly.
Pipelines: ``embed`` (stage 1), ``two_stage`` (stage 1 + rerank of the top-K),
``rag`` (two_stage, then the same model answers from the top documents).
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch

from freeret.backbone import Backbone, ModelSpec, load_backbone
from freeret.backbone.loading import count_layers, resolve_checkpoint
from freeret.data.datamodule import ItemDataModule, PromptCollator
from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import RetrievalSet
from freeret.data.validate import check_set, fold_misses, set_image_limit, usable_rows
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError, DataError
from freeret.eval.loggers import make_logger
from freeret.eval.metrics import MAIN_SCORE, TIE_RULE, retrieval_metrics
from freeret.eval.results import environment, write_json
from freeret.lit import EmbeddingWriter, EmbedModule
from freeret.preflight import check_framing, context_length, load_text_side, text_budget
from freeret.rag import answer_stage, require_answers
from freeret.rerank.framing import Framing
from freeret.rerank.scorer import PairScorer
from freeret.rerank.stage import RerankConfig, RerankModule, RerankWriter, fused_ranking, read_rerank, rerank_loader, top_k_groups
from freeret.retrieve.scoring import score_rows
from freeret.retrieve.store import read_shards

log = logging.getLogger(__name__)
PIPELINES = ("embed", "two_stage", "rag")
# Our batch sampler yields every index by construction (plan_batches); Lightning cannot know that.
warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # one query group per step, by design
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning internals on recent torch


def make_trainer(cfg: Mapping[str, Any], callback, logger=None) -> L.Trainer:
    """A predict-only Lightning Trainer from ``conf/trainer`` (extra keys pass through)."""
    trainer_cfg = dict(cfg.get("trainer") or {})
    return L.Trainer(
        accelerator=trainer_cfg.pop("accelerator", "auto"),
        devices=trainer_cfg.pop("devices", 1),
        logger=logger or False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(trainer_cfg.pop("enable_progress_bar", True)),
        **trainer_cfg,
    )


def embed_stage(cfg: Mapping[str, Any], backbone: Backbone, layer: LayerSpec, prior: Prior, rset: RetrievalSet,
                run_dir: Path) -> list[torch.Tensor]:
    """Embed every unique item once (Lightning predict + shard writer); return per-row cosine scores."""
    embed_cfg = cfg.get("embed") or {}
    emb_dir = run_dir / "embeddings" / rset.name
    shutil.rmtree(emb_dir, ignore_errors=True)
    datamodule = ItemDataModule(
        list(rset.items.values()),
        PromptCollator(backbone, prior, rset.name),
        batch_size=int(embed_cfg.get("batch_size", 32)),
        num_workers=int(embed_cfg.get("num_workers", 0)),
    )
    writer = EmbeddingWriter(emb_dir, shard_size=int(embed_cfg.get("shard_size", 4096)))
    make_trainer(cfg, writer).predict(EmbedModule(backbone, layer), datamodule=datamodule, return_predictions=False)
    return score_rows(rset.rows, read_shards(emb_dir))


def rerank_stage(cfg: Mapping[str, Any], scorer: PairScorer, rerank_cfg: RerankConfig, rset: RetrievalSet,
                 embed_scores: list[torch.Tensor], run_dir: Path) -> list[torch.Tensor]:
    """Rerank each row's top-K (Lightning predict + JSONL writer); return fused rank scores per row."""
    out_dir = run_dir / "rerank" / rset.name
    shutil.rmtree(out_dir, ignore_errors=True)
    groups = top_k_groups(rset, embed_scores, rerank_cfg.top_k)
    make_trainer(cfg, RerankWriter(out_dir)).predict(RerankModule(scorer), dataloaders=rerank_loader(groups),
                                                     return_predictions=False)
    records = read_rerank(out_dir)
    return [
        fused_ranking(scores, records[row.id]["positions"], torch.tensor(records[row.id]["probs"]),
                      scorer.framing.match_index, rerank_cfg)
        for row, scores in zip(rset.rows, embed_scores)
    ]


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run the configured pipeline; returns the results payload also written to ``results/<dataset>.json``."""
    start = time.perf_counter()
    spec = ModelSpec.from_dict(cfg["model"])
    layer = LayerSpec.from_dict(cfg["layer"])
    prior = Prior.from_dict(cfg["prior"])
    pipeline_cfg = dict(cfg.get("pipeline") or {"name": "embed"})
    pipeline = pipeline_cfg.get("name", "embed")
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline={pipeline!r} is not available; choose one of {', '.join(PIPELINES)}")
    staged = pipeline != "embed"
    framing = Framing.from_dict(cfg["framing"]) if staged else None
    rerank_cfg = RerankConfig.from_dict(pipeline_cfg) if staged else None
    rset = load_dataset(cfg["dataset"])
    if pipeline == "rag":
        require_answers(rset)
    run_dir = Path(cfg.get("run_dir") or "outputs/run")
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))

    checkpoint = resolve_checkpoint(spec)
    layer.resolve(count_layers(spec, checkpoint))  # fail on a bad layer index before loading weights
    # Bad input is recorded (errors.jsonl) and its rows count as misses; strict=true stops at the first one.
    side = load_text_side(spec, checkpoint)  # tokenizer only: framing and text length are checked before weights
    if staged:
        check_framing(side, framing, rset.name)
    set_image_limit((cfg.get("images") or {}).get("max_pixels"))
    budget = text_budget(side, prior, rset.name, context_length(spec, checkpoint, side),
                         any(it.image for it in rset.items.values()))
    report = check_set(rset, bool(cfg.get("strict", False)), None, side.count_tokens, side.cut_tokens, budget)
    report.write(run_dir)
    rset, missed = usable_rows(rset, report.failed_items)
    n_missed = len(missed) + report.bad_rows
    if not rset.rows:
        raise DataError(f"{rset.name}: no row can be scored ({n_missed} failed); the reasons are in {run_dir / 'errors.jsonl'}")
    backbone = load_backbone(spec, checkpoint)
    scorer = (PairScorer(backbone, framing, rset.name, rerank_cfg.batch_size, rerank_cfg.calibrate,
                         rerank_cfg.vision_cache_items) if staged else None)  # built before stage 1: a bad framing fails before any embedding work
    logger = make_logger(cfg.get("logger"), run_dir)

    timing: dict[str, float] = {}
    t = time.perf_counter()
    embed_scores = embed_stage(cfg, backbone, layer, prior, rset, run_dir)
    timing["embed_seconds"] = time.perf_counter() - t
    metrics = {"embed": fold_misses(retrieval_metrics(embed_scores), len(rset.rows), n_missed)}
    final_scores = embed_scores
    if staged:
        t = time.perf_counter()
        final_scores = rerank_stage(cfg, scorer, rerank_cfg, rset, embed_scores, run_dir)
        timing["rerank_seconds"] = time.perf_counter() - t
        metrics["rerank"] = fold_misses(retrieval_metrics(final_scores), len(rset.rows), n_missed)
    extra: dict[str, Any] = {}
    if pipeline == "rag":
        t = time.perf_counter()
        extra["rag"] = answer_stage(cfg, backbone, rset, final_scores, run_dir)
        timing["rag_seconds"] = time.perf_counter() - t
    timing["wall_seconds"] = time.perf_counter() - start

    final = metrics["rerank" if staged else "embed"]
    payload = {
        "dataset": rset.name,
        "pipeline": pipeline,
        "main_score_name": MAIN_SCORE,
        "main_score": final[MAIN_SCORE],
        "metrics": metrics,
        "tie_rule": TIE_RULE,
        "similarity": "cosine, fp32",
        "layer": {"label": layer.label, "point": layer.point, "index": layer.index,
                  "resolved_index": layer.resolve(backbone.num_layers), "apply_final_norm": layer.apply_final_norm},
        "prior": prior.name,
        "framing": framing.name if framing else None,
        "rerank": (
            {**rerank_cfg.__dict__, "option_token_ids": scorer.option_ids,
             "options": list(framing.options), "match": framing.match}
            if staged else None
        ),
        "model": backbone.metadata(),
        "counts": {**rset.summary(), "num_items_embedded": len(rset.items), **report.counts(),
                   "num_queries": len(rset.rows) + n_missed, "scored_queries": len(rset.rows), "failed_queries": n_missed},
        "timing": timing,
        "environment": environment(),
        "config": dict(cfg),
        **extra,
    }
    write_json(run_dir / "results" / f"{rset.name}.json", payload)
    if logger is not None:
        logger.log_hyperparams(dict(cfg))
        logger.log_metrics({f"{rset.name}/{stage}/{k}": v for stage, m in metrics.items() for k, v in m.items()})
        logger.finalize("success")
    return payload


def summary_line(payload: Mapping[str, Any]) -> str:
    """The one-line summary printed after a run."""
    stages = payload["metrics"]
    scores = " -> ".join(f"{stage} hit@1={m[MAIN_SCORE]:.4f}" for stage, m in stages.items())
    framing = f" | framing={payload['framing']} top{payload['rerank']['top_k']}" if payload.get("framing") else ""
    rag = ""
    if payload.get("rag"):
        rag = f" | RAG EM={payload['rag']['exact_match_with_retrieval']:.3f} (closed-book {payload['rag']['exact_match_closed_book']:.3f})"
    return (
        f"{payload['dataset']}: {scores} | layer={payload['layer']['label']} | prior={payload['prior']}{framing} "
        f"| model={payload['model']['name']} | {payload['counts']['num_queries']} queries x "
        f"{payload['counts']['candidates_per_query']} candidates{rag}{failed_note(payload)} | {payload['timing']['wall_seconds']:.0f}s"
    )


def failed_note(payload: Mapping[str, Any]) -> str:
    """The summary line's note on failed queries (empty when none failed)."""
    failed = payload["counts"].get("failed_queries", 0)
    return f" | {failed} failed queries counted as misses (errors.jsonl)" if failed else ""
