"""Lightning glue: a predict-only module that embeds batches and a writer that shards them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from torch.utils.data import DataLoader

from freeret.backbone.backbone import Backbone
from freeret.backbone.prefix import PrefixCache
from freeret.data.datamodule import ItemDataModule, PlannedBatches, plan_batches
from freeret.embed.layers import LayerSpec
from freeret.retrieve.store import shard_name, write_shard


class EmbedModule(L.LightningModule):
    """``predict_step`` runs the backbone to the chosen sub-layer and pools the last token."""

    def __init__(self, backbone: Backbone, layer: LayerSpec, prefix: PrefixCache | None = None) -> None:
        super().__init__()
        # The model is deliberately not a submodule: Lightning would copy it to the device before every predict
        # and back to the CPU after; it loads on the run's device and stays there (runner.run_device).
        self.backbone, self.layer, self.prefix = backbone, layer, prefix

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"keys": batch["keys"], "embeddings": self.backbone.embed(batch["inputs"], self.layer, self.prefix)}


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

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        self._buffer.append(prediction)
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
    """Embedding shards: safetensors with the item keys in the metadata."""

    suffix = ".safetensors"

    def __init__(self, out_dir: Path, shard_size: int = 4096) -> None:
        super().__init__(out_dir, shard_size)

    def size(self, prediction: dict[str, Any]) -> int:
        return len(prediction["keys"])

    def shard_path(self, rank: int, predictions: list[dict[str, Any]]) -> Path:
        # named by content: a rerun or resume appends new shards and never overwrites a finished one
        return self.out_dir / shard_name([k for p in predictions for k in p["keys"]], rank)

    def write(self, path: Path, predictions: list[dict[str, Any]]) -> None:
        keys = [k for p in predictions for k in p["keys"]]
        write_shard(path, keys, torch.cat([p["embeddings"].detach().cpu() for p in predictions]))


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


class RankedItemDataModule(ItemDataModule):
    """Pending planned batches split across ranks (every ``world_size``-th batch): each DDP process embeds a
    disjoint share and its writer stores the items' keys from the batch, never batch indices."""

    def __init__(self, items: Sequence[Any], collate: Any, batch_size: int = 32, num_workers: int = 0,
                 done: Collection[str] = ()) -> None:
        super().__init__(items, collate, batch_size, num_workers)
        self.done = done

    def predict_dataloader(self) -> DataLoader:
        batches = rank_share(self, pending_batches(self.items, self.batch_size, self.done))
        return DataLoader(self.items, batch_sampler=PlannedBatches(batches), collate_fn=self.collate,  # type: ignore[arg-type]
                          num_workers=self.num_workers)
