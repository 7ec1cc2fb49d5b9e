"""The general suite's test table and figure (issues 26 and 27): per model, the paper's method, E5-V style,
freeret_plus_v1, the setting chosen on dev with and without its stage 2 (and, where issue 27's technique axes moved
the choice, issue 26's choice beside it), BM25 and MiniLM, on each test domain and their mean.

    python experiments/general_table.py docs/results/{smollm2_135m,gemma3_270m,qwen25coder_05b,qwen25coder_15b}/general_search \
        --out docs/results/general_test

Reads each folder's ``search.json`` after ``stage1_search.py --test`` (nothing runs here); writes ``table.md``,
``table.json`` and ``by_size.png`` (hit@1 per domain and the mean, x = model size, a line per method) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from freeret.atomic_files import write_json

# the rows, in order: the test run's tag in search.json -> the label the table shows
ROWS = {"freeret_paper": "FreeRet (paper: h^Attn_L, FreeRet prior)", "e5v_style": "E5-V style (normed last layer, E5-V prompt)",
        "freeret_plus_v1": "freeret_plus_v1 (chosen on WordNet RD dev)", "chosen": "chosen on general dev, stage 1",
        "chosen_stage2": "chosen on general dev, + its stage 2",
        "chosen_before": "issue 26's choice (before the technique axes), stage 1",
        "chosen_stage2_before": "issue 26's choice, + its stage 2", "bm25": "BM25 (bm25s)",
        "minilm": "all-MiniLM-L6-v2 (trained, 22M)"}
SIZES = {"smollm2_135m": 135e6, "gemma3_270m": 270e6, "qwen25coder_05b": 500e6, "qwen25coder_15b": 1.5e9}  # nominal
NOTES = {"qwen25coder_05b": "code-tuned", "qwen25coder_15b": "code-tuned"}


def _short(dataset: str) -> str:
    return dataset.removeprefix("general_").removesuffix("_test")


def model_rows(state: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Row -> {domain: test hit@1, "mean": ...} for one model's search (chosen + stage 2 falls back to stage 1 with
    ``stage2: none`` when the search chose no stage 2)."""
    tests = dict(state.get("test") or {})
    best = state.get("best") or {}
    for tag in ("chosen_test", "chosen_stage2_test"):  # a run of an earlier choice (not yet rerun) is "before"
        run = tests.get(tag)
        if run is not None and "setting" in run and f"{tag}_before" not in tests and \
                any(run["setting"].get(k) != v for k, v in best.items()):
            tests[f"{tag}_before"] = tests.pop(tag)
    rows: dict[str, dict[str, float]] = {}
    for tag in ROWS:
        run = tests.get(f"{tag.removesuffix('_before')}_test{'_before' if tag.endswith('_before') else ''}")
        if run is None:
            continue
        scores = {_short(d): s for d, s in run["jobs"][0]["scores"].items()}
        rows[tag] = {**scores, "mean": sum(scores.values()) / len(scores)}
    if "chosen_stage2" not in rows and "chosen" in rows and "stage2" in state and \
            not (state["stage2"] or {}).get("chosen_overrides"):  # none chosen (a chosen one not run yet: no row)
        rows["chosen_stage2"] = {**rows["chosen"], "none": 1.0}
    return rows


def table(states: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The Markdown table (one block per model) and its data."""
    data: dict[str, Any] = {}
    lines = ["Split: **test** (each domain's first 100 queries against their 100 positives; run once, after the dev "
             "search). hit@1 in %; bold: the best training-free row per column.", ""]
    for state in states:
        model, rows = state["model"], model_rows(state)
        if not rows:
            continue
        domains = sorted(k for k in next(iter(rows.values())) if k not in ("mean", "none"))
        cols = [*domains, "mean"]
        free = [t for t in rows if t not in ("bm25", "minilm")]
        best = {c: max(rows[t][c] for t in free) for c in cols}
        note = f" ({NOTES[model]})" if model in NOTES else ""
        lines += [f"**{model}**{note}", "", "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for tag, r in rows.items():
            label = ROWS[tag] + (" (none chosen: = stage 1)" if r.get("none") else "")
            cells = [(f"**{100 * r[c]:.1f}**" if tag in free and r[c] == best[c] else f"{100 * r[c]:.1f}") for c in cols]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        data[model] = {"rows": rows, "chosen": state.get("best"), "stage2": (state.get("stage2") or {}).get("chosen_overrides")}
    lines += goals(data)
    return "\n".join(lines) + "\n", data


def goals(data: dict[str, Any]) -> list[str]:
    """The issue's goals, each checked on the test rows."""
    out = ["Goals (issue 26), on test:", ""]
    smol = data.get("smollm2_135m", {}).get("rows", {})
    pipeline = smol.get("chosen_stage2") or smol.get("chosen")
    if pipeline and "bm25" in smol:
        lost = [d for d in pipeline if d not in ("mean", "none") and pipeline[d] <= smol["bm25"][d]]
        out.append(f"- SmolLM2-135M's chosen pipeline beats BM25 on every domain: **{'yes' if not lost else 'no'}**"
                   + (f" (not on {', '.join(lost)})" if lost else ""))
    qwen = data.get("qwen25coder_05b", {}).get("rows", {})
    pipeline = qwen.get("chosen_stage2") or qwen.get("chosen")
    if pipeline and "minilm" in qwen:
        out.append(f"- Qwen2.5-Coder-0.5B's chosen pipeline beats MiniLM on the domain mean: "
                   f"**{'yes' if pipeline['mean'] > qwen['minilm']['mean'] else 'no'}** "
                   f"({100 * pipeline['mean']:.1f} vs {100 * qwen['minilm']['mean']:.1f})")
    out += ["", "Goals (issue 27), on test:", ""]
    big = data.get("qwen25coder_15b", {}).get("rows", {})
    for tag, what in (("chosen_stage2", "chosen pipeline"), ("chosen", "chosen stage 1 alone")):
        if tag in big and "minilm" in big:
            lost = [d for d in big[tag] if d not in ("mean", "none") and big[tag][d] <= big["minilm"][d]]
            out.append(f"- Qwen2.5-Coder-1.5B's {what} beats MiniLM on every domain: **{'yes' if not lost else 'no'}**"
                       + (f" (not on {', '.join(lost)})" if lost else ""))
    for tag, what in (("chosen_stage2", "chosen pipeline"), ("chosen", "chosen stage 1 alone")):
        if tag in smol and "minilm" in smol:
            ratio = smol[tag]["mean"] / smol["minilm"]["mean"]
            out.append(f"- SmolLM2-135M's {what} reaches 80% of MiniLM's domain mean: **{'yes' if ratio >= 0.8 else 'no'}** "
                       f"({100 * ratio:.0f}%: {100 * smol[tag]['mean']:.1f} vs {100 * smol['minilm']['mean']:.1f})")
    out += ["", "Stage 2 on test:", ""]
    for model, d in data.items():
        rows = d["rows"]
        if "chosen" in rows and "chosen_stage2" in rows:
            a, b = rows["chosen"]["mean"], rows["chosen_stage2"]["mean"]
            verdict = "no stage 2 was chosen on dev" if rows["chosen_stage2"].get("none") else (
                "yes" if b > a else "no")
            out.append(f"- {model}: the chosen stage 2 raises the domain mean over its stage 1: **{verdict}** "
                       f"({100 * a:.1f} -> {100 * b:.1f})")
    return [*out, ""]


def figure(data: dict[str, Any], path: Path) -> None:
    """hit@1 per domain and the mean against model size, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in data if m in SIZES]
    if not models:
        return
    cols = [c for c in data[models[0]]["rows"]["chosen"] if c != "none"]
    fig, axes = plt.subplots(2, (len(cols) + 1) // 2, figsize=(3.2 * ((len(cols) + 1) // 2), 6.4), sharex=True)
    for ax, col in zip(axes.flat, cols):
        for tag, label in ROWS.items():
            xs = [SIZES[m] for m in models if tag in data[m]["rows"]]
            ys = [100 * data[m]["rows"][tag][col] for m in models if tag in data[m]["rows"]]
            style = "--" if tag in ("bm25", "minilm") else "-"
            ax.plot(xs, ys, style, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(col + (" (domain mean)" if col == "mean" else ""))
        ax.set_xticks([SIZES[m] for m in models], [f"{SIZES[m] / 1e6:.0f}M" for m in models], fontsize=7)
        ax.minorticks_off()
        ax.set_ylabel("hit@1 (%)")
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.suptitle("General suite, split: test (first 100 queries per domain vs their 100 positives)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searches", type=Path, nargs="+", help="search folders (each with search.json after --test)")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md, table.json, by_size.png")
    args = parser.parse_args(argv)
    states = [json.loads((folder / "search.json").read_text()) for folder in args.searches]
    text, data = table(states)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    write_json(args.out / "table.json", {"split": "test", "searches": [str(f) for f in args.searches], "models": data})
    figure(data, args.out / "by_size.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
