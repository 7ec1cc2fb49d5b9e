"""One run from a plain config mapping: embed a dataset, score, write results.

``run.py`` composes the config with Hydra and calls :func:`run`; tests call it directly.
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

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.loading import count_layers, resolve_checkpoint
from freeret.data.datamodule import ItemDataModule, PromptCollator
from freeret.data.datasets import load_dataset
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.eval.loggers import make_logger
from freeret.eval.metrics import MAIN_SCORE, TIE_RULE, retrieval_metrics
from freeret.eval.results import environment, write_json
from freeret.lit import EmbeddingWriter, EmbedModule
from freeret.retrieve.scoring import score_rows
from freeret.retrieve.store import read_shards

log = logging.getLogger(__name__)
PIPELINES = ("embed",)
# Our batch sampler yields every index by construction (plan_batches); Lightning cannot know that.
warnings.filterwarnings("ignore", message=".*custom batch sampler.*")


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Run the configured pipeline; returns the results payload also written to ``results/<dataset>.json``."""
    start = time.perf_counter()
    spec = ModelSpec.from_dict(cfg["model"])
    layer = LayerSpec.from_dict(cfg["layer"])
    prior = Prior.from_dict(cfg["prior"])
    pipeline = (cfg.get("pipeline") or {}).get("name", "embed")
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline={pipeline!r} is not available; choose one of {', '.join(PIPELINES)}")
    rset = load_dataset(cfg["dataset"])
    run_dir = Path(cfg.get("run_dir") or "outputs/run")
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))

    checkpoint = resolve_checkpoint(spec)
    layer.resolve(count_layers(spec, checkpoint))  # fail on a bad layer index before loading weights
    backbone = load_backbone(spec, checkpoint)
    embed_cfg = cfg.get("embed") or {}
    trainer_cfg = dict(cfg.get("trainer") or {})
    emb_dir = run_dir / "embeddings" / rset.name
    shutil.rmtree(emb_dir, ignore_errors=True)
    logger = make_logger(cfg.get("logger"), run_dir)

    datamodule = ItemDataModule(
        list(rset.items.values()),
        PromptCollator(backbone, prior, rset.name),
        batch_size=int(embed_cfg.get("batch_size", 32)),
        num_workers=int(embed_cfg.get("num_workers", 0)),
    )
    trainer = L.Trainer(
        accelerator=trainer_cfg.pop("accelerator", "auto"),
        devices=trainer_cfg.pop("devices", 1),
        logger=logger or False,
        callbacks=[EmbeddingWriter(emb_dir, shard_size=int(embed_cfg.get("shard_size", 4096)))],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(trainer_cfg.pop("enable_progress_bar", True)),
        **trainer_cfg,
    )
    embed_start = time.perf_counter()
    trainer.predict(EmbedModule(backbone, layer), datamodule=datamodule, return_predictions=False)
    embed_seconds = time.perf_counter() - embed_start

    scores = score_rows(rset.rows, read_shards(emb_dir))
    metrics = retrieval_metrics(scores)
    payload = {
        "dataset": rset.name,
        "pipeline": pipeline,
        "main_score_name": MAIN_SCORE,
        "main_score": metrics[MAIN_SCORE],
        "metrics": {"embed": metrics},
        "tie_rule": TIE_RULE,
        "similarity": "cosine, fp32",
        "layer": {"label": layer.label, "point": layer.point, "index": layer.index,
                  "resolved_index": layer.resolve(backbone.num_layers), "apply_final_norm": layer.apply_final_norm},
        "prior": prior.name,
        "model": backbone.metadata(),
        "counts": {**rset.summary(), "num_items_embedded": len(rset.items)},
        "timing": {"wall_seconds": time.perf_counter() - start, "embed_seconds": embed_seconds},
        "environment": environment(),
        "config": dict(cfg),
    }
    write_json(run_dir / "results" / f"{rset.name}.json", payload)
    if logger is not None:
        logger.log_hyperparams(dict(cfg))
        logger.log_metrics({f"{rset.name}/{k}": v for k, v in metrics.items()})
        logger.finalize("success")
    return payload


def summary_line(payload: Mapping[str, Any]) -> str:
    """The one-line summary printed after a run."""
    return (
        f"{payload['dataset']}: hit@1={payload['main_score']:.4f} | layer={payload['layer']['label']} "
        f"| prior={payload['prior']} | model={payload['model']['name']} "
        f"| {payload['counts']['num_queries']} queries x {payload['counts']['candidates_per_query']} candidates "
        f"| {payload['timing']['wall_seconds']:.0f}s"
    )
