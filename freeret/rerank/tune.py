"""Stage-2 settings scored from stored records, with no forward pass (the dev search's stage-2 part, issue 26).

One BLiM run at the largest K keeps, per row and candidate, the parts every likelihood scorer is made of: the
candidate's conditional log-likelihood (``cond``), its content-free prior (``prior``), the query likelihood (``ql``)
and the stage-1 cosine (``embed``). Candidate likelihood with any ``cpn_lambda``, query likelihood, BLiM with any
weight and lambda, any smaller K and any fusion are then the same arithmetic the run does
(``freeret/rerank/scorers/likelihood.py``: :func:`cpn`, :func:`blim`; ``freeret/rerank/stage.py``: :func:`fuse`
and its tie rules), on the first K candidates of each record. :func:`check_against_run` ties it to the run's own
reported hit@1.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from freeret.errors import ConfigError
from freeret.rerank.scorers.likelihood import blim, cpn
from freeret.rerank.stage import RerankConfig, fused_ranking

SCORERS = ("candidate_likelihood", "query_likelihood", "bidirectional")
PARTS = ("cond", "prior", "ql", "embed", "positions")  # what a record must keep (a BLiM run with cpn_lambda != 0)


@dataclass(frozen=True)
class Stage2Setting:
    """One stage-2 choice: a likelihood scorer with its lambda / weight, the top-K and the fusion with stage 1."""

    scorer: str
    top_k: int
    fusion: str = "rerank"
    fusion_weight: float = 0.5
    cpn_lambda: float = 1.0  # candidate likelihood and BLiM's candidate half
    weight: float = 0.5  # BLiM's query-likelihood share

    def scores(self, record: Mapping[str, Any]) -> torch.Tensor:
        """This scorer's scores for the record's first ``top_k`` candidates."""
        k = self.top_k
        cl = cpn(record["cond"][:k], record["prior"][:k], self.cpn_lambda)
        if self.scorer == "candidate_likelihood":
            return cl
        if self.scorer == "query_likelihood":
            return torch.tensor(record["ql"][:k], dtype=torch.float32)
        return blim(cl, record["ql"][:k], self.weight)

    def overrides(self) -> dict[str, Any]:
        """The run.py overrides that run this setting (a preset file's ``stage2`` block)."""
        out: dict[str, Any] = {"scorer": self.scorer}
        if self.scorer == "candidate_likelihood":
            out["scorer.cpn_lambda"] = self.cpn_lambda
        elif self.scorer == "bidirectional":
            out["scorer.weight"] = self.weight
            out["scorer.candidate.cpn_lambda"] = self.cpn_lambda
        out["pipeline.top_k"] = self.top_k
        out["pipeline.fusion"] = self.fusion
        if self.fusion != "rerank":
            out["pipeline.fusion_weight"] = self.fusion_weight
        return out

    def label(self) -> str:
        """A short name for tables."""
        parts = {"candidate_likelihood": f"CL(lambda={self.cpn_lambda:g})", "query_likelihood": "QL",
                 "bidirectional": f"BLiM(w={self.weight:g}, lambda={self.cpn_lambda:g})"}[self.scorer]
        fusion = "alone" if self.fusion == "rerank" else f"{self.fusion} w={self.fusion_weight:g}"
        return f"{parts} K={self.top_k} {fusion}"


def check_records(records: Iterable[Mapping[str, Any]], k: int) -> None:
    """Every record keeps the parts (:data:`PARTS`) for at least ``k`` candidates (or all of a shorter list)."""
    for r in records:
        missing = [p for p in PARTS if p not in r]
        if missing:
            raise ConfigError(f"rerank record of row {r.get('row')!r} lacks {', '.join(missing)}: the stage-2 search "
                              f"reads a BLiM run with cpn_lambda != 0 (scorer=bidirectional)")
        if len(r["positions"]) < k and len(r["positions"]) != len(r["cond"]):
            raise ConfigError(f"rerank record of row {r.get('row')!r} holds {len(r['positions'])} candidates, fewer than K={k}")


def hit_at_1(record: Mapping[str, Any], setting: Stage2Setting | None, n_positive: int = 1) -> float:
    """1 if a positive (candidate positions ``< n_positive``) ranks first after ``setting`` (None: stage 1 alone,
    where a tie with the runner-up counts as a miss, as the metrics count it), else 0."""
    embed = torch.tensor(record["embed"], dtype=torch.float32)
    positions = list(record["positions"])
    if setting is None:
        return float(positions[0] < n_positive and (len(embed) < 2 or bool(embed[0] > embed[1])))
    k = min(setting.top_k, len(positions))
    full = torch.full((max(positions) + 1,), float("-inf"))
    full[torch.tensor(positions)] = embed
    cfg = RerankConfig(top_k=k, fusion=setting.fusion, fusion_weight=setting.fusion_weight)
    ranked = fused_ranking(full, positions[:k], setting.scores(record), cfg)
    return float(int(torch.argmax(ranked)) < n_positive)


def evaluate(records: Mapping[str, Sequence[Mapping[str, Any]]], setting: Stage2Setting | None) -> dict[str, float]:
    """Hit@1 per dataset (``records``: dataset -> its rows' records) for one setting (None: stage 1 alone)."""
    return {name: sum(hit_at_1(r, setting) for r in rows) / len(rows) for name, rows in records.items()}


def grid(spec: Mapping[str, Any]) -> list[Stage2Setting]:
    """The settings a search spec's ``stage2.grid`` names: for each scorer its own lambdas / weights, times every
    K and every fusion (``rerank``, or ``zscore`` / ``weighted`` with each fusion weight)."""
    unknown = sorted(set(spec.get("scorers", SCORERS)) - set(SCORERS))
    if unknown:
        raise ConfigError(f"stage2.grid.scorers: {', '.join(unknown)} cannot be scored from a BLiM run's records "
                          f"(known: {', '.join(SCORERS)})")
    lambdas, weights = spec.get("cpn_lambda", [1.0]), spec.get("weight", [0.5])
    fusions: list[tuple[str, float]] = []
    for fusion in spec.get("fusion", ["rerank"]):
        fusions += [("rerank", 0.5)] if fusion == "rerank" else [(fusion, w) for w in spec.get("fusion_weight", [0.5])]
    out = []
    for scorer in spec.get("scorers", SCORERS):
        shapes = {"candidate_likelihood": [(lam, 0.5) for lam in lambdas], "query_likelihood": [(1.0, 0.5)],
                  "bidirectional": list(itertools.product(lambdas, weights))}[scorer]
        for (lam, w), k, (fusion, fw) in itertools.product(shapes, spec["top_k"], fusions):
            out.append(Stage2Setting(scorer, int(k), fusion, float(fw), float(lam), float(w)))
    return out


def search(records: Mapping[str, Sequence[Mapping[str, Any]]], settings: Sequence[Stage2Setting]) -> dict[str, Any]:
    """Every setting's hit@1 per dataset and mean, and the chosen one: the highest mean, kept only if it beats stage 1
    alone (else ``chosen`` is None: no stage 2). Ties keep the earlier setting in ``settings``."""
    check_records((r for rows in records.values() for r in rows), max(s.top_k for s in settings))
    base = evaluate(records, None)
    rows = []
    for s in settings:
        per = evaluate(records, s)
        rows.append({"setting": asdict(s), "label": s.label(), "scores": per, "mean": sum(per.values()) / len(per)})
    best = max(rows, key=lambda r: r["mean"]) if rows else None
    base_mean = sum(base.values()) / len(base)
    chosen = best if best is not None and best["mean"] > base_mean else None
    return {"stage1": {"scores": base, "mean": base_mean}, "settings": rows,
            "chosen": chosen["setting"] if chosen else None,
            "chosen_overrides": Stage2Setting(**chosen["setting"]).overrides() if chosen else None,
            "objective": chosen["mean"] if chosen else base_mean}


def check_against_run(records: Mapping[str, Sequence[Mapping[str, Any]]], setting: Stage2Setting,
                      reported: Mapping[str, float], tol: float = 1e-9) -> None:
    """The offline score of the run's own setting equals the hit@1 the run reported, dataset by dataset (else the
    arithmetic here has drifted from the run's)."""
    ours = evaluate(records, setting)
    off = {d: (ours[d], reported[d]) for d in ours if d in reported and abs(ours[d] - reported[d]) > tol}
    if off:
        raise AssertionError(f"offline stage-2 hit@1 differs from the run's: {off}")
