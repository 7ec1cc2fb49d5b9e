"""Lightning glue: the predict-only Trainer and the device it runs on, a module that embeds batches and a writer
that shards them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import ParallelStrategy
from torch.utils.data import DataLoader, Sampler

from freeret import stop
from freeret.atomic_files import check_writable
from freeret.backbone.backbone import Backbone
from freeret.backbone.prefix import PrefixCache
from freeret.backbone.spec import ModelSpec
from freeret.data.datamodule import ItemDataModule, plan_batches
from freeret.distributed import barrier, rank_sum
from freeret.embed.layers import LayerSpec, Readout
from freeret.errors import ConfigError
from freeret.retrieve.shards import ShardStore, shard_name, write_shard
from freeret.workshare import BatchClaims, batch_id


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


class EmbedModule(L.LightningModule):
    """``predict_step`` runs the backbone to the chosen sub-layer and pools the last token."""

    def __init__(self, backbone: Backbone, layer: LayerSpec | Readout, prefix: PrefixCache | None = None) -> None:
        super().__init__()
        # The model is deliberately not a submodule: Lightning would copy it to the device before every predict
        # and back to the CPU after; it loads on the run's device and stays there (run_device).
        self.backbone, self.layer, self.prefix = backbone, layer, prefix

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        vectors = self.backbone.embed(batch["inputs"], self.layer, self.prefix, batch.get("content"), batch.get("slot"))
        return {"keys": batch["keys"], "embeddings": vectors}


class BufferedShardWriter(BasePredictionWriter):
    """Buffers per-batch predictions and writes a shard every ``shard_size`` units (and at the end).

    Subclasses say how big a prediction is and how a buffer becomes a file.
    """

    suffix = ".bin"

    def __init__(self, out_dir: Path, shard_size: int) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.shard_size = Path(out_dir), shard_size
        self._buffer: list[Any] = []
        self._size = 0
        self._count = 0

    def size(self, prediction: Any) -> int:
        """How many units (items, rows) one prediction holds."""
        return 1

    def write(self, path: Path, predictions: list[Any]) -> None:
        """Write one shard (atomically)."""
        raise NotImplementedError

    def shard_path(self, rank: int, predictions: list[Any]) -> Path:
        """Where the next shard goes (rank and running count by default)."""
        return self.out_dir / f"rank{rank}-{self._count:05d}{self.suffix}"

    def host(self, prediction: Any) -> Any:
        """The prediction as buffered until its shard is written (host memory; no device memory held meanwhile)."""
        return prediction

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        self._buffer.append(self.host(prediction))
        self._size += self.size(prediction)
        if self._size >= self.shard_size:
            self._flush(trainer.global_rank)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._flush(trainer.global_rank)

    def _flush(self, rank: int) -> None:
        if not self._buffer:
            return
        self.write(self.shard_path(rank, self._buffer), self._buffer)
        self._buffer, self._size, self._count = [], 0, self._count + 1


class EmbeddingWriter(BufferedShardWriter):
    """Embedding shards: safetensors with the item keys in the metadata.

    ``setting`` names the config key that moves the folder (in the one-line error of a full disk); after each
    shard, ``store`` indexes it and ``claims`` releases its batches' locks (their vectors are now on disk).
    """

    suffix = ".safetensors"

    def __init__(self, out_dir: Path, shard_size: int = 4096, setting: str | None = None,
                 store: ShardStore | None = None, claims: BatchClaims | None = None) -> None:
        super().__init__(out_dir, shard_size)
        self.setting, self.store, self.claims = setting, store, claims
        self.items_written = 0
        self.batches_written = 0

    def size(self, prediction: dict[str, Any]) -> int:
        return len(prediction["keys"])

    def shard_path(self, rank: int, predictions: list[dict[str, Any]]) -> Path:
        # named by content: a rerun or resume appends new shards and never overwrites a finished one
        return self.out_dir / shard_name([k for p in predictions for k in p["keys"]], rank)

    def host(self, prediction: dict[str, Any]) -> dict[str, Any]:
        return {**prediction, "embeddings": prediction["embeddings"].detach().to("cpu", torch.float32)}

    def write(self, path: Path, predictions: list[dict[str, Any]]) -> None:
        keys = [k for p in predictions for k in p["keys"]]
        write_shard(path, keys, torch.cat([p["embeddings"] for p in predictions]), self.setting)
        self.items_written += len(keys)
        self.batches_written += len(predictions)
        if self.store is not None:
            self.store.add(path, keys)
        if self.claims is not None:
            for p in predictions:
                self.claims.release(batch_id(p["keys"]), done=True)


def rank_share(datamodule: L.LightningDataModule, work: Sequence[Any]) -> list[Any]:
    """This rank's share of ``work`` (every ``world_size``-th entry) under the datamodule's trainer; all of it alone."""
    trainer = getattr(datamodule, "trainer", None)
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    return list(work[rank::world])


def pending_batches(items: list[Any], batch_size: int, done: Collection[str] = ()) -> list[list[int]]:
    """The planned batches of *all* items that hold an item not done yet.

    Planning over every item (not only the missing ones) keeps each batch's composition, hence its padding and
    its vectors bit for bit, the same in a resumed run as in an uninterrupted one; a partly done batch reruns whole.
    """
    return [b for b in plan_batches(items, batch_size) if any(items[i].key not in done for i in b)]


class UntilStopped(Sampler[int]):
    """Indices ``0..n-1`` in order, ending early once a stop signal arrived (the step in flight finishes)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            if stop.requested():
                return
            yield i

    def __len__(self) -> int:
        return self.n


class ClaimedBatches(Sampler[list[int]]):
    """Planned batches in order, stopping early once a stop signal arrived (:mod:`freeret.stop`).

    With ``claims`` (work sharing), a batch is yielded only if this process takes its lock and the store (re-read)
    still misses one of its items; batches another job holds are collected in ``deferred``.
    """

    def __init__(self, batches: list[list[int]], keys: Callable[[list[int]], list[str]],
                 claims: BatchClaims | None = None, store: ShardStore | None = None) -> None:
        self.batches, self.keys, self.claims, self.store = batches, keys, claims, store
        self.deferred: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        self.deferred = []
        for batch in self.batches:
            if stop.requested():
                return
            if self.claims is not None:
                bid = batch_id(self.keys(batch))
                if not self.claims.try_claim(bid):
                    self.deferred.append(batch)
                    continue
                if self.store is not None and batch_finished(self.store, self.keys(batch)):
                    self.claims.release(bid, done=True)
                    continue
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


def batch_finished(store: ShardStore, keys: Sequence[str]) -> bool:
    """Whether every key is in the store, after indexing the shards other jobs wrote meanwhile."""
    store.refresh()
    return all(k in store.index for k in keys)


class RankedItemDataModule(ItemDataModule):
    """Planned batches split across ranks (every ``world_size``-th batch): each DDP process embeds a disjoint
    share and its writer stores the items' keys from the batch, never batch indices. With ``claims``, concurrent
    jobs split the batches too (:class:`ClaimedBatches`); after the loop, ``deferred`` holds those left to others."""

    def __init__(self, items: Sequence[Any], collate: Any, batches: list[list[int]], batch_size: int = 32,
                 num_workers: int = 0, claims: BatchClaims | None = None, store: ShardStore | None = None) -> None:
        super().__init__(items, collate, batch_size, num_workers)
        self.batches, self.claims, self.store = batches, claims, store
        self.sampler: ClaimedBatches | None = None

    @property
    def deferred(self) -> list[list[int]]:
        """Batches of this rank's share that another job held during the loop."""
        return self.sampler.deferred if self.sampler is not None else []

    def predict_dataloader(self) -> DataLoader:
        self.sampler = ClaimedBatches(rank_share(self, self.batches), lambda b: [self.items[i].key for i in b],
                                      self.claims, self.store)
        return DataLoader(self.items, batch_sampler=self.sampler, collate_fn=self.collate,  # type: ignore[arg-type]
                          num_workers=self.num_workers)


def embed_rounds(items: Sequence[Any], batch_size: int, store: ShardStore, claims: BatchClaims | None,
                 predict: Callable[[list[list[int]]], list[list[int]]], setting: str | None = None) -> int:
    """Embed until every item is in ``store``; returns how many prediction rounds ran.

    ``predict(batches)`` runs one prediction loop over the pending planned batches and returns those another job
    held. Each is then waited for, holding no lock (so no two jobs wait on each other), and, if its holder died
    without writing it, computed in the next round. Every rank runs the same number of rounds.
    """
    rounds, last = 0, None
    try:
        while True:
            barrier()  # every rank's shards are on disk before any rank plans
            store.refresh()
            todo = pending_batches(items, batch_size, store.index)
            if not rank_sum(int(bool(todo))):
                return rounds
            if todo == last:
                raise RuntimeError(f"{len(todo)} planned batches stay missing from {store.folder} after a round")
            if rounds == 0:
                check_writable(store.folder, setting)  # a read-only store fails before any work
            deferred = predict(todo)
            for batch in deferred:
                keys = [items[i].key for i in batch]
                claims.wait(batch_id(keys), lambda keys=keys: batch_finished(store, keys))  # type: ignore[union-attr]
            last = None if rank_sum(len(deferred)) else todo  # the same on every rank
            rounds += 1
    finally:
        if claims is not None:
            claims.release_all()
