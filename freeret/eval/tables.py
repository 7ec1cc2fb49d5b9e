"""Result files (:class:`~freeret.eval.results.RunResult`) -> paper-style tables (meta-task averages, IND/OOD,
overall) beside published numbers.

A *setting* is everything that shapes a score except the dataset (model, layer, prior, pipeline,
framing, top-K); each (split, setting) is one table row, so a dev number is never averaged with a test
number and every row says which split it comes from. Scores are the main score (hit@1) in percent;
a meta-task column is the mean over its datasets, Overall the mean over all datasets.
Published numbers are data (``data/paper/*.yaml``): an entry applies to a test row when every key of
its ``match`` equals the row's setting.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from freeret.errors import DataError
from freeret.eval.results import DISTRIBUTIONS, RunResult

SETTING_KEYS = ("model", "layer", "prior", "pipeline", "framing", "top_k")
META_ORDER = ("classification", "vqa", "retrieval", "grounding", "qa", "video", "visdoc")
META_LABELS = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval", "grounding": "Grounding",
               "qa": "QA", "video": "Video", "visdoc": "VisDoc"}


def setting_of(result: RunResult) -> dict[str, Any]:
    """The setting of one result (its row, with its split)."""
    return {
        "model": result.model_name,
        "layer": result.layer.label,
        "prior": result.prior,
        "pipeline": result.pipeline,
        "framing": result.framing,
        "top_k": result.rerank.top_k if result.rerank else None,
    }


def load_results(run_dir: str | Path) -> list[RunResult]:
    """Every ``results/*.json`` under ``run_dir`` (a run or a multirun folder), of any schema version."""
    root = Path(run_dir)
    files = sorted(p for p in root.rglob("results/*.json") if p.is_file())
    if not files:
        raise DataError(f"no results/*.json under {root}; give a run or multirun folder (outputs/... or multirun/...)")
    return [RunResult.read(p) for p in files]


@dataclass
class Table:
    """One benchmark's rows: per setting, dataset -> score, plus the dataset facts needed to group them."""

    benchmark: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def score_of(result: RunResult, stage: str = "final", metric: str | None = None) -> float:
    """A result's score in %: its main score, or ``metric`` of ``stage`` (embed, rerank, or final = the last one)."""
    return 100.0 * result.score(stage, metric)


def build_tables(results: Iterable[RunResult], stage: str = "final", metric: str | None = None) -> list[Table]:
    """Group results by benchmark, then by (split, setting); average per meta-task, distribution and overall."""
    by_bench: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        by_bench[r.task.benchmark or r.dataset].append(r)
    tables = []
    for bench, items in by_bench.items():
        metas = [m for m in META_ORDER if any(r.task.meta_task == m for r in items)]
        dists = [d for d in DISTRIBUTIONS if any(r.task.distribution == d for r in items)]
        columns = [META_LABELS[m] for m in metas] + dists + ["Overall", "datasets"]
        settings: dict[tuple, dict[str, Any]] = {}
        for r in items:
            key = (r.task.split, tuple(setting_of(r).items()))
            row = settings.setdefault(key, {"split": r.task.split, "setting": dict(key[1]), "scores": {}, "facts": {}})
            row["scores"][r.dataset] = score_of(r, stage, metric)
            row["facts"][r.dataset] = r.task
        table = Table(bench, columns)
        for row in settings.values():
            values: dict[str, Any] = {}
            for m in metas:
                values[META_LABELS[m]] = _mean(s for d, s in row["scores"].items() if row["facts"][d].meta_task == m)
            for dist in dists:
                values[dist] = _mean(s for d, s in row["scores"].items() if row["facts"][d].distribution == dist)
            values["Overall"] = _mean(row["scores"].values())
            values["datasets"] = len(row["scores"])
            table.rows.append({**row, "values": values})
        table.rows.sort(key=lambda r: (str(r["split"]), *(str(v) for v in r["setting"].values())))
        tables.append(table)
    return tables


def load_paper(paths: Iterable[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """Published numbers per benchmark from YAML files (``data/paper``)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in paths:
        for bench, entries in (yaml.safe_load(Path(path).read_text()) or {}).items():
            out[bench].extend(entries)
    return out


def paper_entry(setting: Mapping[str, Any], entries: list[dict[str, Any]], split: str | None = "test") -> dict[str, Any] | None:
    """The published entry whose ``match`` agrees with this setting, if any (published numbers are test numbers)."""
    if split != "test":
        return None
    for entry in entries:
        if all(setting.get(k) == v for k, v in entry["match"].items()):
            return entry
    return None


def label(setting: Mapping[str, Any], split: str | None = None) -> str:
    """A short human name for a setting, with the split its numbers come from."""
    text = f"{setting['model']} · {setting['layer']} + {setting['prior']}"
    if setting.get("pipeline") != "embed":
        text += f" → {setting['framing']} rerank top-{setting['top_k']}"
    return f"{text} · {split or 'split ?'}"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def to_markdown(table: Table, paper: list[dict[str, Any]] | None = None) -> str:
    """A Markdown table; rows with published numbers get 'paper' and 'Δ' rows under them."""
    splits = sorted({str(row["split"] or "split ?") for row in table.rows})
    lines = [f"### {table.benchmark} ({', '.join(splits)})", "", "| setting · split | " + " | ".join(table.columns) + " |",
             "|---|" + "---|" * len(table.columns)]
    for row in table.rows:
        vals = row["values"]
        lines.append(f"| {label(row['setting'], row['split'])} | " + " | ".join(_fmt(vals.get(c)) for c in table.columns)
                     + " |")
        entry = paper_entry(row["setting"], paper or [], row["split"])
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
    writer.writerow(["benchmark", "split", *SETTING_KEYS, "column", "ours", "paper", "diff"])
    for row in table.rows:
        entry = paper_entry(row["setting"], paper or [], row["split"])
        pub = entry["scores"] if entry else {}
        for col in table.columns:
            ours, theirs = row["values"].get(col), pub.get(col)
            diff = ours - theirs if isinstance(ours, float) and theirs is not None else None
            writer.writerow([table.benchmark, row["split"], *(row["setting"][k] for k in SETTING_KEYS), col,
                             _fmt(ours), _fmt(theirs), "" if diff is None else f"{diff:+.2f}"])
    return buf.getvalue()


def per_dataset_csv(table: Table) -> str:
    """Wide CSV: one line per setting, one column per dataset (scores in percent)."""
    datasets = sorted({d for row in table.rows for d in row["scores"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["split", *SETTING_KEYS, *datasets])
    for row in table.rows:
        writer.writerow([row["split"], *(row["setting"][k] for k in SETTING_KEYS),
                         *(_fmt(row["scores"].get(d)) for d in datasets)])
    return buf.getvalue()
