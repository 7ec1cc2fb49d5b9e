"""The scaling study's result files -> per-model figures, the paper's findings per size, and the smallest size at
which each holds. Read by experiments/scaling_table.py and notebooks/scaling.ipynb (no model is loaded).

A study folder holds ``<model>/<run>.json`` as experiments/scaling.py writes them: ``scaling`` (the run's record:
wall time, limits, split, parameter count, code-tuned) plus ``results`` (run payloads) or ``probe`` (a probe payload).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freeret.errors import DataError
from freeret.eval.results import RunResult

LAYERS = {"layer_attn_last": "h^Attn_L", "layer_mlp_last": "h^MLP_L", "method_e5v": "E5-V (normed last layer, E5-V prompt)"}
PRIORS = {"prior_none": "none", "prior_e5v": "E5-V base", "prior_grounding": "+ grounding",
          "prior_grounding_noise": "+ noise suppression", "layer_attn_last": "+ task alignment (FreeRet)"}
METHODS = {"layer_attn_last": "FreeRet (paper: h^Attn_L, FreeRet prior)", "method_e5v": "E5-V",
           "method_freeret_plus": "freeret_plus_v1 (PromptEOL, ABTT; chosen on SmolLM2 dev)",
           "method_freeret_plus_270m": "freeret_plus_270m (+ one demonstration; chosen on Gemma dev)"}
PAPER_FRAMINGS = ("right_wrong", "yes_no", "true_false", "mcq")  # Table 3c
FRAMINGS = (*PAPER_FRAMINGS, "mmembed", "retllm")
SCORERS = {"choice_debiased": "choice (MCQ), both option orders", "cl_pmi": "candidate likelihood, PMI (lambda=1)",
           "query_likelihood": "query likelihood (UPR)", "blim": "BLiM (bidirectional)", "listwise": "listwise"}
RERANKS = (*FRAMINGS, *SCORERS)  # run rerank_<name>: the paper's framings (scorer=choice), then the other scorers
META = {"meta_freeret": "FreeRet (MCQ rerank)", "meta_e5v": "E5-V", "meta_freeret_plus": "freeret_plus_v1 (stage 1)"}
PROBES = ("probe_lexical_bias", "probe_anisotropy", "probe_framing_sensitivity")
STAGE1_PLUS = tuple(r for r in METHODS if r not in LAYERS)  # the pinned freeret_plus settings' stage-1 runs (same on every model)
ALL_RUNS = (*LAYERS, *(r for r in PRIORS if r not in LAYERS), *STAGE1_PLUS, *(f"rerank_{f}" for f in RERANKS),
            *PROBES, *META)  # every run the table reads


@dataclass
class ModelResults:
    """Every run of one model in a study folder."""

    name: str
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """Parameter count (as loaded, untied heads included), from any run's record."""
        return next((r["scaling"].get("num_parameters") for r in self.runs.values()
                     if r["scaling"].get("num_parameters")), None)

    @property
    def code_tuned(self) -> bool:
        return any(r["scaling"].get("code_tuned") for r in self.runs.values())

    def payloads(self, run: str) -> list[RunResult]:
        """The run's results (one per dataset), read through :class:`RunResult` (any schema version)."""
        return [RunResult.from_dict(d) for d in (self.runs.get(run) or {}).get("results") or []]

    def probe(self, run: str) -> dict[str, Any] | None:
        return (self.runs.get(run) or {}).get("probe")

    def hit1(self, run: str, stage: str = "embed") -> float | None:
        """hit@1 of a single-dataset run at ``stage`` (embed or rerank)."""
        results = self.payloads(run)
        return results[0].metrics[stage]["hit@1"] if results and stage in results[0].metrics else None

    def queries(self, run: str) -> int | None:
        results = self.payloads(run)
        return results[0].counts.num_queries if results else None

    def meta_mean(self, run: str, stage: str = "final") -> float | None:
        """Mean hit@1 over the meta-task suite's datasets (final = after reranking where there is a rerank)."""
        results = self.payloads(run)
        if not results:
            return None
        return sum(r.score(stage if stage == "final" else "embed", "hit@1") for r in results) / len(results)

    def wall(self, run: str) -> float | None:
        return (self.runs.get(run) or {}).get("scaling", {}).get("wall_seconds")


def load_study(folder: Path) -> list[ModelResults]:
    """Every model folder of a study, smallest model first (models without a parameter count last)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no scaling results at {folder}: run python experiments/scaling.py first")
    models = []
    for model_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        runs = {f.stem: json.loads(f.read_text()) for f in sorted(model_dir.glob("*.json"))}
        runs = {k: v for k, v in runs.items() if "scaling" in v}
        if runs:
            models.append(ModelResults(model_dir.name, runs))
    if not models:
        raise DataError(f"{folder} holds no scaling result files (<model>/<run>.json)")
    return sorted(models, key=lambda m: (m.size is None, m.size or 0, m.name))


def _gt(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else a > b


def _priors_cumulative(m: ModelResults) -> bool | None:
    steps = [m.hit1(r) for r in ("prior_e5v", "prior_grounding", "prior_grounding_noise", "layer_attn_last")]
    if None in steps:
        return None
    return all(b >= a for a, b in itertools.pairwise(steps)) and steps[-1] > steps[0]


def _mcq_best(m: ModelResults) -> bool | None:
    scores = {f: m.hit1(f"rerank_{f}", "rerank") for f in PAPER_FRAMINGS}
    if scores["mcq"] is None or all(v is None for f, v in scores.items() if f != "mcq"):
        return None
    return all(scores["mcq"] >= v for v in scores.values() if v is not None)


def _lexical(key: str) -> Callable[[ModelResults], bool | None]:
    def holds(m: ModelResults) -> bool | None:
        probe = m.probe("probe_lexical_bias")
        return None if probe is None else bool(probe["claims"][key])
    return holds


def _framing_claim(key: str) -> Callable[[ModelResults], bool | None]:
    def holds(m: ModelResults) -> bool | None:
        probe = m.probe("probe_framing_sensitivity")
        return None if probe is None or key not in (probe.get("claims") or {}) else bool(probe["claims"][key])
    return holds


def _mcq_lowest_flip(m: ModelResults) -> bool | None:
    probe = m.probe("probe_framing_sensitivity")
    if probe is None:
        return None
    flips = {r["framing"]: r["flip_rate"] for r in probe["records"]}
    return "mcq" in flips and flips["mcq"] <= min(flips.values())


# (paper finding, test on one model's results: True / False / None = not run)
FINDINGS: list[tuple[str, Callable[[ModelResults], bool | None]]] = [
    ("h^Attn_L beats h^MLP_L (stage-1 hit@1, FreeRet prior)", lambda m: _gt(m.hit1("layer_attn_last"), m.hit1("layer_mlp_last"))),
    ("FreeRet stage 1 beats E5-V (normed last layer + E5-V prompt)", lambda m: _gt(m.hit1("layer_attn_last"), m.hit1("method_e5v"))),
    ("priors add up: E5-V base <= +grounding <= +noise <= +task, last > base", _priors_cumulative),
    ("MCQ rerank of the top-K beats stage 1", lambda m: _gt(m.hit1("rerank_mcq", "rerank"), m.hit1("rerank_mcq"))),
    ("MCQ is the best framing after reranking (ties count)", _mcq_best),
    ("alpha collapses at the final MLP", _lexical("alpha_collapses_at_final_mlp")),
    ("beta jumps at the final MLP", _lexical("beta_jumps_at_final_mlp")),
    ("synonym similarity drops at the final MLP", _lexical("synonym_similarity_drops_at_final_mlp")),
    ("MCQ is the least label-biased framing (content-free inputs)", _framing_claim("mcq_least_biased")),
    ("MCQ has the lowest option-order flip rate (ties count)", _mcq_lowest_flip),
    ("FreeRet beats E5-V on the WordNet meta-task suite (mean hit@1)",
     lambda m: _gt(m.meta_mean("meta_freeret"), m.meta_mean("meta_e5v"))),
]

# (our additions' claims, same form): does what we built help at each size?
ADDITIONS: list[tuple[str, Callable[[ModelResults], bool | None]]] = [
    ("freeret_plus beats FreeRet's stage 1 (RD)", lambda m: _gt(m.hit1("method_freeret_plus"), m.hit1("layer_attn_last"))),
    ("freeret_plus beats E5-V (RD)", lambda m: _gt(m.hit1("method_freeret_plus"), m.hit1("method_e5v"))),
    *((f"{label} rerank beats stage 1 (RD)", lambda m, r=f"rerank_{name}": _gt(m.hit1(r, "rerank"), m.hit1(r)))
      for name, label in SCORERS.items()),
    ("freeret_plus beats E5-V on the meta-task suite (mean hit@1)",
     lambda m: _gt(m.meta_mean("meta_freeret_plus"), m.meta_mean("meta_e5v"))),
]


def smallest_holding(verdicts: list[bool | None]) -> int | None:
    """Index (models sorted by size) of the smallest model from which a finding holds at every larger model that
    ran it; None when it does not hold at the largest model that ran it (or nothing ran)."""
    ran = [i for i, v in enumerate(verdicts) if v is not None]
    if not ran or not verdicts[ran[-1]]:
        return None
    first = ran[-1]
    for i in reversed(ran):
        if not verdicts[i]:
            break
        first = i
    return first


def _short_size(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e9:.2f}B" if size >= 1e9 else f"{size / 1e6:.0f}M"


def size_label(m: ModelResults) -> str:
    """'135M', '1.78B' ... plus the code-tuned mark."""
    return f"{m.name} ({_short_size(m.size)}{', code-tuned' if m.code_tuned else ''})"


def _series(models: list[ModelResults], value: Callable[[ModelResults], float | None]) -> tuple[list[float], list[float]]:
    """(sizes, values) of the models that have both."""
    pairs = [(m.size, value(m)) for m in models]
    pairs = [(s, v) for s, v in pairs if s is not None and v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _summary(run: str, key: str) -> Callable[[ModelResults], float | None]:
    return lambda m: (m.probe(run) or {}).get("summary", {}).get(key)


def panels(models: list[ModelResults]) -> list[tuple[str, str, dict[str, Callable[[ModelResults], float | None]]]]:
    """(title, y label, {line label: value per model}) for each claim's panel."""
    return [
        ("Stage-1 read-out (RD test)", "hit@1", {label: (lambda m, r=run: m.hit1(r)) for run, label in LAYERS.items()}),
        ("Stage-1 methods (RD test)", "hit@1", {label: (lambda m, r=run: m.hit1(r)) for run, label in METHODS.items()}),
        ("Explicit priors at h^Attn_L (RD test)", "hit@1", {label: (lambda m, r=run: m.hit1(r)) for run, label in PRIORS.items()}),
        ("Rerank framings, top-K (RD test)", "hit@1",
         {"stage 1": lambda m: m.hit1("rerank_mcq"),
          **{f: (lambda m, f=f: m.hit1(f"rerank_{f}", "rerank")) for f in FRAMINGS}}),
        ("Rerank scorers, top-K (RD test)", "hit@1",
         {"stage 1": lambda m: m.hit1("rerank_mcq"), "choice (MCQ)": lambda m: m.hit1("rerank_mcq", "rerank"),
          **{label: (lambda m, r=f"rerank_{name}": m.hit1(r, "rerank")) for name, label in SCORERS.items()}}),
        ("Lexical bias at the last layer", "cosine",
         {f"{k} at {p}": _summary("probe_lexical_bias", f"{k}@{p}") for k in ("alpha", "beta") for p in ("attn_last", "mlp_last")}),
        ("Synonym-pair similarity", "cosine",
         {f"synonyms at {p}": _summary("probe_lexical_bias", f"synonym_cosine@{p}") for p in ("attn_last", "mlp_last")}),
        ("Anisotropy of unrelated items", "mean pairwise cosine",
         {p: _summary("probe_anisotropy", f"mean_cosine@{p}") for p in ("attn_last", "mlp_last")}),
        ("Option-order flip rate", "flip rate",
         {f: _summary("probe_framing_sensitivity", f"flip_rate@{f}") for f in PAPER_FRAMINGS}),
        ("WordNet meta-task suite (test)", "mean hit@1",
         {"FreeRet (MCQ rerank)": lambda m: m.meta_mean("meta_freeret"),
          "FreeRet stage 1": lambda m: m.meta_mean("meta_freeret", "embed"),
          "E5-V": lambda m: m.meta_mean("meta_e5v"),
          "freeret_plus": lambda m: m.meta_mean("meta_freeret_plus")}),
    ]


def draw_study(models: list[ModelResults], out: Path) -> Path:
    """One panel per claim against parameter count (log x); writes ``out`` (PNG) and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    spec = panels(models)
    ticks = sorted({m.size for m in models if m.size is not None})
    cols = 4
    fig, axes = plt.subplots((len(spec) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.4 * ((len(spec) + cols - 1) // cols)))
    for ax, (title, ylabel, lines) in zip(axes.flat, spec):
        for label, value in lines.items():
            xs, ys = _series(models, value)
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [_short_size(t) for t in ticks])  # one labelled tick per model, no log-decade clutter
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if ticks:
            ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("parameters (log)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(spec):]:
        ax.axis("off")
    names = ", ".join(size_label(m) for m in models)
    fig.suptitle(f"FreeRet's findings vs model size: {names}; WordNet test sets with limits (docs/scaling.md)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
