"""Stage 2 under Lightning's prediction loop: rerank each query's top-K with a scorer, then fuse with stage 1.

One prediction step is a block of ``pipeline.queries_per_step`` queries with their K candidates each: the scorer packs
their pairs into forwards of ``pipeline.max_tokens_per_batch`` tokens (``freeret/rerank/packing.py``). Queries are
ordered so that those sharing candidates sit in the same or nearby blocks (the candidate cache's hit rate), blocks are
planned over all rows (a resumed run keeps them) and split across ranks block by block. The writer stores each
row's record (a score per candidate and the scorer's extras, ``freeret/rerank/scorers``) as JSONL shards in a
folder named by the scorer's signature; fusion and tie rules live here, for every scorer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from freeret.atomic_files import STALE_AFTER_S, drop_if_unchanged, remove_abandoned, write_text_atomic
from freeret.backbone.backbone import Prompter
from freeret.backbone.image_records import preprocess_visual
from freeret.data.retrieval_set import RetrievalSet
from freeret.errors import ConfigError
from freeret.lit import BufferedShardWriter, UntilStopped, rank_share
from freeret.rerank.scorers.base import Scorer

log = logging.getLogger(__name__)

FUSIONS = ("rerank", "weighted", "zscore")
TIE_BREAKS = ("embed", "entropy")


@dataclass(frozen=True)
class RerankConfig:
    """``conf/pipeline`` keys of stage 2."""

    top_k: int = 50
    batch_size: int = 16
    calibrate: bool = False
    fusion: str = "rerank"
    fusion_weight: float = 0.5
    tie_break: str = "embed"
    vision_cache_mb: float = 2048
    num_workers: int | None = None
    queries_per_step: int = 16
    max_tokens_per_batch: int | None = None
    candidate_cache_mb: float = 1024

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> RerankConfig:
        """Pick stage-2 keys out of the pipeline mapping and check them."""
        if cfg.get("vision_cache_items") is not None:
            raise ConfigError("pipeline.vision_cache_items was replaced by pipeline.vision_cache_mb (MiB of vision "
                              "features kept on the model's device; 0 = off): set that one instead")
        keys = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        rc = cls(**keys)
        if rc.vision_cache_mb < 0:
            raise ConfigError(f"pipeline.vision_cache_mb must be >= 0 (0 = off), got {rc.vision_cache_mb}")
        if rc.fusion not in FUSIONS:
            raise ConfigError(f"pipeline.fusion={rc.fusion!r} is not one of {', '.join(FUSIONS)}")
        if rc.tie_break not in TIE_BREAKS:
            raise ConfigError(f"pipeline.tie_break={rc.tie_break!r} is not one of {', '.join(TIE_BREAKS)}")
        if rc.top_k < 1:
            raise ConfigError(f"pipeline.top_k must be >= 1, got {rc.top_k}")
        if isinstance(rc.queries_per_step, bool) or not isinstance(rc.queries_per_step, int) or rc.queries_per_step < 1:
            raise ConfigError(f"pipeline.queries_per_step must be an integer >= 1, got {rc.queries_per_step!r}")
        if rc.max_tokens_per_batch is not None and (isinstance(rc.max_tokens_per_batch, bool)
                                                    or not isinstance(rc.max_tokens_per_batch, int)
                                                    or rc.max_tokens_per_batch < 1):
            raise ConfigError(f"pipeline.max_tokens_per_batch must be an integer >= 1 or null (by device), "
                              f"got {rc.max_tokens_per_batch!r}")
        if rc.candidate_cache_mb < 0:
            raise ConfigError(f"pipeline.candidate_cache_mb must be >= 0 (0 = nothing kept between blocks), "
                              f"got {rc.candidate_cache_mb}")
        return rc


def top_k_groups(rset: RetrievalSet, embed_scores: Sequence[torch.Tensor], k: int) -> list[dict[str, Any]]:
    """Per row: the positions (in the row's candidate list) of its top-k by embedding score, and those scores."""
    groups = []
    for row, scores in zip(rset.rows, embed_scores):
        order = torch.argsort(-scores, stable=True)[: min(k, len(scores))]
        groups.append({"row": row.id, "positions": order.tolist(), "embed": scores[order].tolist(), "query": rset.items[row.query],
                       "candidates": [rset.items[row.candidates[i]] for i in order.tolist()]})
    return groups


def order_by_overlap(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups reordered so that each is followed by the unvisited group sharing most candidates with it (ties and
    no overlap: the first in the original order); deterministic. A candidate cache of a few blocks then serves most
    repeats of a candidate."""
    by_cand: dict[str, list[int]] = {}
    keys = [[c.key for c in g["candidates"]] for g in groups]
    for i, ks in enumerate(keys):
        for k in dict.fromkeys(ks):
            by_cand.setdefault(k, []).append(i)
    left, order, nxt = set(range(len(groups))), [], 0
    while left:
        i = nxt if nxt in left else min(left)
        left.discard(i)
        order.append(i)
        shared: dict[int, int] = {}
        for k in dict.fromkeys(keys[i]):
            for j in by_cand[k]:
                if j in left:
                    shared[j] = shared.get(j, 0) + 1
        nxt = min(shared, key=lambda j: (-shared[j], j)) if shared else min(left, default=-1)
    return [groups[i] for i in order]


def plan_blocks(groups: Sequence[dict[str, Any]], size: int, done: Mapping[str, Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
    """Blocks of ``size`` groups planned over all of them (ordered by :func:`order_by_overlap`), keeping only the
    pending groups of each block and the blocks that have any: a resumed run packs its remaining rows as the first
    run would have."""
    ordered = order_by_overlap(groups)
    blocks = [pending_groups(ordered[i : i + size], done) for i in range(0, len(ordered), size)]
    return [b for b in blocks if b]


class RerankModule(L.LightningModule):
    """``predict_step`` scores a block of queries' top-K candidates with the scorer."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.scorer = scorer  # the model is not a submodule, so Lightning never moves it (see EmbedModule)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # items hold paths and text; the scorer builds and moves its own tensors

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        records = {k: v for group in batch for k, v in (group.get("records") or {}).items()}
        scores = self.scorer.score_block([(g["query"], g["candidates"]) for g in batch], records or None)
        # the stage-1 cosines ride along, so a record alone gives the fused order (experiments/rerank_tune.py)
        return {"rows": [{"row": g["row"], "positions": g["positions"], **({"embed": g["embed"]} if "embed" in g else {}),
                          **s.record()} for g, s in zip(batch, scores)]}


def plan_images(groups: list[dict[str, Any]], uses: Callable[[Any, Sequence[Any]], set]) -> list[dict[str, Any]]:
    """Each group with the visuals to decode and process for it (``preprocess``): those it is the first to use,
    so each unique image is processed once per run (a visual evicted from the cache meanwhile is redone later)."""
    seen: set = set()
    planned = []
    for group in groups:
        first = sorted(uses(group["query"], group["candidates"]) - seen)
        seen.update(first)
        planned.append({**group, "preprocess": first})
    return planned


class GroupCollator:
    """Runs in DataLoader workers: decodes and processes a group's planned visuals into image records (each group
    of a block, when given a block)."""

    def __init__(self, prompter: Prompter | None) -> None:
        self.prompter = prompter

    def __call__(self, group: dict[str, Any] | list[dict[str, Any]]) -> Any:
        if isinstance(group, list):
            return [self(g) for g in group]
        if self.prompter is None or not group.get("preprocess"):
            return group
        return {**group, "records": {(path, count): preprocess_visual(self.prompter, path, count)
                                     for path, count in group["preprocess"]}}


class RankedGroups(L.LightningDataModule):
    """Blocks of pending query groups (:func:`plan_blocks`) split across ranks (every ``world_size``-th block), one
    block per prediction step; the same list on every rank. A list of groups is taken as blocks of one. With the
    scorer's vision cache, workers decode and process each group's new images ahead."""

    def __init__(self, blocks: list[list[dict[str, Any]]] | list[dict[str, Any]], scorer: Scorer | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.blocks = [b if isinstance(b, list) else [b] for b in blocks]
        self.scorer, self.num_workers = scorer, num_workers

    def predict_dataloader(self) -> DataLoader:
        blocks = rank_share(self, self.blocks)
        prompter = None
        if self.scorer is not None and self.scorer.vision is not None:
            flat = plan_images([g for b in blocks for g in b], self.scorer.image_uses)
            sizes, blocks, at = [len(b) for b in blocks], [], 0
            for n in sizes:
                blocks.append(flat[at : at + n])
                at += n
            prompter = self.scorer.bb.prompter
        # one block per step; a stop signal ends the loop after the block in flight (finished rows are written)
        return DataLoader(blocks, batch_size=None, sampler=UntilStopped(len(blocks)),  # type: ignore[arg-type]
                          collate_fn=GroupCollator(prompter), num_workers=self.num_workers)


class RerankWriter(BufferedShardWriter):
    """Each row's record (scores and the scorer's extras) as JSONL shards of ``shard_size`` rows, named by their row ids."""

    suffix = ".jsonl"

    def __init__(self, out_dir: Path, shard_size: int = 256) -> None:
        super().__init__(out_dir, shard_size)

    def size(self, prediction: dict[str, Any]) -> int:
        return len(prediction["rows"])

    def shard_path(self, rank: int, predictions: list[dict[str, Any]]) -> Path:
        # named by content: a resumed run adds shards and never overwrites a finished one
        digest = hashlib.sha1(json.dumps([r["row"] for p in predictions for r in p["rows"]]).encode()).hexdigest()[:16]
        return self.out_dir / f"rank{rank}-{digest}{self.suffix}"

    def write(self, path: Path, predictions: list[dict[str, Any]]) -> None:
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for p in predictions for r in p["rows"]), "hydra.run.dir")


def rerank_signature(scorer: Scorer, dataset: str) -> str:
    """A hash of what shapes the stored records: weights, the scorer and its settings (framing, prompts,
    calibration, lambda, ...), dataset wording. Each scorer setting resumes from its own folder."""
    blob = {"model": scorer.bb.metadata(), **scorer.signature(), "dataset": dataset}
    return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_rerank(out_dir: Path, stale_after_s: float = STALE_AFTER_S) -> dict[str, dict[str, Any]]:
    """Row id -> its record ({positions, scores, extras}) from the writer's shards.

    An unreadable (torn) shard is deleted unless a writer replaced it since it was read; abandoned temporaries
    are removed, a live writer's never.
    """
    rows: dict[str, dict[str, Any]] = {}
    remove_abandoned(Path(out_dir), ".*.tmp", stale_after_s)
    for shard in sorted(Path(out_dir).glob("*.jsonl")):
        try:
            seen = shard.stat()
            records = [json.loads(line) for line in shard.read_text().splitlines() if line.strip()]
            if not records or not all({"row", "positions", "scores"} <= rec.keys() for rec in records):
                raise ValueError("missing fields")
        except FileNotFoundError:
            continue  # another rank dropped it first
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("dropping unreadable rerank shard %s (%s); its rows are scored again", shard.name, exc)
            try:
                drop_if_unchanged(shard, seen)
            except OSError as err:  # a read-only run dir: its rows count as missing, the write will say why
                log.warning("cannot delete %s (%s)", shard, err)
            continue
        rows.update((rec["row"], rec) for rec in records)
    return rows


def pending_groups(groups: list[dict[str, Any]], done: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups whose row has no finished record for the same top-K positions."""
    return [g for g in groups if done.get(g["row"], {}).get("positions") != g["positions"]]


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """``x`` minus its mean over the row's top-K, over its standard deviation (zeros where it is constant)."""
    x = x.to(torch.float64)
    std = x.std(unbiased=False) if len(x) > 1 else x.new_zeros(())
    return (x - x.mean()) / std if float(std) > 0 else torch.zeros_like(x)


def fuse(scores: torch.Tensor, embed: torch.Tensor, cfg: RerankConfig) -> torch.Tensor:
    """The fused score of a row's top-K: the rerank score alone (``rerank``), ``w * score + (1 - w) * cosine``
    (``weighted``; the raw scales: a log-probability beside a cosine) or the same mix of both scores standardised
    over the top-K (``zscore``, scale-free)."""
    if cfg.fusion == "rerank":
        return scores
    w = cfg.fusion_weight
    if cfg.fusion == "zscore":
        return w * _standardised(scores) + (1 - w) * _standardised(embed)
    return w * scores + (1 - w) * embed


def fused_ranking(embed: torch.Tensor, positions: Sequence[int], scores: torch.Tensor, cfg: RerankConfig,
                  entropy: torch.Tensor | None = None) -> torch.Tensor:
    """Strict rank scores over the whole candidate list after stage 2.

    The reranked top-K come first, ordered by the fused score (:func:`fuse`); ties are broken by the embedding score
    (``tie_break=embed``) or by the lowest answer entropy (``entropy``, RetLLM; scorers that record one), and finally
    against the positive. The rest keep their stage-1 order.
    """
    n = len(embed)
    fused = fuse(scores, embed[list(positions)], cfg)
    if cfg.tie_break == "entropy":
        if entropy is None:
            raise ConfigError("pipeline.tie_break=entropy needs a scorer that records an entropy (choice, choice_debiased)")
        secondary = -entropy  # lower entropy ranks first
    else:
        secondary = embed[list(positions)]
    top = sorted(range(len(positions)), key=lambda j: (-float(fused[j]), -float(secondary[j]), positions[j] == 0))
    head = [positions[j] for j in top]
    in_head = set(head)
    rest = sorted((i for i in range(n) if i not in in_head), key=lambda i: (-float(embed[i]), i == 0))
    ranked = torch.empty(n)
    ranked[torch.tensor(head + rest)] = torch.arange(n, 0, -1, dtype=torch.float)
    return ranked


def fuse_record(embed: torch.Tensor, record: dict[str, Any], cfg: RerankConfig) -> torch.Tensor:
    """:func:`fused_ranking` of one row from its stored record."""
    entropy = torch.tensor(record["entropy"]) if "entropy" in record else None
    return fused_ranking(embed, record["positions"], torch.tensor(record["scores"]), cfg, entropy)
