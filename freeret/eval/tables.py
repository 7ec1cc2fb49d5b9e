"""Results JSON files -> paper-style tables (meta-task averages, IND/OOD, overall) beside published numbers.

A *setting* is everything that shapes a score except the dataset (model, layer, prior, pipeline,
framing, top-K); each setting is one table row. Scores are the main score (hit@1) in percent;
a meta-task column is the mean over its datasets, Overall the mean over all datasets.
Published numbers are data (``data/paper/*.yaml``): an entry applies to a row when every key of
its ``match`` equals the row's setting.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from freeret.errors import DataError

SETTING_KEYS = ("model", "layer", "prior", "pipeline", "framing", "top_k")
META_ORDER = ("classification", "vqa", "retrieval", "grounding", "qa", "video", "visdoc")
META_LABELS = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval", "grounding": "Grounding",
               "qa": "QA", "video": "Video", "visdoc": "VisDoc"}


def setting_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The row key of one results payload."""
    rerank = payload.get("rerank") or {}
    return {
        "model": payload["model"]["name"],
        "layer": payload["layer"]["label"],
        "prior": payload["prior"],
        "pipeline": payload["pipeline"],
        "framing": payload.get("framing"),
        "top_k": rerank.get("top_k"),
    }


def load_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``results/*.json`` under ``run_dir`` (a run or a multirun folder)."""
    root = Path(run_dir)
    files = sorted(p for p in root.rglob("results/*.json") if p.is_file())
    if not files:
        raise DataError(f"no results/*.json under {root}; give a run or multirun folder (outputs/... or multirun/...)")
    return [json.loads(p.read_text()) for p in files]


@dataclass
class Table:
    """One benchmark's rows: per setting, dataset -> score, plus the dataset facts needed to group them."""

    benchmark: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def score_of(payload: Mapping[str, Any], stage: str = "final", metric: str | None = None) -> float:
    """A payload's score in %: its main score, or ``metric`` of ``stage`` (embed, rerank, or final = the last one)."""
    if stage == "final" and metric is None:
        return 100.0 * float(payload["main_score"])
    metrics = payload["metrics"]
    chosen = metrics[stage] if stage in metrics else list(metrics.values())[-1] if stage == "final" else None
    if chosen is None:
        raise DataError(f"stage {stage!r} not in results of {payload['dataset']} (stages: {', '.join(metrics)})")
    return 100.0 * float(chosen[metric or payload.get("main_score_name", "hit@1")])


def build_tables(payloads: list[dict[str, Any]], stage: str = "final", metric: str | None = None) -> list[Table]:
    """Group payloads by benchmark, then by setting; average per meta-task, split and overall."""
    by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in payloads:
        by_bench[(p.get("task") or {}).get("benchmark") or p["dataset"]].append(p)
    tables = []
    for bench, items in by_bench.items():
        metas = [m for m in META_ORDER if any((p.get("task") or {}).get("meta_task") == m for p in items)]
        splits = [s for s in ("IND", "OOD") if any((p.get("task") or {}).get("split") == s for p in items)]
        columns = [META_LABELS[m] for m in metas] + splits + ["Overall", "datasets"]
        settings: dict[tuple, dict[str, Any]] = {}
        for p in items:
            key = tuple(setting_of(p).items())
            row = settings.setdefault(key, {"setting": dict(key), "scores": {}, "facts": {}})
            row["scores"][p["dataset"]] = score_of(p, stage, metric)
            row["facts"][p["dataset"]] = p.get("task") or {}
        table = Table(bench, columns)
        for row in settings.values():
            values: dict[str, Any] = {}
            for m in metas:
                values[META_LABELS[m]] = _mean(s for d, s in row["scores"].items() if row["facts"][d].get("meta_task") == m)
            for sp in splits:
                values[sp] = _mean(s for d, s in row["scores"].items() if row["facts"][d].get("split") == sp)
            values["Overall"] = _mean(row["scores"].values())
            values["datasets"] = len(row["scores"])
            table.rows.append({**row, "values": values})
        table.rows.sort(key=lambda r: tuple(str(v) for v in r["setting"].values()))
        tables.append(table)
    return tables


def load_paper(paths: Iterable[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """Published numbers per benchmark from YAML files (``data/paper``)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in paths:
        for bench, entries in (yaml.safe_load(Path(path).read_text()) or {}).items():
            out[bench].extend(entries)
    return out


def paper_entry(setting: Mapping[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The published entry whose ``match`` agrees with this setting, if any."""
    for entry in entries:
        if all(setting.get(k) == v for k, v in entry["match"].items()):
            return entry
    return None


def label(setting: Mapping[str, Any]) -> str:
    """A short human name for a setting."""
    text = f"{setting['model']} · {setting['layer']} + {setting['prior']}"
    if setting.get("pipeline") != "embed":
        text += f" → {setting['framing']} rerank top-{setting['top_k']}"
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def to_markdown(table: Table, paper: list[dict[str, Any]] | None = None) -> str:
    """A Markdown table; rows with published numbers get 'paper' and 'Δ' rows under them."""
    lines = [f"### {table.benchmark}", "", "| setting | " + " | ".join(table.columns) + " |",
             "|---|" + "---|" * len(table.columns)]
    for row in table.rows:
        vals = row["values"]
        lines.append(f"| {label(row['setting'])} | " + " | ".join(_fmt(vals.get(c)) for c in table.columns) + " |")
        entry = paper_entry(row["setting"], paper or [])
        if entry:
            pub = entry["scores"]
            lines.append(f"| ↳ paper ({entry.get('source', 'published')}) | "
                         + " | ".join(_fmt(pub.get(c)) for c in table.columns) + " |")
            diff = {c: vals[c] - pub[c] for c in table.columns if isinstance(vals.get(c), float) and c in pub}
            lines.append("| ↳ Δ ours − paper | " + " | ".join(
                (f"{diff[c]:+.1f}" if c in diff else "–") for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table, paper: list[dict[str, Any]] | None = None) -> str:
    """Long-form CSV: one line per (setting, column) with ours, paper and the difference."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["benchmark", *SETTING_KEYS, "column", "ours", "paper", "diff"])
    for row in table.rows:
        entry = paper_entry(row["setting"], paper or [])
        pub = entry["scores"] if entry else {}
        for col in table.columns:
            ours, theirs = row["values"].get(col), pub.get(col)
            diff = ours - theirs if isinstance(ours, float) and theirs is not None else None
            writer.writerow([table.benchmark, *(row["setting"][k] for k in SETTING_KEYS), col,
                             _fmt(ours), _fmt(theirs), "" if diff is None else f"{diff:+.2f}"])
    return buf.getvalue()


def per_dataset_csv(table: Table) -> str:
    """Wide CSV: one line per setting, one column per dataset (scores in percent)."""
    datasets = sorted({d for row in table.rows for d in row["scores"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*SETTING_KEYS, *datasets])
    for row in table.rows:
        writer.writerow([*(row["setting"][k] for k in SETTING_KEYS), *(_fmt(row["scores"].get(d)) for d in datasets)])
    return buf.getvalue()
