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

SETTING_KEYS = ("model", "layer", "pooling", "prior", "retriever", "postprocess", "pipeline", "framing", "top_k")
META_ORDER = ("classification", "vqa", "retrieval", "grounding", "qa", "video", "visdoc")
META_LABELS = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval", "grounding": "Grounding",
               "qa": "QA", "video": "Video", "visdoc": "VisDoc"}


def prior_label(payload: Mapping[str, Any]) -> str:
    """The prior's name, with the number of demonstrations for a few-shot prior (``fewshot(k=4)``)."""
    demos = (payload.get("prior_detail") or {}).get("demos")
    return f"{payload['prior']}(k={demos['k']})" if demos else str(payload["prior"])


def setting_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The row key of one results payload (result files from before an axis existed get its default)."""
    rerank = payload.get("rerank") or {}
    retriever = (payload.get("retriever") or {}).get("label", "dense")
    return {
        "model": payload["model"]["name"],
        "layer": payload["layer"]["label"],
        "pooling": (payload.get("pooling") or {}).get("label", "last"),
        "prior": prior_label(payload),
        "retriever": retriever,
        "postprocess": (payload.get("postprocess") or {}).get("label", "none") if retriever != "bm25" else "-",
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
    split: str = "test"


def data_split(payload: Mapping[str, Any]) -> str:
    """``dev`` for a dev split (tuning data), else ``test`` (the shipped WordNet sets, MMEB-eval's IND/OOD sets)."""
    return "dev" if (payload.get("task") or {}).get("split") == "dev" else "test"


def suite_of(payload: Mapping[str, Any]) -> str:
    """The benchmark a result belongs to, with a dev split's ``_dev`` dropped (dev and test share a name)."""
    name = (payload.get("task") or {}).get("benchmark") or payload["dataset"]
    return name[: -len("_dev")] if name.endswith("_dev") else name


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
        splits_seen = {data_split(p) for p in items}
        table = Table(bench, columns, split=splits_seen.pop() if len(splits_seen) == 1 else "dev and test mixed")
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
    """A short human name for a setting (stage-1 axes shown when not at their default)."""
    if setting.get("retriever") == "bm25":
        return f"{setting['model']} · BM25"
    text = f"{setting['model']} · {setting['layer']} + {setting['prior']}"
    for key, default in (("pooling", "last"), ("postprocess", "none"), ("retriever", "dense")):
        if setting.get(key, default) != default:
            text += f" + {setting[key]}"
    if setting.get("pipeline") != "embed":
        text += f" → {setting['framing']} rerank top-{setting['top_k']}"
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def to_markdown(table: Table, paper: list[dict[str, Any]] | None = None) -> str:
    """A Markdown table; rows with published numbers get 'paper' and 'Δ' rows under them."""
    lines = [f"### {table.benchmark}", "", f"Split: {table.split}.", "",
             "| setting | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
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


def leaderboard(payloads: list[dict[str, Any]], stage: str = "final", metric: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Settings ranked by their mean dev score, with each benchmark's dev and test means side by side.

    Returns (columns, rows); a column is ``<benchmark> dev`` or ``<benchmark> test`` (the mean over its datasets),
    a row ``{"setting", "values", "datasets"}``. Rows with no dev score sort last.
    """
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    suites: list[str] = []
    for p in payloads:
        suite = suite_of(p)
        if suite not in suites:
            suites.append(suite)
        cells[tuple(setting_of(p).items())][f"{suite} {data_split(p)}"].append(score_of(p, stage, metric))
    columns = [f"{suite} {split}" for suite in suites for split in ("dev", "test")]
    rows = []
    for key, by_column in cells.items():
        values = {c: _mean(v) for c, v in by_column.items()}
        rows.append({"setting": dict(key), "values": values, "datasets": {c: len(v) for c, v in by_column.items()}})
    dev_columns = [c for c in columns if c.endswith(" dev")]

    def rank_key(row: dict[str, Any]) -> tuple:
        dev = [row["values"][c] for c in dev_columns if c in row["values"]]
        return (not dev, -(sum(dev) / len(dev)) if dev else 0.0, label(row["setting"]))

    return columns, sorted(rows, key=rank_key)


def leaderboard_markdown(columns: list[str], rows: list[dict[str, Any]], title: str = "Leaderboard") -> str:
    """The leaderboard as Markdown: one line per setting, dev and test columns side by side (scores in %)."""
    lines = [f"### {title}", "", "Split: dev and test side by side; rows ranked by the mean of their dev columns "
             "(settings are chosen on dev only).", "", "| setting | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(f"| {label(row['setting'])} | " + " | ".join(_fmt(row["values"].get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
