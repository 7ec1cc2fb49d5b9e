"""Check every unique item before embedding: bad ones are recorded, not fatal (unless ``strict``).

Each image is opened as the run will use it (:func:`freeret.data.images.open_image`: bomb guard, full decoding,
RGB, resized above ``images.max_pixels``) and each clip read; texts longer than the model's context are cut to
it. Failures and notes go to ``<run_dir>/errors.jsonl`` and ``<run_dir>/warnings.jsonl``; rows whose query or
positive failed count as misses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from freeret.data.images import ImageProblem, open_image
from freeret.data.retrieval_set import RetrievalSet, Row
from freeret.data.visual import is_clip, load_clip
from freeret.errors import DataError


@dataclass
class Report:
    """What the checks found: failed items and rows (errors) and notes (warnings)."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    failed_items: set[str] = field(default_factory=set)
    bad_rows: int = 0

    def counts(self) -> dict[str, int]:
        """Numbers for the results file."""
        return {"failed_items": len(self.failed_items), "bad_rows": self.bad_rows, "warnings": len(self.warnings)}

    def write(self, run_dir: Path, dataset: str) -> None:
        """Write ``errors.jsonl`` and ``warnings.jsonl`` under ``run_dir`` (atomically; empty files when clean).

        Every record names its dataset; a benchmark's datasets share the two files, and a rerun of one
        dataset replaces only that dataset's records.
        """
        from freeret.atomic_files import write_text_atomic

        for name, records in (("errors.jsonl", self.errors), ("warnings.jsonl", self.warnings)):
            path = run_dir / name
            kept = []
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("dataset") != dataset]
            mine = [json.dumps({"dataset": dataset, **r}, sort_keys=True) for r in records]
            write_text_atomic(path, "".join(line + "\n" for line in kept + mine))


def _rows_of(rset: RetrievalSet) -> dict[str, list[str]]:
    """Item key -> ids of the rows that use it."""
    uses: dict[str, list[str]] = {}
    for row in rset.rows:
        for key in (row.query, *row.candidates):
            uses.setdefault(key, []).append(row.id)
    return uses


def check_set(
    rset: RetrievalSet,
    strict: bool = False,
    max_pixels: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    cut_tokens: Callable[[str, int], str] | None = None,
    max_text_tokens: int | None = None,
) -> Report:
    """Check rows and items of ``rset`` in place (long texts are cut); ``strict`` raises at the first failure."""
    report = Report()
    for problem in rset.problems:
        level = problem.get("level", "error")
        if strict and level == "error":
            raise DataError(f"{problem['where']}: {problem['reason']} (strict=true; set strict=false to record and go on)")
        (report.warnings if level == "warning" else report.errors).append({"kind": "row", **problem})
        report.bad_rows += level == "error"
    uses = _rows_of(rset)
    for key, item in list(rset.items.items()):
        base = {"kind": "item", "item": key, "role": item.role, "image": item.image, "rows": uses.get(key, [])}
        notes: list[str] = []
        reason = None
        if item.image is not None and is_clip(item.image):
            try:
                load_clip(item.image)
            except (ImageProblem, DataError, OSError) as exc:
                reason = f"video clip cannot be read: {exc}"
        elif item.image is not None:
            try:
                open_image(item.image, max_pixels, notes)
            except ImageProblem as exc:
                reason = str(exc)
        elif not item.text.strip():
            reason = "empty item: no text and no image"
        if reason is None and count_tokens and max_text_tokens and item.text:
            n = count_tokens(item.text)
            if n > max_text_tokens:
                rset.items[key] = replace(item, text=cut_tokens(item.text, max_text_tokens) if cut_tokens else item.text)
                notes.append(f"text of {n} tokens ({len(item.text)} characters) truncated to {max_text_tokens} tokens "
                             "to fit the model's context")
        if reason is not None:
            if strict:
                raise DataError(f"item {key} ({item.role}, rows {', '.join(base['rows'][:3])}): {reason} "
                                "(strict=true; set strict=false to record and go on)")
            report.errors.append({**base, "reason": reason})
            report.failed_items.add(key)
        report.warnings += [{**base, "reason": note} for note in notes]
    return report


def usable_rows(rset: RetrievalSet, failed: set[str]) -> tuple[RetrievalSet, list[str]]:
    """(the set restricted to rows that can be scored, ids of rows that are misses).

    A row is a miss when its query or its positive failed; a failed negative is dropped from the row.
    """
    rows: list[Row] = []
    missed: list[str] = []
    for row in rset.rows:
        if row.query in failed or row.candidates[0] in failed:
            missed.append(row.id)
            continue
        rows.append(replace(row, candidates=tuple(k for k in row.candidates if k not in failed)))
    keys = {k for r in rows for k in (r.query, *r.candidates)}
    items = {k: v for k, v in rset.items.items() if k in keys}
    return RetrievalSet(name=rset.name, rows=rows, items=items, problems=rset.problems), missed


def fold_misses(metrics: Mapping[str, float], scored: int, missed: int) -> dict[str, float]:
    """Averages over ``scored`` rows turned into averages over all rows, the ``missed`` ones scoring 0."""
    total = scored + missed
    return {k: (v * scored / total if total else 0.0) for k, v in metrics.items()}
