"""Embedding shards on disk: safetensors files with their item keys, count and checksum in the metadata.

Shards are written atomically (temporary file, fsync, rename) and checked on open (count and sha256 of the
tensor bytes), so a torn or corrupt shard is found, deleted and recomputed instead of read. Readers stream one
shard at a time; nothing gathers the whole store in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)
FORMAT = "freeret-shard-2"


def _digest(emb: torch.Tensor) -> str:
    return hashlib.sha256(memoryview(emb.contiguous().numpy()).cast("B")).hexdigest()


def shard_name(keys: Sequence[str], rank: int = 0) -> str:
    """A shard file name derived from its keys: reruns and ranks never overwrite each other's shards."""
    return f"rank{rank}-{hashlib.sha1(json.dumps(list(keys)).encode()).hexdigest()[:16]}.safetensors"


def write_shard(path: Path, keys: list[str], embeddings: torch.Tensor) -> None:
    """Write one shard atomically (temporary file, fsync, then rename), with count and checksum."""
    if len(keys) != embeddings.shape[0]:
        raise ValueError(f"{len(keys)} keys for {embeddings.shape[0]} embeddings")
    path.parent.mkdir(parents=True, exist_ok=True)
    emb = embeddings.detach().contiguous().float().cpu()
    meta = {"format": FORMAT, "keys": json.dumps(keys), "count": str(len(keys)), "sha256": _digest(emb)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"embeddings": emb}, str(tmp), metadata=meta)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def check_shard(path: Path) -> list[str] | None:
    """The shard's keys if it is whole (parses, count and sha256 match), else None."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = json.loads(meta["keys"])
            emb = fh.get_tensor("embeddings")
        if meta.get("format") != FORMAT or int(meta["count"]) != len(keys) or len(keys) != emb.shape[0]:
            return None
        if _digest(emb) != meta["sha256"]:
            return None
        return keys
    except Exception:  # a torn file fails anywhere: header, metadata or tensor read
        return None


@dataclass(frozen=True)
class Shard:
    """One verified shard file and its size (its keys are re-read from the header when needed)."""

    path: Path
    count: int

    @property
    def keys(self) -> list[str]:
        """The shard's keys, in row order."""
        return _keys(self.path) or []


class ShardStore:
    """A folder of shards: which keys are done, and streamed reads of their embeddings."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.shards: list[Shard] = []
        self.index: dict[str, int] = {}  # key -> shard number << 32 | row in shard (ints, not tuples: less memory)
        self.dropped: list[Path] = []

    def scan(self, verify: bool = True, want: Iterable[str] | None = None) -> "ShardStore":
        """Index every whole shard; delete torn ones (and stale temporaries) so they are recomputed.

        With ``want``, only those keys are indexed and only shards holding one are checksummed: memory and
        start-up time follow the dataset, not the size of a shared cache.
        """
        wanted = set(want) if want is not None else None
        self.shards, self.index, self.dropped = [], {}, []
        if not self.folder.exists():
            return self
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.folder.glob("*.safetensors")):
            keys = _keys(path)  # the header only; the checksum is read for shards this run will use
            if keys is not None and verify and (wanted is None or not wanted.isdisjoint(keys)):
                keys = check_shard(path)
            if keys is None:
                log.warning("shard %s is torn or corrupt: deleted, its items will be recomputed", path.name)
                path.unlink(missing_ok=True)
                self.dropped.append(path)
                continue
            n = len(self.shards)
            self.shards.append(Shard(path, len(keys)))
            for row, key in enumerate(keys):
                if wanted is None or key in wanted:
                    self.index.setdefault(key, n << 32 | row)
        return self

    def locate(self, key: str) -> tuple[int, int]:
        """(shard number, row in shard) of a key."""
        packed = self.index[key]
        return packed >> 32, packed & 0xFFFFFFFF

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def load(self, shard: int) -> torch.Tensor:
        """One shard's embeddings (fp32, rows in key order)."""
        with safe_open(str(self.shards[shard].path), framework="pt") as fh:
            return fh.get_tensor("embeddings")

    def iter_shards(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(shard number, embeddings) one shard at a time."""
        for n in range(len(self.shards)):
            yield n, self.load(n)

    def gather(self, keys: Iterable[str]) -> torch.Tensor:
        """Embeddings of ``keys`` in order, reading each shard once."""
        keys = list(keys)
        where = [self.locate(k) for k in keys]
        by_shard: dict[int, list[int]] = {}
        for i, (n, _) in enumerate(where):
            by_shard.setdefault(n, []).append(i)
        out: torch.Tensor | None = None
        for n, positions in by_shard.items():
            emb = self.load(n)
            if out is None:
                out = torch.empty(len(keys), emb.shape[1])
            out[positions] = emb[[where[i][1] for i in positions]]
        return out if out is not None else torch.empty(0, 0)


def _keys(path: Path) -> list[str] | None:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return json.loads((fh.metadata() or {})["keys"])
    except Exception:
        return None


def read_shards(folder: Path) -> dict[str, torch.Tensor]:
    """All embeddings in ``folder`` keyed by item key (small stores and tests; runs stream instead)."""
    store = ShardStore(folder).scan()
    out: dict[str, torch.Tensor] = {}
    for n, emb in store.iter_shards():
        out.update((k, e) for k, e in zip(store.shards[n].keys, emb) if k not in out)
    return out
