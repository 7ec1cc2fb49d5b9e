"""Embedding shards on disk: safetensors files with the item keys in their metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def write_shard(path: Path, keys: list[str], embeddings: torch.Tensor) -> None:
    """Write one shard atomically (temporary file, then rename)."""
    if len(keys) != embeddings.shape[0]:
        raise ValueError(f"{len(keys)} keys for {embeddings.shape[0]} embeddings")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"embeddings": embeddings.contiguous().float().cpu()}, str(tmp), metadata={"keys": json.dumps(keys)})
    os.replace(tmp, path)


def read_shards(folder: Path) -> dict[str, torch.Tensor]:
    """All embeddings in ``folder`` keyed by item key."""
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            keys = json.loads(fh.metadata()["keys"])
            emb = fh.get_tensor("embeddings")
        out.update(zip(keys, emb))
    return out
