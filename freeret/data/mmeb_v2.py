"""MMEB-V2 readers: video tasks (clips, 8 sampled frames, hit@1) and visual-document tasks (NDCG@5).

Video task folder ``<root>/<task>/``: ``<task>.jsonl`` (or ``.parquet``) in the MMEB row format, where
``qry_video_path`` / ``tgt_video_path`` (or the ``*_img_path`` fields) name clips relative to the folder:
a directory of frame images or a video file (:mod:`freeret.data.visual`).

Visual-document task folder ``<root>/<task>/`` (BEIR style): ``queries.jsonl`` (``id``, ``text``),
``corpus.jsonl`` (``id``, ``image``, optional ``text``: document pages) and ``qrels.jsonl``
(``query_id``, ``corpus_id``, ``score`` > 0 = relevant). Every query ranks the whole corpus; its
relevant pages come first, so the metrics know how many positives a row has.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from freeret.data.retrieval_set import RetrievalSet, build_set, read_rows, resolve_path
from freeret.errors import DataError


def _task_dir(cfg: Mapping[str, Any]) -> Path:
    task = str(cfg.get("task") or cfg["name"])
    folder = resolve_path(str(cfg.get("root") or "data/mmeb_v2")) / task
    if not folder.is_dir():
        raise DataError(f"MMEB-V2 task {task}: folder {folder} does not exist; put the task there "
                        f"(see freeret/data/mmeb_v2.py for the layout) or set paths.mmeb_v2_root=DIR")
    return folder


def _video_rows(path: Path) -> Iterator[dict[str, Any]]:
    for raw in read_rows(path):
        raw = dict(raw)
        for side in ("qry", "tgt"):
            if raw.get(f"{side}_video_path"):
                raw[f"{side}_img_path"] = raw[f"{side}_video_path"]
        yield raw


def load_video_task(cfg: Mapping[str, Any]) -> RetrievalSet:
    """A video task: rows whose queries and/or candidates are clips."""
    folder = _task_dir(cfg)
    task = folder.name
    files = [folder / f"{task}{s}" for s in (".jsonl", ".jsonl.gz", ".parquet") if (folder / f"{task}{s}").exists()]
    if not files:
        raise DataError(f"MMEB-V2 video task {task}: no {task}.jsonl or {task}.parquet in {folder}")
    return build_set(str(cfg.get("name", task)), _video_rows(files[0]), folder, limit=cfg.get("limit"),
                     pool=str(cfg.get("pool", "rows")))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"visual-document task: {path} is missing (need queries.jsonl, corpus.jsonl, qrels.jsonl)")
    return list(read_rows(path))


def visdoc_rows(folder: Path) -> list[dict[str, Any]]:
    """MMEB-format rows (relevant pages first, ``n_positive`` set) from a BEIR-style folder."""
    queries = _jsonl(folder / "queries.jsonl")
    corpus = _jsonl(folder / "corpus.jsonl")
    relevant: dict[str, list[str]] = {}
    for q in _jsonl(folder / "qrels.jsonl"):
        if float(q.get("score", 1)) > 0:
            relevant.setdefault(str(q["query_id"]), []).append(str(q["corpus_id"]))
    pages = {str(d["id"]): d for d in corpus}
    rows = []
    for q in queries:
        qid = str(q["id"])
        positives = [c for c in relevant.get(qid, []) if c in pages]
        if not positives:
            continue  # a query without a judged page cannot be scored (BEIR skips them too)
        order = positives + [c for c in pages if c not in set(positives)]
        rows.append({"id": qid, "qry_text": q["text"], "qry_img_path": "",
                     "tgt_text": [pages[c].get("text") or "" for c in order],
                     "tgt_img_path": [pages[c].get("image") or "" for c in order],
                     "n_positive": len(positives)})
    if not rows:
        raise DataError(f"visual-document task in {folder}: no query has a relevant page in qrels.jsonl")
    return rows


def load_visdoc_task(cfg: Mapping[str, Any]) -> RetrievalSet:
    """A visual-document retrieval task (text query -> page images)."""
    folder = _task_dir(cfg)
    return build_set(str(cfg.get("name", folder.name)), visdoc_rows(folder), folder, limit=cfg.get("limit"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSONL (fixtures and conversions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
