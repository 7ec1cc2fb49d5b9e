"""The figures of each probe, drawn from its result payload alone (used by the probe runs and the notebooks)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freeret.probes import plots


def _title(payload: Mapping[str, Any], what: str) -> str:
    return f"{what}, {payload['model']['name']} (prior {payload.get('prior')})"


def draw(payload: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNGs of one probe payload into ``out_dir``; return their paths."""
    probe, model = payload["probe"], payload["model"]["name"]
    out = lambda name: out_dir / f"{probe}_{model}_{name}.png"  # noqa: E731
    if probe == "anisotropy":
        prof = payload["profile"]
        return [
            plots.depth_plot(prof, {"mean_cosine": "mean pairwise cosine"}, _title(payload, "Anisotropy"),
                             out("depth"), payload.get("highlight"), twin={"top_pc_share": "top-PC variance share"}),
            plots.depth_plot(prof, {"effective_rank": "effective rank"}, _title(payload, "Spread"), out("rank"),
                             payload.get("highlight"), ylabel="effective rank"),
        ]
    if probe == "lexical_bias":
        prof = payload["profile"]
        return [
            plots.depth_plot(prof, {"alpha": "alpha: cos(h_p, h_p-1)", "beta": "beta: cos(h_p, W_U[next])"},
                             _title(payload, "Lexical bias"), out("depth"), payload.get("highlight")),
            plots.depth_plot(prof, {"synonym_cosine": f"{payload['n_pairs']} synonym pairs",
                                    "random_cosine": "random pairs"},
                             _title(payload, "Synonym vs random similarity"), out("synonyms"), payload.get("highlight")),
            plots.tail_plot(prof, {"alpha": "alpha", "beta": "beta", "synonym_cosine": "synonyms",
                                   "random_cosine": "random"}, _title(payload, "Last sub-layers"), out=out("tail")),
        ]
    if probe == "framing_sensitivity":
        return [plots.framing_bars(payload["records"], f"Framings, {model} ({payload['n_pairs']} labelled pairs)", out("bars"))]
    raise ValueError(f"unknown probe {probe!r}")
