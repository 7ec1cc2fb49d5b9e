"""Retrieval sets in the MMEB row format, reduced to unique items so each is encoded once.

A row is (query, candidates) with the positive first. Items are keyed by a hash of
(role, text, image path): a candidate that appears in many rows is one item.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freeret.errors import DataError
from freeret.paths import repo_root

# MMEB-eval marks where the image goes with phi-3-v tokens; our chat templates place images themselves.
_IMAGE_MARKERS = re.compile(r"<\|image_\d+\|>\s*")
_ID = re.compile(r'"id"\s*:\s*"([^"]{0,200})"')
BAD_ROW = "__bad_row__"  # key of the placeholder ``read_rows`` yields for a line it cannot read


@dataclass(frozen=True)
class Item:
    """One thing to embed: text and/or an image, in the query or the target role."""

    key: str
    role: str
    text: str
    image: str | None = None

    @staticmethod
    def make(role: str, text: str, image: str | None) -> Item:
        """Build an item whose key is a stable content hash."""
        digest = hashlib.sha1(json.dumps([role, text, image]).encode()).hexdigest()[:16]
        return Item(key=f"{role[0]}-{digest}", role=role, text=text, image=image)


@dataclass(frozen=True)
class Row:
    """One query with its candidate list; ``candidates[0]`` is the positive."""

    id: str
    query: str
    candidates: tuple[str, ...]
    answer: str | None = None  # a reference answer (RAG question sets); MMEB rows have none
    n_positive: int = 1  # the first n candidates are relevant (visual-document sets may have several)


@dataclass
class RetrievalSet:
    """Rows plus the unique items they reference."""

    name: str
    rows: list[Row]
    items: dict[str, Item] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)  # rows that could not be read (kept out of ``rows``)

    @property
    def num_candidates(self) -> int:
        """Number of unique candidate items."""
        return sum(1 for it in self.items.values() if it.role == "target")

    def summary(self) -> dict[str, int]:
        """Counts for result files."""
        return {
            "num_queries": len(self.rows),
            "num_unique_candidates": self.num_candidates,
            "candidates_per_query": max((len(r.candidates) for r in self.rows), default=0),
        }


def resolve_path(path: str | Path) -> Path:
    """A path as given, or relative to the repo root when not found from the working dir."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    return repo_root() / p


def bad_row(where: str, reason: str, raw: bytes = b"") -> dict[str, Any]:
    """A placeholder row for a line that could not be read; ``build_set`` records it instead of failing."""
    row: dict[str, Any] = {BAD_ROW: reason, "__where__": where}
    found = _ID.search(raw.decode("utf-8", errors="replace"))
    if found:
        row["id"] = found[1]  # best effort, so the record names the row
    return row


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield raw rows from JSONL (optionally .gz) or parquet; unreadable lines come as ``bad_row`` records."""
    p = resolve_path(path)
    if not p.exists():
        raise DataError(f"dataset file {path} does not exist (give dataset.path=FILE, a .jsonl, .jsonl.gz or .parquet)")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(p).to_pylist()
        return
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield bad_row(where, f"not valid UTF-8 (byte {exc.start})", raw)
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield bad_row(where, f"not valid JSON ({exc.msg})", raw)
                continue
            if not isinstance(row, dict):
                yield bad_row(where, f"not a JSON object (got {type(row).__name__})")
                continue
            row.setdefault("__where__", where)
            yield row


def _image(path: str | None, root: Path) -> str | None:
    if not path:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else root / p)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def build_set(
    name: str,
    raw_rows: Iterable[Mapping[str, Any]],
    image_root: Path,
    limit: int | None = None,
    pool: str = "rows",
) -> RetrievalSet:
    """Turn MMEB-format rows into a RetrievalSet.

    ``pool="positives"`` replaces each row's candidates by the positives of all kept rows
    (a classification-style pool; makes a small slice of a large set cheap and fair).
    """
    if pool not in ("rows", "positives"):
        raise DataError(f"dataset.pool must be 'rows' or 'positives', got {pool!r}")
    rset = RetrievalSet(name=name, rows=[])
    parsed: list[tuple[str, Item, list[Item], str | None]] = []
    n_pos: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    for i, raw in enumerate(raw_rows):
        if limit is not None and len(parsed) >= limit:
            break
        where = str(raw.get("__where__", f"{name} row {i}"))
        problem = _row_problem(raw)
        if problem:
            rset.problems.append({"row": str(raw.get("id", i)), "where": where, "reason": problem})
            continue
        texts, images = _as_list(raw.get("tgt_text")), _as_list(raw.get("tgt_img_path"))
        n = max(len(texts), len(images))
        texts += [""] * (n - len(texts))
        images += [""] * (n - len(images))
        query = Item.make("query", _IMAGE_MARKERS.sub("", raw.get("qry_text") or ""), _image(raw.get("qry_img_path"), image_root))
        cands = [Item.make("target", _IMAGE_MARKERS.sub("", t or ""), _image(im, image_root)) for t, im in zip(texts, images)]
        rid = str(raw.get("id", i))
        if rid in seen_ids:  # duplicate row id: keep the row under a new id, and say so
            seen_ids[rid] += 1
            new_id = f"{rid}~dup{seen_ids[rid]}"
            rset.problems.append({"row": rid, "where": where, "level": "warning",
                                  "reason": f"duplicate row id {rid!r}: kept as {new_id!r}"})
            rid = new_id
        else:
            seen_ids[rid] = 1
        parsed.append((rid, query, cands, raw.get("answer")))
        n_pos[rid] = int(raw.get("n_positive") or 1)
    if pool == "positives":
        positives = [c[0] for _, _, c, _ in parsed]
        parsed = [(rid, q, [c[0]] + [p for p in positives if p.key != c[0].key], a) for rid, q, c, a in parsed]
    for rid, query, cands, answer in parsed:
        for item in (query, *cands):
            rset.items.setdefault(item.key, item)
        rset.rows.append(Row(id=rid, query=query.key, candidates=tuple(c.key for c in cands), answer=answer,
                             n_positive=n_pos[rid]))
    if not rset.rows:
        first = next((p for p in rset.problems if p.get("level") != "warning"), None)
        detail = f" (first problem: {first['where']}: {first['reason']})" if first else ""
        raise DataError(f"{name}: no usable rows{detail}")
    return rset


def _row_problem(raw: Mapping[str, Any]) -> str | None:
    """Why a raw row cannot be used, or None."""
    if BAD_ROW in raw:
        return str(raw[BAD_ROW])
    if "qry_text" not in raw and "qry_img_path" not in raw:
        return "missing field: neither qry_text nor qry_img_path"
    if not _as_list(raw.get("tgt_text")) and not _as_list(raw.get("tgt_img_path")):
        return "missing field: no candidates (tgt_text / tgt_img_path)"
    for key in ("qry_text", "qry_img_path"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            return f"field {key} is a {type(raw[key]).__name__}, not a string"
    for key in ("tgt_text", "tgt_img_path"):
        if any(v is not None and not isinstance(v, str) for v in _as_list(raw.get(key))):
            return f"field {key} holds a value that is not a string"
    return None


def load_mmeb(
    name: str, path: str | Path, image_root: str | Path | None = None, limit: int | None = None, pool: str = "rows"
) -> RetrievalSet:
    """Read an MMEB-format JSONL/parquet; image paths are relative to ``image_root`` or the file's folder."""
    root = resolve_path(image_root) if image_root else resolve_path(path).parent
    return build_set(name, read_rows(path), root, limit=limit, pool=pool)
