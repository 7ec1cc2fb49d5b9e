"""Content-keyed embedding cache: which vectors are already on disk, so reruns, resumes and sweeps skip them.

A store folder is named by a *vector signature*: a hash of everything that shapes a vector besides the item
(model id, path, revision and weight files, the sub-layer, dtype, device type, image processor class, pixel limits,
transformers and torch versions, a hash of FreeRet's backbone/embed source, the shard format). Inside it, each vector
is keyed by a hash of the item's role, the full prompt actually rendered (the prior's template and the chat template
included) and the image's bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from freeret.atomic_files import ensure_dir
from freeret.backbone.backbone import Backbone
from freeret.data.retrieval_set import Item
from freeret.embed.layers import LayerSpec, Readout
from freeret.errors import ConfigError
from freeret.optional import installed_version
from freeret.paths import cache_dir
from freeret.retrieve.shards import FORMAT


def _weights_fingerprint(path: str | None) -> list[Any] | None:
    """Names, sizes and mtimes of a checkpoint folder's files (a retrained folder gets a new signature); for a
    hub id, its HF cache snapshot folder (sizes and mtimes of the blobs the files link to)."""
    if not path or not Path(path).is_dir():
        return None
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).iterdir() if p.is_file())


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the source that turns inputs into vectors (backbone and embed packages): a code change that could
    move a vector (a hook, a processor, a pooling rule) gets a new signature instead of stale cached vectors."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted([*(root / "backbone").glob("*.py"), *(root / "embed").glob("*.py")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def vector_signature(backbone: Backbone, layer: LayerSpec | Readout, prefix_cache: bool = False) -> dict[str, Any]:
    """Everything besides the item that shapes a vector (the prompt, hence the prior, is in the item key).

    ``prefix_cache`` (shared-prompt KV reuse), the device type and the image processing backend move vectors only
    by float rounding (pixels by up to ~0.03), but a store holds one path's vectors.
    """
    meta = backbone.metadata()
    return {
        "format": FORMAT,
        "model": {k: meta.get(k) for k in ("name", "family", "source", "hf_id", "path", "revision", "dtype",
                                           "attn_implementation", "num_layers", "min_pixels", "max_pixels",
                                           "device", "image_processor")},
        "weights": _weights_fingerprint(backbone.checkpoint_dir),
        "layer": Readout.of(layer).describe(backbone.num_layers),  # points, their averaging, the pooling
        "prefix_cache": prefix_cache,
        "code": code_fingerprint(),
        "transformers": installed_version("transformers"),
        "torch": installed_version("torch"),
    }


def signature_id(signature: Mapping[str, Any]) -> str:
    """A short stable hash of a signature (the store folder name)."""
    return hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:20]


@lru_cache(maxsize=65536)
def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def visual_digest(path: str) -> str:
    """Hash of an image or video file's bytes, or of a frame folder's file names and bytes."""
    p = Path(path)
    if p.is_dir():
        parts = [(f.name, _file_digest(str(f))) for f in sorted(p.iterdir()) if f.is_file()]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return _file_digest(str(p))


def item_cache_key(item: Item, prompt: str) -> str:
    """Content key of one vector: role, rendered prompt and image/video bytes (not their path)."""
    image = visual_digest(item.image) if item.image else None
    digest = hashlib.sha256(json.dumps([item.role, prompt, image]).encode()).hexdigest()[:24]
    return f"{item.role[0]}-{digest}"


def store_dir(embed_cfg: Mapping[str, Any], run_dir: Path, dataset: str, signature: Mapping[str, Any]) -> Path:
    """Where a run's vectors live: the shared cache (``embed.cache=true``) or the run dir, per signature.

    A full or read-only disk is a one-line StorageError; a read-only cache that already holds the folder is fine.
    """
    sig = signature_id(signature)
    if embed_cfg.get("cache", True):
        root = Path(embed_cfg["cache_dir"]).expanduser() if embed_cfg.get("cache_dir") else cache_dir() / "embeddings"
        folder, setting = root / sig, "embed.cache_dir"
    else:
        folder, setting = run_dir / "embeddings" / dataset / sig, "hydra.run.dir"
    ensure_dir(folder, setting)
    sig_file = folder / "signature.json"
    if not sig_file.exists():
        from freeret.atomic_files import write_json

        write_json(sig_file, dict(signature), setting)
    return folder


def work_sharing(embed_cfg: Mapping[str, Any]) -> bool:
    """``embed.lock``: per-batch locks so concurrent jobs split the work; ``auto`` = on for the shared cache."""
    lock = embed_cfg.get("lock", "auto")
    if lock == "auto":
        return bool(embed_cfg.get("cache", True))
    if not isinstance(lock, bool):
        raise ConfigError(f"embed.lock={lock!r} must be true, false or auto")
    return lock


def stale_after_s(embed_cfg: Mapping[str, Any]) -> float:
    """``embed.stale_temp_hours`` in seconds: when another host's leftover temporary counts as abandoned."""
    hours = embed_cfg.get("stale_temp_hours", 24)
    if not isinstance(hours, (int, float)) or hours <= 0:
        raise ConfigError(f"embed.stale_temp_hours={hours!r} must be a positive number of hours")
    return float(hours) * 3600.0
