"""Coordinate-wise stage-1 search on DEV data, then the chosen setting once on TEST (issue 15).

    python experiments/stage1_search.py --model smollm2_135m --out docs/results/smollm2_135m/stage1_search
    python experiments/stage1_search.py --model smollm2_135m --out ... --axes prior abtt_d    # some axes only
    python experiments/stage1_search.py --model smollm2_135m --out ... --test                 # once, on test
    python experiments/stage1_search.py --spec experiments/stage1_search_cpu.yaml ...         # the lean CPU search
    python experiments/stage1_search.py --model smollm2_135m --out ... --write-preset         # method=freeret_plus's file

The axes, the start and the baselines are data: ``search`` in ``conf/experiment/stage1_search.yaml``. Each axis is
one ``experiment=stage1_search`` sweep (suite ``stage1_dev``: the reverse dictionary's dev split and the meta-task
dev suite) from the best setting so far; a job's objective is the mean of its RD dev hit@1 and its meta-task dev
mean hit@1, and it replaces the best only if higher. A sweep runs in this process on one loaded model
(``runs.run_sweep``), or with ``--launcher slurm`` through ``run.py -m hydra/launcher=slurm`` on a cluster; either
way its jobs land in ``<out>/<axis>/<job>``. ``<out>/search.json`` keeps every job's scores, overrides and wall
time, and the best setting after each axis; a rerun skips finished axes, and finished jobs of an unfinished one
(and the embedding cache skips finished vectors). ``--test`` runs the chosen setting and the baselines on suite ``stage1_test``, and the
baselines on dev too; nothing is chosen from a test score. ``--write-preset`` writes the chosen setting into
``conf/presets/freeret_plus/<model>.yaml`` (``--write-preset _general``: the file of models without their own), with
its provenance (this search file, split, objective and score, the dev datasets, the date), so ``method=freeret_plus``
applies it to that model from then on (freeret/presets.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from runs import add_launcher_argument
from runs import run_sweep as run_plan

from freeret.bench import bar_chart
from freeret.cli import one_line_errors, quiet_lightning
from freeret.errors import ConfigError
from freeret.experiment import Models
from freeret.paths import repo_root
from freeret.presets import write as write_preset_file
from freeret.run.report import summary_line

CONFIG = repo_root() / "conf" / "experiment" / "stage1_search.yaml"
QUIET = ["logger=none", "trainer.enable_progress_bar=false"]
TWO_STAGE = {"pipeline": "two_stage", "pipeline.name": "two_stage"}  # the experiment's body sets pipeline.name=embed


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write a search's record (``search.json``) the one way every driver does: sorted keys, one space indent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


def load_search(path: Path = CONFIG) -> dict[str, Any]:
    """The ``search`` section of the experiment config (or of a ``--spec`` file: what it leaves out, e.g. the
    ``start``, is the experiment's)."""
    spec = yaml.safe_load(path.read_text())["search"]
    return spec if path == CONFIG else {**yaml.safe_load(CONFIG.read_text())["search"], **spec}


def _value(v: Any) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)


def overrides(best: dict[str, Any], sweep: dict[str, list[Any]] | None = None) -> list[str]:
    """Command-line overrides for a sweep from ``best``: every key of ``best`` is passed (so the experiment's own
    sweeper params never apply), with the swept keys' lists. Dotted keys use ``++`` (set whether or not present)."""
    merged = {**best, **(sweep or {})}
    return [f"{'++' if '.' in k else ''}{k}={_value(v)}" for k, v in merged.items()]


def set_choice(best: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``best`` with ``key`` set; choosing a config group drops the previous choice's own keys (``group.*``)."""
    out = {k: v for k, v in best.items() if "." in key or not k.startswith(key + ".")}
    out[key] = value
    return out


OBJECTIVES = {"rd_meta": "mean(RD dev hit@1, meta-task dev mean hit@1)",
              "mean": "mean dev hit@1 over the suite's datasets (domains)"}


def objective_of(record: dict[str, Any], objective: str = "rd_meta") -> float:
    """A job's objective: the mean of its RD and meta-task dev scores (``rd_meta``, the WordNet search) or the mean
    over every dataset it ran (``mean``, the general suite's search)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"search.objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
    if objective == "mean":
        return record["mean"]
    parts = [x for x in (record["rd"], record["meta"]) if x is not None]
    return sum(parts) / len(parts)


def dev_data(spec: dict[str, Any]) -> list[str]:
    """The overrides that select a spec's dev data: its dev suite (the first of ``suites``) and ``dev_overrides``."""
    return [*([f"suite={spec['suites'][0]}"] if spec.get("suites") else []), *spec.get("dev_overrides", [])]


def job_records(sweep_dir: Path, objective: str = "rd_meta") -> list[dict[str, Any]]:
    """One record per job of a multirun folder: its overrides, per-dataset scores, RD / meta dev means, the mean over
    datasets, the objective (:func:`objective_of`)."""
    records = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        results = [json.loads(p.read_text()) for p in sorted((job / "results").glob("*.json"))]
        if not results:
            continue
        task = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        scores = {r["dataset"]: r["main_score"] for r in results}
        stage1 = {r["dataset"]: r["metrics"]["embed"][r["main_score_name"]] for r in results
                  if "rerank" in r.get("metrics", {})}
        rd = [s for d, s in scores.items() if d.startswith("wordnet_rd")]
        meta = [s for d, s in scores.items() if not d.startswith("wordnet_rd")]
        record = {"job": int(job.name), "overrides": task, "scores": scores,
                  "rd": rd[0] if rd else None, "meta": sum(meta) / len(meta) if meta else None,
                  "mean": sum(scores.values()) / len(scores), **({"stage1_scores": stage1} if stage1 else {}),
                  "wall_s": sum(r["timing"]["wall_seconds"] for r in results),
                  "embed_s": sum(r["timing"].get("embed_seconds", 0.0) for r in results)}
        record["objective"] = objective_of(record, objective)
        records.append(record)
    return records


MODELS = Models()  # in-process: the model loads once for every sweep of a search


def run_sweep(model: str, args: list[str], sweep_dir: Path, extra: list[str], launcher: str | None = None) -> float:
    """One ``experiment=stage1_search`` sweep into ``sweep_dir/<job>`` (in this process on the search's one loaded
    model, or through ``launcher``); returns its wall time."""
    sweep = ["experiment=stage1_search", f"model={model}", *args, *QUIET, *extra]
    start = time.perf_counter()
    run_plan(sweep, sweep_dir, launcher, models=MODELS, on_result=lambda r: print(f"  {summary_line(r)}", flush=True))
    return time.perf_counter() - start


def parse_overrides(task: list[str], keys: set[str]) -> dict[str, Any]:
    """The values of ``keys`` in a job's override list."""
    out = {}
    for item in task:
        key, _, value = item.lstrip("+").partition("=")
        if key in keys:
            out[key] = yaml.safe_load(value)
    return out


def matches(best: dict[str, Any], when: dict[str, Any] | None) -> bool:
    """Whether ``best`` has the values an axis's ``when`` asks for (a list = any of them)."""
    for key, want in (when or {}).items():
        allowed = want if isinstance(want, list) else [want]
        if best.get(key) not in allowed:
            return False
    return True


def start_setting(spec: dict[str, Any], start_from: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """Where a new search starts: the spec's ``start``, or the chosen setting of another search (``start_from``: its
    ``search.json``, e.g. a smaller model's of the same family), with where it came from."""
    if start_from is None:
        return dict(spec["start"]), None
    if not start_from.is_file():
        raise ConfigError(f"--start-from {start_from} is not a file (a search.json)")
    other = json.loads(start_from.read_text())
    return dict(other["best"]), f"the setting chosen for {other['model']} ({start_from})"


def search(model: str, out: Path, axes: list[str] | None, extra: list[str], spec_path: Path = CONFIG,
           launcher: str | None = None, start_from: Path | None = None) -> dict[str, Any]:
    """Run the axes (all, or those named) and return the state written to ``<out>/search.json``. An axis with an
    empty sweep scores the best setting as it stands: the first job of a search started ``start_from`` another."""
    spec = load_search(spec_path)
    state_file = out / "search.json"
    objective = spec.get("objective", "rd_meta")
    if state_file.exists():
        state = json.loads(state_file.read_text())
    else:
        start, origin = start_setting(spec, start_from)
        state = {"model": model, "objective": OBJECTIVES[objective], "best": start, "best_objective": None,
                 "axes": {}, "dev_overrides": list(spec.get("dev_overrides", [])),
                 **({"started_from": origin} if origin else {})}
    for axis in spec["axes"]:
        name = axis["name"]
        if (axes and name not in axes) or name in state["axes"]:
            continue
        skip = None
        clash = [u for u in axis.get("unless") or [] if matches(state["best"], u)]
        if not matches(state["best"], axis.get("when")):
            skip = f"best setting does not match {axis['when']}"
        elif clash:
            skip = f"best setting matches {clash[0]}"
        elif not axis["sweep"] and state["best_objective"] is not None:
            skip = "the best setting already has a dev score"
        if skip:  # saved at once, so a skip is on disk even when no later axis runs
            state["axes"][name] = {"skipped": skip}
            write_state(state_file, state)
            continue
        sweep = {k: v if isinstance(v, list) else [v] for k, v in axis["sweep"].items()}
        best = state["best"]
        for key in sweep:  # a group swept by this axis drops the previous choice's own keys
            best = set_choice(best, key, best.get(key))
        best = {k: v for k, v in best.items() if v is not None}
        wall = run_sweep(model, [*overrides(best, sweep), *dev_data(spec)], out / name, extra, launcher)
        records = job_records(out / name, objective)
        keys = set(best) | set(sweep)
        for r in records:
            r["setting"] = {**best, **parse_overrides(r["overrides"], keys)}
        top = max(records, key=lambda r: r["objective"])
        entry = {"sweep": sweep, "from": state["best"], "wall_s": wall, "jobs": records}
        if state["best_objective"] is None or top["objective"] > state["best_objective"]:
            state["best"], state["best_objective"] = top["setting"], top["objective"]
            entry["chosen"] = top["setting"]
        else:
            entry["chosen"] = None  # the best so far stays
        state["axes"][name] = entry
        write_state(state_file, state)
        print(f"{name}: best {state['best']} objective {state['best_objective']:.4f} ({wall:.0f}s)", flush=True)
    return state


def test(model: str, out: Path, extra: list[str], spec_path: Path = CONFIG,
         suites: tuple[str, ...] = ("stage1_dev", "stage1_test"), launcher: str | None = None,
         only: list[str] | None = None) -> dict[str, Any]:
    """The chosen setting on test (once) and the baselines on dev and test (or only the ``suites`` named; ``only``:
    only these runs, e.g. a large model's baselines while its search is still running, or without the costly ones)."""
    state = json.loads((out / "search.json").read_text())
    spec = load_search(spec_path)
    # every group the search sets is passed (the start's value unless the setting names it), so the experiment's own
    # sweeper params never turn a final run into a sweep
    runs = {"chosen": state["best"], **{k: {**spec["start"], **v} for k, v in spec["baselines"].items()}}
    stage2 = (state.get("stage2") or {}).get("chosen_overrides")
    if stage2:  # the chosen stage 2 on the chosen stage 1 (experiments/stage2_search.py)
        runs = {"chosen": runs["chosen"], "chosen_stage2": {**state["best"], **TWO_STAGE, **stage2},
                **{k: v for k, v in runs.items() if k != "chosen"}}
    state.setdefault("test", {})
    unknown = sorted(set(only or []) - set(runs))
    if unknown:
        raise ConfigError(f"--only {' '.join(unknown)}: not a run of this search ({', '.join(runs)})")
    for name, setting in runs.items():
        if only and name not in only:
            continue
        for suite in suites:
            tag = f"{name}_{suite.split('_')[1]}"
            if name.startswith("chosen") and tag.endswith("_dev"):
                continue
            if tag in state["test"]:
                if state["test"][tag]["setting"] == setting:
                    continue
                # the choice moved (a later axis won on dev): the earlier choice's test run is kept as <tag>_before
                # and the new choice runs once
                state["test"][f"{tag}_before"] = state["test"].pop(tag)
                (out / "final" / tag).rename(out / "final" / f"{tag}_before")
                write_state(out / "search.json", state)  # before the run
            data = spec.get("dev_overrides" if tag.endswith("_dev") else "test_overrides", [])
            wall = run_sweep(model, [*overrides(setting), f"suite={suite}", *data], out / "final" / tag, extra, launcher)
            state["test"][tag] = {"setting": setting, "wall_s": wall,
                                  "jobs": job_records(out / "final" / tag, spec.get("objective", "rd_meta"))}
            write_state(out / "search.json", state)
            job = state["test"][tag]["jobs"][0]
            print(f"{tag}: RD {_pct(job['rd'])} meta {_pct(job['meta'])} mean {_pct(job['mean'])} ({wall:.0f}s)", flush=True)
    return state


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _label(setting: dict[str, Any], keys: list[str] | None = None) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in setting.items() if keys is None or k in keys)


def report(state: dict[str, Any], out: Path, spec_path: Path = CONFIG) -> str:
    """A compact record (``<out>/search.json``: every job's setting, scores and wall time, without run folders),
    the per-axis dev leaderboard and the final table as Markdown (``<out>/leaderboard.md``), and a bar chart of the
    final runs (``<out>/final.png``). Axes are listed in the spec's order. Returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    keep = ("setting", "scores", "stage1_scores", "rd", "meta", "mean", "objective", "wall_s", "embed_s")
    compact = {**state, "axes": {name: {**{k: v for k, v in axis.items() if k != "jobs"},
                                        "jobs": [{k: j.get(k) for k in keep} for j in axis.get("jobs", [])]}
                                 for name, axis in state["axes"].items()},
               "test": {tag: {**run, "jobs": [{k: j.get(k) for k in keep} for j in run["jobs"]]}
                        for tag, run in state.get("test", {}).items()}}
    write_state(out / "search.json", compact)
    if state["objective"] == OBJECTIVES["mean"]:
        return _report_mean(state, out, spec_path)
    jobs = [j for axis in state["axes"].values() for j in axis.get("jobs", [])]
    objective = state["objective"] if any(j["meta"] is not None for j in jobs) else "RD dev hit@1 (no meta-task dev run)"
    lines = [f"### Dev search, {state['model']} (split: dev)", "",
             f"Objective: {objective}; hit@1 in %. Each axis starts from the best setting so far.", ""]
    order = [a["name"] for a in load_search(spec_path)["axes"]]
    for name, axis in sorted(state["axes"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if "skipped" in axis:
            lines += [f"**{name}**: skipped ({axis['skipped']})", ""]
            continue
        swept = list(axis["sweep"])
        lines += [f"**{name}** (from {_label(axis['from'])}; {axis['wall_s']:.0f} s)", "",
                  "| setting | RD dev | meta dev | objective | wall s |", "|---|---|---|---|---|"]
        for j in sorted(axis["jobs"], key=lambda j: -j["objective"]):
            mark = " **(chosen)**" if axis.get("chosen") == j["setting"] else ""
            lines.append(f"| {_label(j['setting'], swept)}{mark} | {_pct(j['rd'])} | {_pct(j['meta'])} | "
                         f"{_pct(j['objective'])} | {j['wall_s']:.0f} |")
        lines.append("")
    lines += [f"Chosen on dev: `{_label(state['best'])}` (objective {_pct(state['best_objective'])}).", ""]
    finals = state.get("test", {})
    if finals:
        lines += ["### Final runs (split named per row)", "",
                  "| method | split | RD hit@1 | meta mean hit@1 | wall s |", "|---|---|---|---|---|"]
        for tag, run in finals.items():
            job = run["jobs"][0]
            name, _, split = tag.rpartition("_")
            lines.append(f"| {name} | {split} | {_pct(job['rd'])} | {_pct(job['meta'])} | {run['wall_s']:.0f} |")
        tests = {tag.rpartition("_")[0]: run["jobs"][0] for tag, run in finals.items() if tag.endswith("_test")}
        names = sorted(tests)
        series = {part: [100 * (tests[n][key] or 0) for n in names]
                  for part, key in (("RD hit@1", "rd"), ("meta mean hit@1", "meta"))}
        bar_chart(out / "final", names, series, "hit@1 (%)", f"Stage 1, {state['model']}, split: test")
    text = "\n".join(lines) + "\n"
    (out / "leaderboard.md").write_text(text)
    return text


def _short(dataset: str) -> str:
    return dataset.removeprefix("general_").removesuffix("_dev")


def _report_mean(state: dict[str, Any], out: Path, spec_path: Path) -> str:
    """The leaderboard of a search on the mean over datasets: a column per dataset, the final runs per split."""
    order = [a["name"] for a in load_search(spec_path)["axes"]]
    data = state.get("dev_overrides") or []
    lines = [f"### Dev search, {state['model']} (split: dev)", "",
             f"Objective: {state['objective']}; hit@1 in %. Each axis starts from the best setting so far."
             + (f" Data: `{' '.join(data)}`." if data else ""), ""]
    for name, axis in sorted(state["axes"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if "skipped" in axis:
            lines += [f"**{name}**: skipped ({axis['skipped']})", ""]
            continue
        swept, names = list(axis["sweep"]), sorted(axis["jobs"][0]["scores"])
        lines += [f"**{name}** (from {_label(axis['from'])}; {axis['wall_s']:.0f} s)", "",
                  "| setting | " + " | ".join(map(_short, names)) + " | mean | wall s |",
                  "|---|" + "---|" * (len(names) + 2)]
        for j in sorted(axis["jobs"], key=lambda j: -j["objective"]):
            mark = " **(chosen)**" if axis.get("chosen") == j["setting"] else ""
            lines.append(f"| {_label(j['setting'], swept)}{mark} | " + " | ".join(_pct(j["scores"][n]) for n in names)
                         + f" | {_pct(j['objective'])} | {j['wall_s']:.0f} |")
        lines.append("")
    lines += [f"Chosen on dev: `{_label(state['best'])}` (mean {_pct(state['best_objective'])}).", ""]
    finals = state.get("test", {})
    if finals:
        lines += ["### Final runs (split named per row; hit@1 in %)", ""]
        for split in ("dev", "test"):
            tags = [t for t in finals if t.endswith("_" + split)]
            if not tags:
                continue
            names = sorted(finals[tags[0]]["jobs"][0]["scores"])
            lines += ["| method | split | " + " | ".join(n.removeprefix("general_").removesuffix("_" + split)
                                                       for n in names) + " | mean | wall s |",
                      "|---|---|" + "---|" * (len(names) + 2)]
            for tag in tags:
                job = finals[tag]["jobs"][0]
                lines.append(f"| {tag.removesuffix('_' + split)} | {split} | "
                             + " | ".join(_pct(job["scores"][n]) for n in names)
                             + f" | {_pct(job['mean'])} | {finals[tag]['wall_s']:.0f} |")
            lines.append("")
    if state.get("stage2"):
        lines += [stage2_report(state)]
    text = "\n".join(lines) + "\n"
    (out / "leaderboard.md").write_text(text)
    return text


def stage2_report(state: dict[str, Any], top: int = 12) -> str:
    """Markdown: stage 1 alone and the best grid settings (dev hit@1 per dataset and mean), the choice."""
    s2 = state["stage2"]
    if "transferred_from" in s2:  # stage2_search.py --transfer-from: not searched on this model
        src = s2["source_dev"]
        return (f"### Stage 2, {state['model']}: transferred, not searched\n\nTaken from {s2['source_model']}'s dev search "
                f"(the best of its grid with K <= {s2['max_k']}: {src['label']}, its dev mean {_pct(src['mean'])} against "
                f"its stage 1 {_pct(src['stage1_mean'])}).\n\nChosen: `{s2['chosen_overrides']}`\n")
    names = sorted(s2["stage1"]["scores"])
    kept = ([f"Searched with an earlier stage 1 ({' '.join(s2['searched_on'])}); the choice is kept for the stage 1 "
             f"chosen since, not searched again.", ""] if s2.get("kept_for") == state["best"] else [])
    lines = [f"### Stage-2 search, {state['model']} (split: dev)", "", *kept,
             f"One BLiM run at K={s2['run']['pipeline.top_k']} on the chosen stage 1; {len(s2['settings'])} settings "
             f"scored from its records; hit@1 in %.", "",
             "| setting | " + " | ".join(map(_short, names)) + " | mean |", "|---|" + "---|" * (len(names) + 1),
             "| stage 1 alone | " + " | ".join(_pct(s2["stage1"]["scores"][n]) for n in names)
             + f" | {_pct(s2['stage1']['mean'])} |"]
    for row in sorted(s2["settings"], key=lambda r: -r["mean"])[:top]:
        mark = " **(chosen)**" if row["setting"] == s2["chosen"] else ""
        lines.append(f"| {row['label']}{mark} | " + " | ".join(_pct(row["scores"][n]) for n in names)
                     + f" | {_pct(row['mean'])} |")
    by_scorer: dict[str, float] = {}
    for row in s2["settings"]:
        key = row["setting"]["scorer"]
        by_scorer[key] = max(by_scorer.get(key, 0.0), row["mean"])
    lines += ["", "Best dev mean per scorer: " + ", ".join(f"{k} {_pct(v)}" for k, v in by_scorer.items()) + ".", "",
              f"Chosen: `{s2['chosen_overrides']}`" if s2["chosen"] else "Chosen: no stage 2 (no setting beat stage 1)."]
    return "\n".join(lines) + "\n"


def compare(states: list[dict[str, Any]], spec_path: Path = CONFIG) -> str:
    """Markdown: every axis's dev objective for several models side by side (rows: the swept values; bold: the value
    that beat the best so far and became the best), and each model's chosen setting. Settings differ in what each axis started
    from (each model's own best so far), so a row compares the swept values, not whole settings."""
    models = [s["model"] for s in states]
    order = [a["name"] for a in load_search(spec_path)["axes"]]
    names = sorted({n for s in states for n in s["axes"]}, key=lambda n: order.index(n) if n in order else len(order))
    lines = ["| axis | swept value | " + " | ".join(f"{m} dev" for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for name in names:
        rows: dict[str, dict[str, str]] = {}
        for state in states:
            axis = state["axes"].get(name, {})
            for job in axis.get("jobs", []):
                label = _label(job["setting"], list(axis["sweep"]))
                kept = axis.get("chosen") == job["setting"]  # it beat the best so far and became the best
                rows.setdefault(label, {})[state["model"]] = f"**{_pct(job['objective'])}**" if kept else _pct(job["objective"])
        for label, scores in rows.items():
            cells = [scores.get(m, "-") for m in models]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    lines += ["", "| model | chosen on dev | dev objective |", "|---|---|---|"]
    lines += [f"| {s['model']} | `{_label(s['best'])}` | {_pct(s['best_objective'])} |" for s in states]
    return "\n".join(lines) + "\n"


def objective_name(state: dict[str, Any]) -> str:
    """The objective the search's jobs were scored on (the RD part alone where no meta-task dev dataset ran)."""
    jobs = [j for axis in state["axes"].values() for j in axis.get("jobs", [])]
    return state["objective"] if any(j.get("meta") is not None for j in jobs) else "RD dev hit@1 (no meta-task dev run)"


def pinned(best: dict[str, Any], pins: list[dict[str, Any]]) -> dict[str, Any]:
    """``best`` with the spec's ``pins`` applied: each sets its keys (where ``best`` does not name them) when ``best``
    matches its ``when`` (e.g. the few-shot prior ran zero-shot on a suite without demonstrations: pin k=0)."""
    out = dict(best)
    for pin in pins:
        if matches(best, pin.get("when")):
            out.update({k: v for k, v in pin["set"].items() if k not in best})
    return out


def write_preset(state: dict[str, Any], out: Path, name: str | None = None, preset: str = "freeret_plus",
                 root: Path | None = None, date: str | None = None, spec_path: Path = CONFIG,
                 stage2: bool = True) -> Path:
    """``conf/presets/<preset>/<name or the search's model>.yaml`` from the search's chosen setting (``best``, with the
    spec's ``pins``) and stage 2 (``stage2_search.py``'s choice, if any), with where they were chosen; returns the
    file written."""
    spec = load_search(spec_path)
    jobs = [j for axis in state["axes"].values() for j in axis.get("jobs", [])]
    chosen = [j for j in jobs if j.get("setting") == state["best"] and j.get("objective") == state["best_objective"]]
    search = (out / "search.json").resolve()
    try:
        search = search.relative_to(repo_root())
    except ValueError:
        pass
    provenance = {"split": "dev", "search": str(search), "objective": objective_name(state),
                  "data": spec.get("data_note"),
                  "score": state["best_objective"], "datasets": sorted(chosen[0]["scores"]) if chosen else None,
                  "date": date or datetime.date.today().isoformat(),
                  "written_by": "experiments/stage1_search.py --write-preset",
                  "note": f"chosen for {state['model']}" if (name or state["model"]) != state["model"] else None}
    chosen_stage2 = (state.get("stage2") or {}).get("chosen_overrides") if stage2 else None
    if state.get("stage2"):
        s2 = state["stage2"]
        what = ("stage 1 only (written with --no-stage2)" if not stage2 else
                f"stage 2 transferred from {s2['source_model']}'s dev search (the best of its grid with K <= "
                f"{s2['max_k']}: {s2['source_dev']['label']}), not searched on this model" if "transferred_from" in s2 else
                f"stage 2 chosen by experiments/stage2_search.py on the same dev data with an earlier stage 1 "
                f"({' '.join(s2['searched_on'])}; dev mean hit@1 {s2['stage1']['mean']:.4f} -> {s2['objective']:.4f}), "
                f"kept for this stage 1, not searched again" if s2.get("kept_for") == state["best"] else
                f"stage 2 chosen by experiments/stage2_search.py on the same dev data: dev mean hit@1 "
                f"{s2['stage1']['mean']:.4f} -> {s2['objective']:.4f}" if chosen_stage2 else
                "stage 2: none (no setting of experiments/stage2_search.py beat stage 1 on dev)")
        provenance["note"] = "; ".join(x for x in (provenance["note"], what) if x)
    else:
        provenance["note"] = "; ".join(x for x in (provenance["note"], "stage 2: not searched for this model") if x)
    if state.get("started_from"):
        origin = state["started_from"].split(" (")[0]  # the model, not the folder it ran in
        provenance["note"] = f"{provenance['note']}; the search started from {origin}"
    return write_preset_file(preset, name or state["model"], pinned(state["best"], spec.get("pins", [])),
                             {k: v for k, v in provenance.items() if v is not None}, stage2=chosen_stage2, root=root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a conf/model name (every mode but --compare)")
    parser.add_argument("--out", type=Path, default=None, help="folder for sweeps, logs and search.json (every mode but --compare)")
    parser.add_argument("--axes", nargs="*", default=None, help="run only these axes (default: all not yet run)")
    parser.add_argument("--test", action="store_true", help="run the chosen setting and the baselines on test")
    parser.add_argument("--suites", nargs="+", default=None,
                        help="with --test: the suites the final runs use (baselines run on each; default: the spec's "
                             "`suites`, else stage1_dev stage1_test)")
    parser.add_argument("--only", nargs="+", default=None, metavar="RUN",
                        help="with --test: only these runs (chosen, chosen_stage2 or baseline names)")
    parser.add_argument("--report", type=Path, default=None,
                        help="write a compact search.json, leaderboard.md and final.png into this folder; run nothing")
    parser.add_argument("--compare", type=Path, nargs="+", default=None,
                        help="print the dev leaderboards of these search folders side by side; run nothing")
    parser.add_argument("--write-preset", nargs="?", const="", default=None, metavar="NAME",
                        help="write the chosen setting of <out>/search.json into conf/presets/freeret_plus/<model>.yaml "
                             "(NAME: that file's name instead, e.g. _general); run nothing")
    parser.add_argument("--no-stage2", action="store_true",
                        help="with --write-preset: stage 1 only (e.g. the _general file, for models whose data a "
                             "text-only stage 2 cannot score)")
    parser.add_argument("--spec", type=Path, default=CONFIG,
                        help="a YAML file whose `search` section replaces the experiment's (e.g. stage1_search_cpu.yaml)")
    parser.add_argument("--start-from", type=Path, default=None, metavar="SEARCH_JSON",
                        help="a new search starts from the setting another search chose (its search.json) instead "
                             "of the spec's start; the spec's empty-sweep axis scores it first")
    add_launcher_argument(parser)
    parser.add_argument("overrides", nargs="*", help="extra run.py overrides for every job (e.g. embed.batch_size=16)")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare([json.loads((folder / "search.json").read_text()) for folder in args.compare], args.spec))
        return 0
    if args.model is None or args.out is None:
        parser.error("--model and --out are required (except with --compare)")
    if args.report:
        print(report(json.loads((args.out / "search.json").read_text()), args.report, args.spec))
        return 0
    if args.write_preset is not None:
        state = json.loads((args.out / "search.json").read_text())
        path = one_line_errors(lambda: write_preset(state, args.out, args.write_preset or None, spec_path=args.spec,
                                                    stage2=not args.no_stage2))
        print(f"wrote {path}")
        return 0
    quiet_lightning()
    if args.test:
        suites = tuple(args.suites or load_search(args.spec).get("suites", ["stage1_dev", "stage1_test"]))
        one_line_errors(lambda: test(args.model, args.out, args.overrides, args.spec, suites, args.launcher, args.only))
    else:
        one_line_errors(lambda: search(args.model, args.out, args.axes, args.overrides, args.spec, args.launcher,
                                       args.start_from))
    return 0


if __name__ == "__main__":
    sys.exit(main())
