"""One run from a plain config mapping: embed a dataset, optionally rerank, score, write results.

``run.py`` composes the config with Hydra and calls :func:`run`; tests call it directly.
Pipelines: ``embed`` (stage 1), ``two_stage`` (stage 1 + rerank of the top-K),
``rag`` (two_stage, then the same model answers from the top documents).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy

from freeret import stop
from freeret.backbone import Backbone, ModelSpec, load_backbone
from freeret.backbone.loading import count_layers, resolve_checkpoint
from freeret.backbone.prefix import PrefixCache
from freeret.cache import (
    item_cache_key,
    stale_after_s,
    store_dir,
    vector_signature,
    work_sharing,
)
from freeret.data.datamodule import PromptCollator, num_workers
from freeret.data.datasets import load_dataset
from freeret.data.images import set_image_limit
from freeret.data.retrieval_set import Item, RetrievalSet
from freeret.data.validate import Report, check_set, fold_misses, usable_rows
from freeret.distributed import barrier, is_main, rank_sum
from freeret.embed.layers import LayerSpec, Readout
from freeret.embed.pooling import PoolingSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError, DataError
from freeret.eval.loggers import make_logger
from freeret.eval.metrics import MAIN_SCORE, METRICS, retrieval_metrics
from freeret.eval.results import (
    DISTRIBUTIONS,
    SPLITS,
    Counts,
    LayerRecord,
    RerankRecord,
    RunResult,
    Task,
    environment,
)
from freeret.lit import EmbeddingWriter, EmbedModule, RankedItemDataModule, embed_rounds
from freeret.preflight import TextSide, context_length, load_text_side, text_budget
from freeret.prompts import DatasetPrompt
from freeret.rag import answer_stage, require_answers
from freeret.rerank.framing import Framing
from freeret.rerank.scorers import scorer_spec
from freeret.rerank.scorers.base import BuildContext, Scorer, ScorerSpec
from freeret.rerank.stage import (
    RankedGroups,
    RerankConfig,
    RerankModule,
    RerankWriter,
    fuse_record,
    pending_groups,
    read_rerank,
    rerank_signature,
    top_k_groups,
)
from freeret.retrieve.ranking import Stage1Scoring
from freeret.retrieve.store import ShardStore
from freeret.workshare import BatchClaims

log = logging.getLogger(__name__)
PIPELINES = ("embed", "two_stage", "rag")
# Our batch sampler yields every index by construction (plan_batches); Lightning cannot know that.
warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # one query group per step, by design
warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning internals on recent torch
# RerankModule keeps batches where they are (the scorer moves its own tensors); Lightning warns whenever a module
# overrides this hook and a datamodule is used, on every two-stage run.
warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device`")


class _NoAdverts(logging.Filter):
    """Drops Lightning's product tips ("💡 Tip: ... litlogger / litmodels"): they say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def make_trainer(cfg: Mapping[str, Any], callback=None, logger=None) -> L.Trainer:
    """A predict-only Lightning Trainer from ``conf/trainer`` (extra keys pass through)."""
    trainer_cfg = dict(cfg.get("trainer") or {})
    return L.Trainer(
        accelerator=trainer_cfg.pop("accelerator", "auto"),
        devices=trainer_cfg.pop("devices", 1),
        logger=logger or False,
        callbacks=[callback] if callback else None,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(trainer_cfg.pop("enable_progress_bar", True)),
        **trainer_cfg,
    )


def run_device(cfg: Mapping[str, Any], spec: ModelSpec) -> torch.device:
    """The device this process predicts on, where the weights load: the root device of a trainer built from the
    config (under DDP the rank's own, from LOCAL_RANK). A device map needs one process: DDP with it is refused."""
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = lightning_info.level
    lightning_info.setLevel(logging.WARNING)  # its device report would come before a one-line error; predict repeats it
    try:
        trainer = make_trainer(cfg)
    finally:
        lightning_info.setLevel(level)
    if spec.device_map and (trainer.world_size > 1 or isinstance(trainer.strategy, ParallelStrategy)):
        raise ConfigError(f"model.device_map={spec.device_map} spreads one model over the GPUs of one process and "
                          f"cannot run under a multi-process trainer (trainer=ddp): use trainer=default, or drop "
                          f"model.device_map to run one copy of the model per GPU")
    return trainer.strategy.root_device


def embed_stage(cfg: Mapping[str, Any], backbone: Backbone, layer: LayerSpec | Readout, prior: Prior, rset: RetrievalSet,
                run_dir: Path, stats: dict[str, Any] | None = None,
                record: dict[str, Any] | None = None) -> list[torch.Tensor]:
    """Embed every unique item not already in the store (Lightning predict + shard writer); return per-row
    stage-1 scores from the shards (``conf/retriever``, ``conf/postprocess``: applied when scoring, so they reuse
    stored vectors). ``stats`` (if given) receives how many items were computed/reused; ``record`` what scored."""
    scoring = Stage1Scoring.from_config(cfg)
    if not scoring.retriever.dense:  # BM25 alone: nothing to embed
        scores, info = scoring.score(rset, None, {}, {}, None, None)
        if record is not None:
            record.update(info)
        return scores
    embed_cfg = cfg.get("embed") or {}
    readout = Readout.of(layer)
    collate = PromptCollator(backbone, prior, content=bool(readout.pooling and readout.pooling.needs_content))
    prefix = PrefixCache(backbone.model) if embed_cfg.get("prefix_cache", True) else None
    signature = vector_signature(backbone, layer, prefix_cache=prefix is not None)
    folder = store_dir(embed_cfg, run_dir, rset.name, signature)
    setting = "embed.cache_dir" if embed_cfg.get("cache", True) else "hydra.run.dir"
    corpus = scoring.corpus_items()  # an unlabeled corpus to fit post-processing on, embedded with this set's prompts
    key_of = {item.key: item_cache_key(item, collate.prompt(item)) for item in [*rset.items.values(), *corpus]}
    barrier()  # in a multi-process run every rank sees the same finished shards, hence plans the same batches
    store = ShardStore(folder, stale_after_s(embed_cfg)).scan(want=key_of.values())
    dropped = len(store.dropped)
    unique: dict[str, Item] = {}  # one item per vector key (the same bytes under two paths are one vector)
    for item in [*rset.items.values(), *corpus]:
        unique.setdefault(key_of[item.key], dataclasses.replace(item, key=key_of[item.key]))
    items = list(unique.values())
    batch_size = int(embed_cfg.get("batch_size", 32))
    claims = BatchClaims(folder) if work_sharing(embed_cfg) else None
    writer = EmbeddingWriter(folder, int(embed_cfg.get("shard_size", 4096)), setting, store, claims)
    module = EmbedModule(backbone, layer, prefix)

    def predict(batches: list[list[int]]) -> list[list[int]]:
        datamodule = RankedItemDataModule(items, collate, batches, batch_size, num_workers(embed_cfg.get("num_workers")),
                                          claims, store)
        with stop.finishing_batch():
            make_trainer(cfg, writer).predict(module, datamodule=datamodule, return_predictions=False)
        stop.check()  # a signal during the loop: finished batches are written, now stop
        return datamodule.deferred

    embed_rounds(items, batch_size, store, claims, predict, setting)
    computed = rank_sum(writer.items_written)  # every rank's work (collectives: called on every rank)
    batches = rank_sum(writer.batches_written)
    held_elsewhere = rank_sum(len(claims.elsewhere) if claims else 0)
    if stats is not None:
        if prefix is not None:
            stats.update(embed_prefix_tokens_skipped=prefix.stats.tokens_skipped,
                         embed_prefix_forwards=prefix.stats.prefix_forwards)
        stats.update(embed_items_computed=computed, embed_items_reused=len(items) - computed,
                     embed_batches_computed=batches, embed_batches_held_elsewhere=held_elsewhere,
                     embed_shards_dropped=dropped, embed_store=str(folder))
    fit_keys: dict[str, list[str]] = {}  # label-free: every item's vector, by role (never rows or positives)
    for item in corpus or rset.items.values():
        fit_keys.setdefault(item.role, []).append(key_of[item.key])
    head = backbone.model.get_output_embeddings().weight.detach().cpu() if scoring.postprocess.name == "lmhead_filter" else None
    scores, info = scoring.score(rset, store, key_of, fit_keys, head, folder, setting, int(cfg.get("seed", 0)))
    if record is not None:
        record.update(info)
    return scores


def rerank_stage(cfg: Mapping[str, Any], scorer: Scorer, rerank_cfg: RerankConfig, rset: RetrievalSet,
                 embed_scores: list[torch.Tensor], run_dir: Path, stats: dict[str, Any] | None = None,
                 summary: dict[str, Any] | None = None) -> list[torch.Tensor]:
    """Rerank each row's top-K (Lightning predict + JSONL writer); return fused rank scores per row.

    Finished rows are kept in ``<run_dir>/rerank/<dataset>/<signature>/`` (one folder per scorer setting) and a
    rerun (after a crash or kill) scores only the rows whose top-K has no finished record. ``summary`` (if given)
    receives the scorer's per-run figures read from the records (e.g. choice_debiased's flip rate).
    """
    out_dir = run_dir / "rerank" / rset.name / rerank_signature(scorer, rset.name)
    groups = top_k_groups(rset, embed_scores, rerank_cfg.top_k)
    barrier()
    done = read_rerank(out_dir, stale_after_s(cfg.get("embed") or {}))
    todo = pending_groups(groups, done)
    scorer.prepare(groups, done)  # e.g. candidate priors of finished rows: a resumed run recomputes none
    if todo:
        writer = RerankWriter(out_dir, int((cfg.get("pipeline") or {}).get("shard_size", 256)))
        groups_module = RankedGroups(todo, scorer, num_workers(rerank_cfg.num_workers))
        with stop.finishing_batch():
            make_trainer(cfg, writer).predict(RerankModule(scorer), datamodule=groups_module, return_predictions=False)
        stop.check()
        barrier()
    if stats is not None:
        stats.update(rerank_rows_computed=len(todo), rerank_rows_reused=len(groups) - len(todo),
                     **{f"rerank_{k}": v for k, v in scorer.counters().items()})
        if scorer.vision is not None:
            stats.update({f"rerank_vision_{k}": v for k, v in dataclasses.asdict(scorer.vision.stats).items()},
                         rerank_vision_cache_mib=scorer.vision.nbytes / 2**20)
    records = read_rerank(out_dir)
    if summary is not None:
        summary.update(scorer.summary([records[row.id] for row in rset.rows]))
    return [fuse_record(scores, records[row.id], rerank_cfg) for row, scores in zip(rset.rows, embed_scores)]


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
    scoring: ScorerSpec | None = None  # the stage-2 scorer (conf/scorer); two-stage pipelines only
    prompt: DatasetPrompt | None = None  # the dataset's prompt facts

    @property
    def staged(self) -> bool:
        """Whether stage 2 (reranking) runs."""
        return self.pipeline != "embed"


def check(cfg: Mapping[str, Any]) -> Plan:
    """Parse and check everything the config alone decides: a mistake is a one-line ConfigError here, before any
    data or weights load (:func:`freeret.benchmark.run_all` checks every dataset of a suite this way first)."""
    spec = ModelSpec.from_dict(cfg["model"])
    layer = Readout.from_config(cfg["layer"], cfg.get("pooling"))
    pipeline_cfg = dict(cfg.get("pipeline") or {"name": "embed"})
    pipeline = pipeline_cfg.get("name", "embed")
    if pipeline not in PIPELINES:
        raise ConfigError(f"pipeline={pipeline!r} is not available; choose one of {', '.join(PIPELINES)}")
    prompt = DatasetPrompt.from_config(cfg["dataset"])
    prior = Prior.from_dict(cfg["prior"]).for_dataset(prompt)
    staged = pipeline != "embed"
    rerank = RerankConfig.from_dict(pipeline_cfg) if staged else None
    scoring, framing = stage2_spec(cfg, rerank, prompt) if staged else (None, None)
    Stage1Scoring.from_config(cfg).retriever.require()  # bad retriever / postprocess values; bm25s installed
    work_sharing(cfg.get("embed") or {}), stale_after_s(cfg.get("embed") or {})  # bad embed.* keys
    main_metric = str(cfg["dataset"].get("main_metric") or MAIN_SCORE)
    if main_metric not in METRICS:
        raise ConfigError(f"dataset.main_metric={main_metric!r} is not one of {', '.join(METRICS)}")
    task = Task.from_dict(cfg["dataset"])
    if task.split not in (None, *SPLITS) or task.distribution not in (None, *DISTRIBUTIONS):
        raise ConfigError(f"dataset {cfg['dataset'].get('name')}: split={task.split!r} must be one of "
                          f"{', '.join(SPLITS)} and distribution={task.distribution!r} one of {', '.join(DISTRIBUTIONS)}")
    return Plan(cfg, spec, layer, prior, pipeline, framing, rerank, main_metric, task,
                Path(cfg.get("run_dir") or "outputs/run"), scoring, prompt)


@dataclass
class Inputs:
    """What a run scores, checked before the weights load: the usable rows, the input report, the checkpoint."""

    rset: RetrievalSet
    report: Report
    missed: int  # rows counted as misses: failed query or positive, or unreadable
    checkpoint: tuple[str, str | None]
    device: torch.device | None  # where to load the weights (None: a shared backbone is already loaded)


def text_side(plan: Plan, checkpoint: tuple[str, str | None], shared: SharedModel | None) -> tuple[TextSide, int]:
    """The tokenizer side and context length of the run's checkpoint: loaded once per suite (each dataset of a
    benchmark checks its rows with the same tokenizer; reloading it cost seconds per dataset)."""
    key = (repr(plan.spec), checkpoint)
    if shared is not None and key in shared.text_sides:
        return shared.text_sides[key]
    side = load_text_side(plan.spec, checkpoint)
    found = side, context_length(plan.spec, checkpoint, side)
    if shared is not None:
        shared.text_sides[key] = found
    return found


def prepare(plan: Plan, shared: SharedModel | None = None) -> Inputs:
    """Load the dataset and check it with the tokenizer alone: the device (a device map under DDP fails here), the
    checkpoint, the layer index, the framing's option tokens, every row and item (bad input is recorded in
    ``errors.jsonl`` and its rows count as misses; ``strict=true`` stops at the first one)."""
    cfg = plan.cfg
    rset = load_dataset(cfg["dataset"])
    if plan.pipeline == "rag":
        require_answers(rset)
    if plan.scoring is not None:
        plan.scoring.check_modalities(rset)  # e.g. image candidates under candidate_likelihood: one line, no weights
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    loaded = shared.backbone if shared else None
    device = run_device(cfg, plan.spec) if loaded is None else None
    checkpoint = resolve_checkpoint(plan.spec)
    plan.layer.resolve(count_layers(plan.spec, checkpoint) if loaded is None else loaded.num_layers)
    side, context = text_side(plan, checkpoint, shared)
    if plan.scoring is not None:
        plan.scoring.preflight(side, plan.prompt, plan.framing)  # single-token options and labels
    set_image_limit((cfg.get("images") or {}).get("max_pixels"))
    budget = text_budget(side, plan.prior, context, any(it.image for it in rset.items.values()))
    report = check_set(rset, bool(cfg.get("strict", False)), None, side.count_tokens, side.cut_tokens, budget)
    if is_main():
        report.write(plan.run_dir, rset.name)
    rset, missed = usable_rows(rset, report.failed_items)
    n_missed = len(missed) + report.bad_rows
    if not rset.rows:
        raise DataError(f"{rset.name}: no row can be scored ({n_missed} failed); the reasons are in "
                        f"{plan.run_dir / 'errors.jsonl'}")
    return Inputs(rset, report, n_missed, checkpoint, device)


def load(plan: Plan, inputs: Inputs, shared: SharedModel | None = None) -> Backbone:
    """The backbone: the one a benchmark already loaded, else the weights onto the run's device."""
    if shared is not None and shared.backbone is not None:
        return shared.backbone
    backbone = load_backbone(plan.spec, inputs.checkpoint, inputs.device)
    if shared is not None:
        shared.backbone = backbone
    return backbone


@dataclass
class StageResults:
    """What the stages produced: metrics per stage, timings and store statistics, RAG answers, the scorer used."""

    metrics: dict[str, dict[str, float]]
    timing: dict[str, Any]
    scorer: Scorer | None = None
    rag: dict[str, Any] | None = None
    scorer_summary: dict[str, Any] = field(default_factory=dict)
    stage1: dict[str, Any] = field(default_factory=dict)  # retriever, postprocess (statistics' sha256)


def stages(plan: Plan, inputs: Inputs, backbone: Backbone) -> StageResults:
    """Stage 1 (embed and score every row), stage 2 (rerank each row's top-K) and RAG, as the pipeline says."""
    rset, rerank = inputs.rset, plan.rerank
    scorer = (plan.scoring.build(BuildContext(backbone, plan.framing, plan.prompt, rerank.batch_size, rerank.calibrate,
                                              rerank.vision_cache_mb))
              if plan.scoring is not None and rerank is not None else None)  # a bad framing fails before stage 1
    summary: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    t = time.perf_counter()
    stage1: dict[str, Any] = {}
    embed_scores = embed_stage(plan.cfg, backbone, plan.layer, plan.prior, rset, plan.run_dir, stats=timing,
                               record=stage1)
    timing["embed_seconds"] = time.perf_counter() - t
    n_positives = [row.n_positive for row in rset.rows]
    metrics = {"embed": fold_misses(retrieval_metrics(embed_scores, n_positives), len(rset.rows), inputs.missed)}
    final_scores = embed_scores
    if scorer is not None and rerank is not None:
        t = time.perf_counter()
        final_scores = rerank_stage(plan.cfg, scorer, rerank, rset, embed_scores, plan.run_dir, stats=timing,
                                    summary=summary)
        timing["rerank_seconds"] = time.perf_counter() - t
        metrics["rerank"] = fold_misses(retrieval_metrics(final_scores, n_positives), len(rset.rows), inputs.missed)
    rag = None
    if plan.pipeline == "rag" and is_main():  # generation is not split across ranks
        t = time.perf_counter()
        rag = answer_stage(plan.cfg, backbone, rset, final_scores, plan.run_dir)
        timing["rag_seconds"] = time.perf_counter() - t
    return StageResults(metrics, timing, scorer, rag, summary, stage1)


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
    if plan.scoring is not None and plan.rerank is not None and done.scorer is not None:
        settings = {k: v for k, v in dataclasses.asdict(plan.rerank).items() if k != "top_k"}
        settings.update(scorer_config=plan.scoring.as_dict(), scorer_summary=done.scorer_summary,
                        **{k: v for k, v in done.scorer.describe().items() if k not in ("options", "match", "option_token_ids")})
        rerank = RerankRecord(plan.rerank.top_k, list(framing.options) if framing else [], framing.match if framing else None,
                              list(getattr(done.scorer, "option_ids", None) or []), framing.variant if framing else None,
                              settings, plan.scoring.name)
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


@dataclass
class SharedModel:
    """What a benchmark's datasets share: the backbone (the first run that needs it loads it, after its own checks)
    and the tokenizer side each dataset's rows are checked with."""

    backbone: Backbone | None = None
    text_sides: dict[tuple[str, tuple[str, str | None]], tuple[TextSide, int]] = field(default_factory=dict)


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


def summary_line(result: RunResult) -> str:
    """The one-line summary printed after a run."""
    name = result.main_score_name
    scores = " -> ".join(f"{stage} {name}={m[name]:.4f}" for stage, m in result.metrics.items())
    framing = f" | framing={result.framing}" if result.framing else ""
    if result.rerank is not None:
        framing += f" | scorer={result.rerank.scorer}" if result.rerank.scorer != "choice" else ""
        framing += f" top{result.rerank.top_k}"
    rag = ""
    if result.rag:
        rag = f" | RAG EM={result.rag['exact_match_with_retrieval']:.3f} (closed-book {result.rag['exact_match_closed_book']:.3f})"
    stage1 = "".join(f" | {key}={label}" for key, label, default in (
        ("retriever", (result.retriever or {}).get("label", "dense"), "dense"),
        ("postprocess", (result.postprocess or {}).get("label", "none"), "none")) if label != default)
    return (
        f"{result.dataset}: {scores} | layer={result.layer.label} | prior={result.prior}{stage1}{framing} "
        f"| model={result.model_name} | {result.counts.num_queries} queries x "
        f"{result.counts.candidates_per_query} candidates{rag}{failed_note(result)} | {result.timing['wall_seconds']:.0f}s"
    )


def failed_note(result: RunResult) -> str:
    """The summary line's note on failed queries (empty when none failed)."""
    failed = result.counts.failed_queries
    return f" | {failed} failed queries counted as misses (errors.jsonl)" if failed else ""
