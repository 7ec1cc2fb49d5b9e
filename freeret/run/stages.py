"""The stages of a run: stage 1 (embed every item, score every row), stage 2 (rerank each row's top-K, fused with
stage 1) and the RAG answers, as the plan's pipeline says. Each stage resumes from what an earlier run stored."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from freeret import stop
from freeret.atomic_files import write_text_atomic
from freeret.backbone import Backbone
from freeret.backbone.prefix import PrefixCache
from freeret.data.datamodule import PromptCollator, num_workers
from freeret.data.retrieval_set import Item, RetrievalSet
from freeret.data.validate import fold_misses
from freeret.distributed import barrier, is_main, rank_sum
from freeret.embed.layers import LayerSpec, Readout
from freeret.embed.priors import Prior
from freeret.eval.metrics import retrieval_metrics
from freeret.generate import generate_targets
from freeret.lit import (
    EmbeddingWriter,
    EmbedModule,
    RankedItemDataModule,
    embed_rounds,
    make_trainer,
)
from freeret.rag import answer_stage
from freeret.rerank.scorers.base import BuildContext, Scorer
from freeret.rerank.stage import (
    RankedGroups,
    RerankConfig,
    RerankModule,
    RerankWriter,
    fuse_record,
    pending_groups,
    plan_blocks,
    read_rerank,
    rerank_signature,
    top_k_groups,
)
from freeret.retrieve.ranking import Stage1Scoring
from freeret.retrieve.shards import ShardStore
from freeret.run.inputs import Inputs
from freeret.run.plan import Plan
from freeret.signatures import (
    item_cache_key,
    stale_after_s,
    store_dir,
    vector_signature,
    work_sharing,
)
from freeret.views import Views, combined_key, views_code, write_combined
from freeret.workshare import BatchClaims


def embed_stage(cfg: Mapping[str, Any], backbone: Backbone, layer: LayerSpec | Readout, prior: Prior, rset: RetrievalSet,
                run_dir: Path, stats: dict[str, Any] | None = None,
                record: dict[str, Any] | None = None, views: Views | None = None) -> list[torch.Tensor]:
    """Embed every unique item not already in the store (Lightning predict + shard writer); return per-row
    stage-1 scores from the shards (``conf/retriever``, ``conf/postprocess``: applied when scoring, so they reuse
    stored vectors). ``stats`` (if given) receives how many items were computed/reused; ``record`` what scored.
    With active ``views`` (a prompt ensemble, a query expansion) every view is embedded into the same store and each
    item scores with the combination of its views, from a derived store (:mod:`freeret.views`)."""
    scoring = Stage1Scoring.from_config(cfg)
    if not scoring.retriever.dense:  # BM25 or the trained baseline: the backbone embeds nothing
        scores, info = scoring.score(rset, None, {}, {}, None, None, device=backbone.device)
        if record is not None:
            record.update(info)
        return scores
    embed_cfg = cfg.get("embed") or {}
    layer = readout = dataclasses.replace(Readout.of(layer), lexical_k=scoring.lexical_k)  # PromptReps: same forward
    pooling = readout.pooling

    def collator(p: Prior) -> PromptCollator:
        return PromptCollator(backbone, p, content=bool(pooling and pooling.needs_content),
                              occurrence=pooling.occurrence if pooling else "first", prepend=readout.prepend)

    use_prefix = embed_cfg.get("prefix_cache", True) and readout.prefix_cache_ok  # not with token prepending
    prefix = PrefixCache(backbone.model) if use_prefix else None
    signature = vector_signature(backbone, layer, prefix_cache=prefix is not None)
    folder = store_dir(embed_cfg, run_dir, rset.name, signature)
    setting = "embed.cache_dir" if embed_cfg.get("cache", True) else "hydra.run.dir"
    corpus = scoring.corpus_items()  # an unlabeled corpus to fit post-processing on, embedded with this set's prompts
    active = views is not None and views.active
    if active:
        assert views is not None
        jobs, parts, key_of = _view_jobs(views, collator, rset, corpus, backbone, run_dir, folder, setting, record)
    else:
        collate = collator(prior)
        key_of = {item.key: item_cache_key(item, collate.prompt(item)) for item in [*rset.items.values(), *corpus]}
        jobs = [(collate, [*rset.items.values(), *corpus], key_of)]
    barrier()  # in a multi-process run every rank sees the same finished shards, hence plans the same batches
    store = ShardStore(folder, stale_after_s(embed_cfg)).scan(want={k for _, _, keys in jobs for k in keys.values()})
    dropped = len(store.dropped)
    batch_size = int(embed_cfg.get("batch_size", 32))
    claims = BatchClaims(folder) if work_sharing(embed_cfg) else None
    module = EmbedModule(backbone, layer, prefix)
    n_items = computed = batches = held_elsewhere = 0
    for collate, job_items, job_keys in jobs:  # one job per prompt (ensemble member); the ordinary run has one
        unique: dict[str, Item] = {}  # one item per vector key (the same bytes under two paths are one vector)
        for item in job_items:
            unique.setdefault(job_keys[item.key], dataclasses.replace(item, key=job_keys[item.key]))
        items = list(unique.values())
        writer = EmbeddingWriter(folder, int(embed_cfg.get("shard_size", 4096)), setting, store, claims)

        def predict(batches: list[list[int]], items: list[Item] = items, collate: PromptCollator = collate,
                    writer: EmbeddingWriter = writer) -> list[list[int]]:
            datamodule = RankedItemDataModule(items, collate, batches, batch_size,
                                              num_workers(embed_cfg.get("num_workers")), claims, store)
            with stop.finishing_batch():
                make_trainer(cfg, writer).predict(module, datamodule=datamodule, return_predictions=False)
            stop.check()  # a signal during the loop: finished batches are written, now stop
            return datamodule.deferred

        embed_rounds(items, batch_size, store, claims, predict, setting)
        n_items += len(items)
        computed += rank_sum(writer.items_written)  # every rank's work (collectives: called on every rank)
        batches += rank_sum(writer.batches_written)
        held_elsewhere += rank_sum(len(claims.elsewhere) if claims else 0)
    if stats is not None:
        if prefix is not None:
            stats.update(embed_prefix_tokens_skipped=prefix.stats.tokens_skipped,
                         embed_prefix_forwards=prefix.stats.prefix_forwards)
        stats.update(embed_items_computed=computed, embed_items_reused=n_items - computed,
                     embed_batches_computed=batches, embed_batches_held_elsewhere=held_elsewhere,
                     embed_shards_dropped=dropped, embed_store=str(folder))
    if active:  # each item's combined vector, in a derived store named by the signature and the combination
        assert views is not None
        source = store
        folder = store_dir(embed_cfg, run_dir, rset.name, {**signature, "views": views.describe(),
                                                                     "views_code": views_code()})
        store = ShardStore(folder, stale_after_s(embed_cfg)).scan(want=parts)
        written = write_combined(source, store, parts, setting) if is_main() else 0
        barrier()
        store.refresh()
        if stats is not None:
            stats.update(embed_views_combined=rank_sum(written), embed_views_store=str(folder))
    fit_keys: dict[str, list[str]] = {}  # label-free: every item's vector, by role (never rows or positives)
    for item in corpus or rset.items.values():
        fit_keys.setdefault(item.role, []).append(key_of[item.key])
    head = backbone.model.get_output_embeddings().weight.detach().cpu() if scoring.postprocess.name == "lmhead_filter" else None
    scores, info = scoring.score(rset, store, key_of, fit_keys, head, folder, setting, int(cfg.get("seed", 0)))
    if record is not None:
        record.update(info)
    return scores


def _view_jobs(views: Views, collator: Callable[[Prior], PromptCollator], rset: RetrievalSet, corpus: list[Item],
               backbone: Backbone, run_dir: Path, folder: Path, setting: str,
               record: dict[str, Any] | None) -> tuple[list[Any], dict[str, list[tuple[str, float]]], dict[str, str]]:
    """The embedding jobs of ``views`` (one per ensemble member: its collator, the items it embeds, their store
    keys), each item's views as (store key, weight) under its combined key, and item key -> combined key. Queries'
    hypothetical targets are generated first (cached beside the stores; all written to
    ``<run_dir>/generations/<dataset>.jsonl``)."""
    everything = [*rset.items.values(), *corpus]
    generated: dict[str, str] = {}
    described = views.describe()
    if views.expand.active:
        queries = [item.text for item in everything if item.role == "query"]
        gens = generate_targets(backbone, views.expand, queries, folder.parent / "generations", setting)
        generated = gens.texts
        if is_main():
            lines = "".join(json.dumps({"query": q, "generated": gens.raw[q], "target": t}) + "\n"
                            for q, t in gens.texts.items())
            write_text_atomic(run_dir / "generations" / f"{rset.name}.jsonl", lines, "hydra.run.dir")
        described["expand"] = gens.record(views.expand)
    if record is not None:
        record["views"] = described
    collates = [collator(member) for member in views.members]
    members: list[dict[str, Item]] = [{} for _ in views.members]  # per member: store key -> the view's item
    parts: dict[str, list[tuple[str, float]]] = {}
    key_of: dict[str, str] = {}
    for item in everything:
        item_parts = []
        for view in views.of(item, generated.get(item.text) if item.role == "query" else None):
            key = item_cache_key(view.item, collates[view.member].prompt(view.item))
            members[view.member].setdefault(key, dataclasses.replace(view.item, key=key))
            item_parts.append((key, view.weight))
        key_of[item.key] = combined_key(item_parts)
        parts.setdefault(key_of[item.key], item_parts)
    jobs = [(collate, list(found.values()), {k: k for k in found}) for collate, found in zip(collates, members)]
    return jobs, parts, key_of


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
        blocks = plan_blocks(groups, rerank_cfg.queries_per_step, done)
        groups_module = RankedGroups(blocks, scorer, num_workers(rerank_cfg.num_workers))
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
    scorer = (plan.scorer.build(BuildContext(backbone, plan.framing, plan.prompt, rerank.batch_size, rerank.calibrate,
                                              rerank.vision_cache_mb, rerank.max_tokens_per_batch,
                                              rerank.candidate_cache_mb))
              if plan.scorer is not None and rerank is not None else None)  # a bad framing fails before stage 1
    summary: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    t = time.perf_counter()
    stage1: dict[str, Any] = {}
    embed_scores = embed_stage(plan.cfg, backbone, plan.layer, plan.prior, rset, plan.run_dir, stats=timing,
                               record=stage1, views=plan.views)
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
