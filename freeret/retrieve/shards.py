"""Embedding shards on disk: safetensors files with their item keys, count and checksum in the metadata.

Shards are written atomically (a temporary named by its writer's host and PID, fsync, rename; see
:mod:`freeret.atomic_files`) and checked on open (count and sha256 of the tensor bytes), so a torn or corrupt shard is
found, deleted and recomputed instead of read. Any number of processes may read and write one folder at once: a
scan removes only abandoned temporaries, drops a torn shard only if no writer replaced it meanwhile, and
:meth:`ShardStore.refresh` picks up shards other jobs finished since. Readers stream one shard at a time; nothing
gathers the whole store in memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from freeret.atomic_files import STALE_AFTER_S, drop_if_unchanged, remove_abandoned, write_bytes_atomic, writer_id

log = logging.getLogger(__name__)
FORMAT = "freeret-shard-2"


def _digest(emb: torch.Tensor) -> str:
    return hashlib.sha256(memoryview(emb.contiguous().numpy()).cast("B")).hexdigest()


def shard_name(keys: Sequence[str], rank: int = 0) -> str:
    """A shard file name derived from its keys: reruns and ranks never overwrite each other's shards."""
    return f"rank{rank}-{hashlib.sha1(json.dumps(list(keys)).encode()).hexdigest()[:16]}.safetensors"


def write_shard(path: Path, keys: list[str], embeddings: torch.Tensor, setting: str | None = None) -> None:
    """Write one shard atomically with count, checksum and writer (``host:pid``); a full or read-only disk raises
    a one-line StorageError naming ``setting`` (the config key that moves the folder)."""
    if len(keys) != embeddings.shape[0]:
        raise ValueError(f"{len(keys)} keys for {embeddings.shape[0]} embeddings")
    emb = embeddings.detach().contiguous().float().cpu()
    meta = {"format": FORMAT, "keys": json.dumps(keys), "count": str(len(keys)), "sha256": _digest(emb),
            "writer": writer_id()}
    write_bytes_atomic(path, save({"embeddings": emb}, metadata=meta), setting)


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
    """A folder of shards: which keys are done, and streamed reads of their embeddings.

    ``stale_after_s``: a temporary that another host's writer left is deleted after this age (``embed.stale_temp_hours``).
    """

    def __init__(self, folder: Path, stale_after_s: float = STALE_AFTER_S) -> None:
        self.folder = Path(folder)
        self.stale_after_s = stale_after_s
        self.shards: list[Shard] = []
        self.index: dict[str, int] = {}  # key -> shard number << 32 | row in shard (ints, not tuples: less memory)
        self.dropped: list[Path] = []
        self._seen: set[str] = set()
        self._listed: int | None = None  # the folder's mtime at the last listing, once settled
        self._want: set[str] | None = None
        self._verify = True
        self.columns = slice(None)  # every read keeps these columns (:meth:`view`)

    def view(self, columns: slice) -> ShardStore:
        """The same store read through ``columns`` of each row (PromptReps: a stored row is dense + lexical parts)."""
        out = copy.copy(self)
        out.columns = columns
        return out

    def scan(self, verify: bool = True, want: Iterable[str] | None = None) -> ShardStore:
        """Index every whole shard; delete torn ones and abandoned temporaries so their items are recomputed.

        With ``want``, only those keys are indexed and only shards holding one are checksummed: memory and
        start-up time follow the dataset, not the size of a shared cache.
        """
        self._want = set(want) if want is not None else None
        self._verify = verify
        self.shards, self.index, self.dropped, self._seen, self._listed = [], {}, [], set(), None
        if self.folder.exists():
            remove_abandoned(self.folder, ".*.tmp", self.stale_after_s)
        return self.refresh()

    def refresh(self) -> ShardStore:
        """Index the shards that appeared since the last scan (other processes' finished work)."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
            if mtime == self._listed:
                return self  # no file added or removed since the last listing
            names = os.listdir(self.folder)  # a plain listing: pathlib's glob costs ~30 us per entry
        except FileNotFoundError:
            return self
        # a folder changed within the last 2 s may change again within its timestamp's resolution: list it again
        self._listed = mtime if time.time_ns() - mtime > 2_000_000_000 else None
        for name in sorted(n for n in set(names) - self._seen if n.endswith(".safetensors")):
            path = self.folder / name
            try:
                seen = path.stat()
            except FileNotFoundError:
                continue
            keys = _keys(path)  # the header only; the checksum is read for shards this run will use
            if keys is not None and self._verify and (self._want is None or not self._want.isdisjoint(keys)):
                keys = check_shard(path)
            if keys is None:
                self._drop(path, seen)
                continue
            self.add(path, keys)
        return self

    def add(self, path: Path, keys: Sequence[str]) -> None:
        """Index one whole shard (the writer's own, just written: no need to read it back)."""
        self._seen.add(path.name)
        n = len(self.shards)
        self.shards.append(Shard(path, len(keys)))
        for row, key in enumerate(keys):
            if self._want is None or key in self._want:
                self.index.setdefault(key, n << 32 | row)

    def _drop(self, path: Path, seen: os.stat_result) -> None:
        try:
            if drop_if_unchanged(path, seen):
                log.warning("shard %s is torn or corrupt: deleted, its items will be recomputed", path.name)
                self.dropped.append(path)
        except OSError as exc:  # a read-only store: leave it, its items count as missing
            log.warning("shard %s is torn or corrupt and cannot be deleted (%s)", path.name, exc)
            self._seen.add(path.name)

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
            return fh.get_tensor("embeddings")[:, self.columns]

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
