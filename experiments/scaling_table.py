"""The scaling study's "claim x model size" table (issue 17) from its result files alone, as Markdown.

    python experiments/scaling_table.py                                 # docs/results/scaling
    python experiments/scaling_table.py RESULTS_DIR --out docs/results/scaling/table.md

Figures: hit@1 on WordNet RD TEST (pool = the kept queries' positives) and the WordNet meta-task suite (test), each
with its number of queries; probe figures with their sample sizes; wall seconds per run. Findings: per model
yes / no / - (not run), and the smallest size from which each holds at every larger size that ran it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from freeret.atomic_files import write_text_atomic
from freeret.errors import FreeRetError
from freeret.eval.scaling import (
    ADDITIONS,
    ALL_RUNS,
    FINDINGS,
    LAYERS,
    META,
    METHODS,
    PRIORS,
    RERANKS,
    STAGE1_PLUS,
    ModelResults,
    load_study,
    size_label,
    smallest_holding,
)
from freeret.paths import repo_root


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _hit(m: ModelResults, run: str, stage: str = "embed") -> str:
    score = m.hit1(run, stage)
    return "-" if score is None else f"{score:.2f} (n={m.queries(run)})"


def _probe(m: ModelResults, run: str, key: str, digits: int = 3) -> str:
    probe = m.probe(run)
    return "-" if probe is None or key not in probe["summary"] else _f(probe["summary"][key], digits)


def figure_rows(models: list[ModelResults]) -> list[tuple[str, list[str]]]:
    """(quantity, one cell per model) for every figure of the study."""
    rows: list[tuple[str, list[str]]] = []
    for run, label in LAYERS.items():
        rows.append((f"RD stage-1 hit@1: {label}", [_hit(m, run) for m in models]))
    for run in STAGE1_PLUS:
        rows.append((f"RD stage-1 hit@1: {METHODS[run]}", [_hit(m, run) for m in models]))
    for run, label in PRIORS.items():
        rows.append((f"RD stage-1 hit@1 at h^Attn_L, prior {label}", [_hit(m, run) for m in models]))
    for framing in RERANKS:
        run = f"rerank_{framing}"
        cells = [("-" if m.hit1(run, "rerank") is None else
                  f"{m.hit1(run):.2f} -> {m.hit1(run, 'rerank'):.2f} (n={m.queries(run)}, "
                  f"top-{m.payloads(run)[0].rerank.top_k})") for m in models]
        rows.append((f"RD hit@1 stage 1 -> {framing} rerank", cells))
    for point in ("attn_last", "mlp_last"):
        rows.append((f"alpha (cos to the previous point) at {point}",
                     [_probe(m, "probe_lexical_bias", f"alpha@{point}") for m in models]))
    for point in ("attn_last", "mlp_last"):
        rows.append((f"beta (cos to the predicted word's LM-head row) at {point}",
                     [_probe(m, "probe_lexical_bias", f"beta@{point}") for m in models]))
    for point in ("attn_last", "mlp_last"):
        rows.append((f"synonym-pair cosine at {point}",
                     [_probe(m, "probe_lexical_bias", f"synonym_cosine@{point}") for m in models]))
    rows.append(("lexical probe: synonym pairs", [str((m.probe("probe_lexical_bias") or {}).get("n_pairs", "-")) for m in models]))
    for point in ("attn_last", "mlp_last"):
        rows.append((f"anisotropy: mean cosine of unrelated items at {point}",
                     [_probe(m, "probe_anisotropy", f"mean_cosine@{point}") for m in models]))
    rows.append(("anisotropy probe: items", [str((m.probe("probe_anisotropy") or {}).get("n_items", "-")) for m in models]))
    for framing in ("mcq", "yes_no", "true_false", "right_wrong"):
        rows.append((f"flip rate under option swap: {framing}",
                     [_probe(m, "probe_framing_sensitivity", f"flip_rate@{framing}") for m in models]))
        rows.append((f"P(match) on content-free inputs: {framing}",
                     [_probe(m, "probe_framing_sensitivity", f"p_match_content_free@{framing}") for m in models]))
    rows.append(("framing probe: labelled pairs",
                 [str((m.probe("probe_framing_sensitivity") or {}).get("n_pairs", "-")) for m in models]))
    for run, label in META.items():
        cells = []
        for m in models:
            payloads = m.payloads(run)
            cells.append("-" if not payloads else
                         f"{m.meta_mean(run):.2f} ({len(payloads)} tasks x <= {payloads[0].counts.num_queries} queries)")
        rows.append((f"meta-task suite mean hit@1: {label}", cells))
    rows.append(("meta-task suite mean hit@1: FreeRet stage 1",
                 [_f(m.meta_mean("meta_freeret", "embed")) for m in models]))
    return rows


def findings_rows(models: list[ModelResults], claims: list[tuple[str, Callable[[ModelResults], bool | None]]] = FINDINGS
                  ) -> list[tuple[str, list[str], str]]:
    """(finding, yes/no/- per model, smallest size from which it holds) for each of ``claims``."""
    out = []
    for claim, test in claims:
        verdicts = [test(m) for m in models]
        first = smallest_holding(verdicts)
        cells = ["-" if v is None else "yes" if v else "no" for v in verdicts]
        smallest = ("not run" if all(v is None for v in verdicts) else "none" if first is None
                    else size_label(models[first]))
        out.append((claim, cells, smallest))
    return out


def wall_rows(models: list[ModelResults]) -> list[tuple[str, list[str]]]:
    """Wall seconds of every run (and the model's load), one row per run name."""
    names = sorted({run for m in models for run in m.runs})
    loads = [" / ".join(f"{s:.0f}" for s in sorted({r["scaling"]["model_load_seconds"] for r in m.runs.values()}))
             for m in models]
    rows = [("model load (s; once per tier)", loads)]
    return rows + [(run, [_f(m.wall(run), 0) for m in models]) for run in names]


def markdown(models: list[ModelResults]) -> str:
    """The whole table as Markdown: figures, findings, wall times, limits."""
    head = "| | " + " | ".join(size_label(m) for m in models) + " |\n|" + " --- |" * (len(models) + 1) + "\n"
    title = ("## Claim x model size (hit@1 on WordNet RD test, pool = the kept queries' positives; "
             "Qwen2.5-Coder numbers are code-tuned)")
    lines = [title, "", head.rstrip()]
    lines += [f"| {q} | " + " | ".join(cells) + " |" for q, cells in figure_rows(models)]
    lines += ["", "## Paper findings per size (yes / no / - not run) and the smallest size from which each holds", "",
              head.rstrip().replace(" |\n|", " | smallest size |\n|", 1) + " --- |"]
    lines += [f"| {c} | " + " | ".join(cells) + f" | {first} |" for c, cells, first in findings_rows(models)]
    lines += ["", "## What we added (freeret_plus, the likelihood scorers) per size, same form", "",
              head.rstrip().replace(" |\n|", " | smallest size |\n|", 1) + " --- |"]
    lines += [f"| {c} | " + " | ".join(cells) + f" | {first} |"
              for c, cells, first in findings_rows(models, ADDITIONS)]
    lines += ["", "## Wall seconds per run (2 CPU cores shared with other jobs, nice 5-10, 1 torch thread, fp32)", "", head.rstrip()]
    lines += [f"| {q} | " + " | ".join(cells) + " |" for q, cells in wall_rows(models)]
    lines += ["", "## Not run (CPU budget)", ""]
    for m in models:
        missing = [run for run in ALL_RUNS if run not in m.runs]
        lines.append(f"- {size_label(m)}: " + (", ".join(missing) or "nothing"))
    lines += ["", "## Limits (split: test)", ""]
    for m in models:
        limits = next(iter(m.runs.values()))["scaling"]["limits"]
        lines.append(f"- {size_label(m)}: " + ", ".join(f"{k}={v}" for k, v in limits.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the table; with --out, also write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=repo_root() / "docs/results/scaling")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    try:
        text = markdown(load_study(args.results))
    except FreeRetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
