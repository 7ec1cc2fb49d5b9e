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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freeret.errors import DataError
from freeret.eval.results import DISTRIBUTIONS, RunResult

SETTING_KEYS = ("model", "layer", "pooling", "prior", "retriever", "postprocess", "pipeline", "framing", "top_k")
META_ORDER = ("classification", "vqa", "retrieval", "grounding", "qa", "video", "visdoc")
META_LABELS = {"classification": "Classification", "vqa": "VQA", "retrieval": "Retrieval", "grounding": "Grounding",
               "qa": "QA", "video": "Video", "visdoc": "VisDoc"}


def prior_label(result: RunResult) -> str:
    """The prior's name, with the number of demonstrations for a few-shot prior (``fewshot(k=4)``)."""
    demos = (result.prior_detail or {}).get("demos")
    return f"{result.prior}(k={demos['k']})" if demos else str(result.prior)


def setting_of(result: RunResult) -> dict[str, Any]:
    """The setting of one result (its row key; result files from before a stage-1 axis existed get its default)."""
    retriever = (result.retriever or {}).get("label", "dense")
    return {
        "model": result.model_name,
        "layer": result.layer.label,
        "pooling": (result.pooling or {}).get("label", "last"),
        "prior": prior_label(result),
        "retriever": retriever,
        "postprocess": (result.postprocess or {}).get("label", "none") if not model_free(retriever) else "-",
        "pipeline": result.pipeline,
        "framing": result.framing,
        "top_k": result.rerank.top_k if result.rerank else None,
    }


def model_free(retriever: str) -> bool:
    """Whether a retriever label ranks without the backbone's embeddings (BM25, the trained baseline)."""
    return retriever == "bm25" or retriever.startswith("sentence_transformers")


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
    split: str = "test"


def data_split(result: RunResult) -> str:
    """``dev`` for a dev split (tuning data), else ``test`` (the shipped WordNet sets, MMEB-eval's sets)."""
    return "dev" if result.task.split == "dev" else "test"


def suite_of(result: RunResult) -> str:
    """The benchmark a result belongs to, with a dev split's ``_dev`` dropped (dev and test share a name)."""
    name = result.task.benchmark or result.dataset
    return name[: -len("_dev")] if name.endswith("_dev") else name


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


def setting_text(setting: Mapping[str, Any]) -> str:
    """A short human name for a setting (stage-1 axes shown when not at their default)."""
    if setting.get("retriever") == "bm25":
        return f"{setting['model']} · BM25"
    if model_free(str(setting.get("retriever", ""))):  # sentence_transformers(<model>): the trained baseline
        return f"trained baseline {setting['retriever'].partition('(')[2].rstrip(')')} (sentence-transformers)"
    text = f"{setting['model']} · {setting['layer']} + {setting['prior']}"
    for key, default in (("pooling", "last"), ("postprocess", "none"), ("retriever", "dense")):
        if setting.get(key, default) != default:
            text += f" + {setting[key]}"
    if setting.get("pipeline") != "embed":
        text += f" → {setting['framing']} rerank top-{setting['top_k']}"
    return text


def label(setting: Mapping[str, Any], split: str | None = None) -> str:
    """A short human name for a setting, with the split its numbers come from."""
    return f"{setting_text(setting)} · {split or 'split ?'}"


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


def leaderboard(results: Iterable[RunResult], stage: str = "final", metric: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Settings ranked by their mean dev score, with each benchmark's dev and test means side by side.

    Returns (columns, rows); a column is ``<benchmark> dev`` or ``<benchmark> test`` (the mean over its datasets),
    a row ``{"setting", "values", "datasets"}``. Rows with no dev score sort last.
    """
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    suites: list[str] = []
    for p in results:
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
        return (not dev, -(sum(dev) / len(dev)) if dev else 0.0, setting_text(row["setting"]))

    return columns, sorted(rows, key=rank_key)


def leaderboard_markdown(columns: list[str], rows: list[dict[str, Any]], title: str = "Leaderboard") -> str:
    """The leaderboard as Markdown: one line per setting, dev and test columns side by side (scores in %)."""
    lines = [f"### {title}", "", "Split: dev and test side by side; rows ranked by the mean of their dev columns "
             "(settings are chosen on dev only).", "", "| setting | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        lines.append(f"| {setting_text(row['setting'])} | " + " | ".join(_fmt(row["values"].get(c)) for c in columns)
                     + " |")
    return "\n".join(lines) + "\n"
