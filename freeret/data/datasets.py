"""Dataset configs (``conf/dataset``) -> RetrievalSet, through the registry of dataset kinds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from freeret.data.retrieval_set import RetrievalSet, load_mmeb
from freeret.errors import ConfigError
from freeret.registry import Registry

DATASET_KINDS: Registry[Callable[[Mapping[str, Any]], RetrievalSet]] = Registry("dataset.kind", {
    "mmeb": "freeret.data.datasets:load_mmeb_file",             # one file in the MMEB row format (dataset.path)
    "mmeb_subset": "freeret.data.mmeb:load_mmeb_subset",        # an MMEB-eval subset (conf/dataset/mmeb)
    "mmeb_v2_video": "freeret.data.mmeb_v2:load_video_task",    # an MMEB-V2 video task
    "visdoc": "freeret.data.mmeb_v2:load_visdoc_task",          # an MMEB-V2 visual-document task
    "smoke": "freeret.toy.smoke:load_smoke_set",                # the toy smoke set (dataset=smoke_mm)
    "wordnet_qa": "freeret.data.wordnet_qa:load_wordnet_qa",   # the WordNet RAG question set
})
"""``dataset.kind`` -> the loader that reads its config into a RetrievalSet (imported when that kind is asked for)."""
MMEB_KINDS = frozenset({"mmeb_subset", "mmeb_v2_video", "visdoc"})
"""The dataset kinds of MMEB benchmarks, which take ``benchmark.source`` (``freeret.data.mmeb.MMEB_SOURCES``)."""


def load_dataset(cfg: Mapping[str, Any]) -> RetrievalSet:
    """Load the set a ``conf/dataset`` entry describes (``kind``, default ``mmeb``: a file in the MMEB row format)."""
    return DATASET_KINDS[cfg.get("kind", "mmeb")](cfg)


def load_mmeb_file(cfg: Mapping[str, Any]) -> RetrievalSet:
    """``dataset.kind=mmeb``: one ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file of MMEB rows (``dataset.path``)."""
    name = str(cfg.get("name", "mmeb"))
    if not cfg.get("path") or cfg["path"] == "???":
        raise ConfigError(f"dataset '{name}' needs dataset.path=FILE (.jsonl, .jsonl.gz or .parquet in the MMEB row format)")
    return load_mmeb(name, cfg["path"], cfg.get("image_root"), limit=cfg.get("limit"), pool=str(cfg.get("pool", "rows")))

