"""Dataset configs (``conf/dataset``) -> RetrievalSet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from freeret.data.retrieval_set import RetrievalSet, load_mmeb
from freeret.errors import ConfigError

KINDS = ("mmeb", "mmeb_subset", "mmeb_v2_video", "visdoc", "smoke", "wordnet_qa")


def load_dataset(cfg: Mapping[str, Any]) -> RetrievalSet:
    """Load the set a ``conf/dataset`` entry describes (``kind``: mmeb file or the built smoke set)."""
    kind = cfg.get("kind", "mmeb")
    name = str(cfg.get("name", kind))
    limit = cfg.get("limit")
    pool = str(cfg.get("pool", "rows"))
    if kind == "smoke":
        from freeret.testing.smoke import build_smoke_set

        return load_mmeb(name, build_smoke_set(), limit=limit, pool=pool)
    if kind == "wordnet_qa":
        from freeret.data.retrieval_set import build_set, resolve_path
        from freeret.data.wordnet_qa import wordnet_qa_rows

        return build_set(name, wordnet_qa_rows(cfg["path"]), resolve_path(cfg["path"]).parent, limit=limit, pool=pool)
    if kind == "mmeb_subset":
        from freeret.data.mmeb import load_mmeb_subset

        return load_mmeb_subset(cfg)
    if kind == "mmeb_v2_video":
        from freeret.data.mmeb_v2 import load_video_task

        return load_video_task(cfg)
    if kind == "visdoc":
        from freeret.data.mmeb_v2 import load_visdoc_task

        return load_visdoc_task(cfg)
    if kind == "mmeb":
        if not cfg.get("path") or cfg["path"] == "???":
            raise ConfigError(f"dataset '{name}' needs dataset.path=FILE (.jsonl, .jsonl.gz or .parquet in the MMEB row format)")
        return load_mmeb(name, cfg["path"], cfg.get("image_root"), limit=limit, pool=pool)
    raise ConfigError(f"dataset.kind={kind!r} is not one of {', '.join(KINDS)}")
