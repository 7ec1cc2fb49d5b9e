"""Issue 27's report: per model and technique, dev hit@1 with and without it (the domain mean and each domain), its
cost against the setting it was tried on (forward passes, prompt tokens and generated tokens per item), and a figure.

    python experiments/techniques_report.py /work/runs/gs/{smollm2_135m,gemma3_270m,qwen25coder_05b,qwen25coder_15b} \
        --out docs/results/techniques

Reads each search folder (``search.json`` of ``stage1_search.py --spec experiments/general_search.yaml``; nothing is
embedded here). "Without" is the setting the technique's axis started from (the best so far), scored on the same dev
data; "with" is each job of the axis. Costs are counted, not timed: every dev item's prompts are rendered exactly as
the run rendered them (the model's tokenizer and chat template, no weights) and tokenised; a query-generation job's
generated texts are read from its ``generations/`` folder. Writes ``table.md``, ``table.json`` and ``deltas.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from runs import compose
from stage1_search import dev_data, load_search, overrides

from freeret.atomic_files import write_json
from freeret.backbone.backbone import Prompter
from freeret.backbone.loading import resolve_checkpoint
from freeret.benchmark import dataset_configs
from freeret.data.datamodule import PromptCollator
from freeret.data.datasets import load_dataset
from freeret.paths import repo_root
from freeret.preflight import load_text_side
from freeret.run.plan import check

SPEC = repo_root() / "experiments" / "general_search.yaml"
AXES = {"echo": "echo embeddings (item twice)", "echo_eol": "echo + PromptEOL cue",
        "ensemble": "prompt ensemble (MetaEOL-style, 4 prompts)", "expand": "query generation (HyDE-style)",
        "prepend": "token prepending", "promptreps": "PromptReps lexical vectors"}
KEYS = ("prior", "pooling", "expand", "expand.weight", "prepend", "retriever", "retriever.fusion")


def _short(dataset: str) -> str:
    return dataset.removeprefix("general_").removesuffix("_dev")


def job_folder(state: dict[str, Any], setting: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(axis name, job record) of the dev job that ran ``setting``: its folder holds what it generated."""
    for name, axis in state["axes"].items():
        for job in axis.get("jobs", []):
            if job.get("setting") == setting:
                return name, job
    return None


def label(setting: dict[str, Any], base: dict[str, Any]) -> str:
    """What a job changed against the setting its axis started from."""
    changed = [f"{k}={setting[k]}" for k in KEYS if k in setting and setting.get(k) != base.get(k)]
    return ", ".join(changed) or "(the start)"


class Costs:
    """Forward passes and tokens per dev item of a setting, counted from its rendered prompts (no weights)."""

    def __init__(self, model: str, spec: dict[str, Any]) -> None:
        self.model, self.spec, self.sides = model, spec, {}

    def _side(self, plan: Any) -> Any:
        if "side" not in self.sides:
            self.sides["side"] = load_text_side(plan.spec, resolve_checkpoint(plan.spec))
        return self.sides["side"]

    def count(self, setting: dict[str, Any], job_dir: Path | None = None) -> dict[str, float]:
        """Per query and per candidate: forwards, prompt tokens (all forwards), generated tokens (queries)."""
        cfg = compose([f"model={self.model}", "experiment=stage1_search", *overrides(setting), *dev_data(self.spec),
                       "logger=none"])
        totals = {"query": [0, 0.0, 0.0, 0.0], "target": [0, 0.0, 0.0, 0.0]}  # items, forwards, tokens, generated
        for dataset in dataset_configs(cfg):
            dcfg = {**cfg, "dataset": dataset}
            plan = check(dcfg, warn=False)
            side = self._side(plan)
            fake = SimpleNamespace(prompter=Prompter(plan.spec, side.family, side.processor))
            readout = plan.layer
            prepend = getattr(readout, "prepend", None)
            rset = load_dataset(dcfg["dataset"])
            name = dcfg["dataset"]["name"]
            generated = self._generations(job_dir, name)
            views = plan.views
            members = views.members if views is not None else (plan.prior,)
            collates = [PromptCollator(fake, m, prepend=prepend) for m in members]  # type: ignore[arg-type]
            for item in rset.items.values():
                t = totals[item.role]
                t[0] += 1
                todo = views.of(item, generated.get(item.text)) if views is not None else []
                pairs = [(v.member, v.item) for v in todo] if todo else [(0, item)]
                for member, view_item in pairs:
                    t[1] += 1
                    t[2] += side.count_tokens(collates[member].prompt(view_item))
                if views is not None and views.expand.active and item.role == "query" and item.text in generated:
                    spec = views.expand
                    t[1] += 1  # the generation's prompt forward, then one step per generated token
                    t[2] += side.count_tokens(side.render([spec.user_text(item.text)]) + spec.answer_prefix())
                    t[3] += min(spec.max_new_tokens, side.count_tokens(self._raw[item.text]) + 1)
        out = {}
        for role, (n, fwd, tok, gen) in totals.items():
            out[f"{role}_forwards"], out[f"{role}_tokens"], out[f"{role}_generated"] = fwd / n, tok / n, gen / n
        return out

    def _generations(self, job_dir: Path | None, dataset: str) -> dict[str, str]:
        self._raw: dict[str, str] = {}
        path = job_dir / "generations" / f"{dataset}.jsonl" if job_dir is not None else None
        if path is None or not path.is_file():
            return {}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        self._raw = {r["query"]: r["generated"] for r in rows}
        return {r["query"]: r["target"] for r in rows}


def model_report(folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """One model's techniques: per axis, the start and every job, with scores per domain and costs."""
    state = json.loads((folder / "search.json").read_text())
    costs = Costs(state["model"], spec)
    out: dict[str, Any] = {"model": state["model"], "best": state["best"], "axes": {}}
    for axis, what in AXES.items():
        entry = state["axes"].get(axis)
        if entry is None:
            continue
        if "skipped" in entry:
            out["axes"][axis] = {"what": what, "skipped": entry["skipped"]}
            continue
        found = job_folder(state, entry["from"])
        start = found[1] if found else None
        base_cost = costs.count(entry["from"], folder / found[0] / str(found[1]["job"]) if found else None)
        jobs = []
        for job in entry["jobs"]:
            cost = costs.count(job["setting"], folder / axis / str(job["job"]))
            jobs.append({"label": label(job["setting"], entry["from"]), "setting": job["setting"],
                         "mean": job["objective"], "scores": {_short(d): s for d, s in job["scores"].items()},
                         "cost": cost, "chosen": entry.get("chosen") == job["setting"]})
        out["axes"][axis] = {"what": what, "start": {"mean": start["objective"] if start else None,
                                                     "scores": {_short(d): s for d, s in (start or {}).get("scores", {}).items()},
                                                     "cost": base_cost}, "jobs": jobs}
    return out


def _ratio(cost: dict[str, float], base: dict[str, float], key: str) -> str:
    return f"{cost[key] / base[key]:.2f}x" if base[key] else "-"


def table(reports: list[dict[str, Any]]) -> str:
    """Markdown: a block per model, a row per job (the start first), domains and the mean, then the cost."""
    lines = ["Split: **dev** (general_dev, each domain's first 80 queries against their 80 positives). hit@1 in %; "
             "Δ = the job's mean minus the start's (the best setting before the axis). Cost per item against the start: "
             "forward passes (a generation's prompt counts as one) and prompt tokens (q = query, c = candidate; the "
             "start's row gives its absolute numbers, a job's row the ratio to them), and decoding steps per query "
             "(at most expand.max_new_tokens).", ""]
    for rep in reports:
        axes = {k: v for k, v in rep["axes"].items() if "jobs" in v}
        if not axes:
            continue
        domains = sorted(next(iter(axes.values()))["jobs"][0]["scores"])
        lines += [f"**{rep['model']}**", "", "| technique | setting | " + " | ".join(domains) +
                  " | mean | Δ | forwards q / c | tokens q / c | generated / q |",
                  "|---|---|" + "---|" * (len(domains) + 5)]
        for entry in axes.values():
            start, base = entry["start"], entry["start"]["cost"]
            cells = [f"{100 * start['scores'][d]:.1f}" if d in start["scores"] else "-" for d in domains]
            lines.append(f"| {entry['what']} | without (the start) | " + " | ".join(cells) +
                         f" | {100 * start['mean']:.1f} | | {base['query_forwards']:.1f} / {base['target_forwards']:.1f} | "
                         f"{base['query_tokens']:.0f} / {base['target_tokens']:.0f} tokens | "
                         f"{base['query_generated']:.1f} |")
            for job in entry["jobs"]:
                c = job["cost"]
                cells = [f"{100 * job['scores'][d]:.1f}" for d in domains]
                delta = 100 * (job["mean"] - start["mean"])
                mark = " (chosen)" if job["chosen"] else ""
                lines.append(f"| | {job['label']}{mark} | " + " | ".join(cells) + f" | {100 * job['mean']:.1f} | "
                             f"{delta:+.1f} | {c['query_forwards']:.1f} / {c['target_forwards']:.1f} | "
                             f"{_ratio(c, base, 'query_tokens')} / {_ratio(c, base, 'target_tokens')} | "
                             f"{c['query_generated']:.1f} |")
        skipped = [f"{v['what']}: {v['skipped']}" for v in rep["axes"].values() if "skipped" in v]
        lines += [*(f"- skipped: {s}" for s in skipped), "", f"Chosen: `{rep['best']}`", ""]
    return "\n".join(lines) + "\n"


def figure(reports: list[dict[str, Any]], path: Path) -> None:
    """The best job's Δ dev mean per technique, a group of bars per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(1, len(reports))
    for i, rep in enumerate(reports):
        deltas = []
        for axis in AXES:
            entry = rep["axes"].get(axis, {})
            jobs = entry.get("jobs")
            deltas.append(100 * (max(j["mean"] for j in jobs) - entry["start"]["mean"]) if jobs else float("nan"))
        ax.bar([x + i * width for x in range(len(AXES))], deltas, width, label=rep["model"])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks([x + width * (len(reports) - 1) / 2 for x in range(len(AXES))], list(AXES), fontsize=8)
    ax.set_ylabel("Δ dev mean hit@1 (points)")
    ax.set_title("Each technique's best dev job against the setting it started from (split: dev; gaps: not run)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searches", type=Path, nargs="+", help="search folders (each with search.json)")
    parser.add_argument("--out", type=Path, required=True, help="folder for table.md, table.json, deltas.png")
    parser.add_argument("--spec", type=Path, default=SPEC, help="the search spec the folders ran")
    args = parser.parse_args(argv)
    spec = load_search(args.spec)
    reports = [model_report(folder, spec) for folder in args.searches]
    text = table(reports)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    write_json(args.out / "table.json", {"split": "dev", "data": spec.get("data_note"), "models": reports})
    figure(reports, args.out / "deltas.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
