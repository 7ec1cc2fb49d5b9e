"""Lightning glue: a predict-only module that embeds batches and a writer that shards them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from freeret.backbone.backbone import Backbone
from freeret.embed.layers import LayerSpec
from freeret.retrieve.store import write_shard


class EmbedModule(L.LightningModule):
    """``predict_step`` runs the backbone to the chosen sub-layer and pools the last token."""

    def __init__(self, backbone: Backbone, layer: LayerSpec) -> None:
        super().__init__()
        self.backbone, self.layer = backbone, layer
        self.model = backbone.model  # registered so Lightning moves it to the device

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"keys": batch["keys"], "embeddings": self.backbone.embed(batch["inputs"], self.layer)}


class EmbeddingWriter(BasePredictionWriter):
    """Buffers predictions and writes a shard every ``shard_size`` items (and at the end)."""

    def __init__(self, out_dir: Path, shard_size: int = 4096) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.shard_size = Path(out_dir), shard_size
        self._keys: list[str] = []
        self._embs: list[torch.Tensor] = []
        self._count = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices: Sequence[int] | None, batch, batch_idx, dataloader_idx) -> None:
        self._keys += list(prediction["keys"])
        self._embs.append(prediction["embeddings"].detach().cpu())
        if len(self._keys) >= self.shard_size:
            self._flush(trainer.global_rank)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._flush(trainer.global_rank)

    def _flush(self, rank: int) -> None:
        if not self._keys:
            return
        write_shard(self.out_dir / f"rank{rank}-{self._count:05d}.safetensors", self._keys, torch.cat(self._embs))
        self._keys, self._embs, self._count = [], [], self._count + 1
