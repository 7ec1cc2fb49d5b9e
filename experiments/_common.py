"""Helpers shared by the experiment scripts: load configs as plain dicts, write JSON + a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent


def conf(group: str, name: str) -> dict[str, Any]:
    """One config-group entry from conf/ as a plain dict (no Hydra needed)."""
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{name}.yaml"), resolve=True)


def dataset_prompt(name: str):
    """The prompt facts (``prompt:``) of ``conf/dataset/<name>.yaml``, which templates are bound to."""
    from freeret.prompts import DatasetPrompt

    return DatasetPrompt.from_config(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml")))


def save(out: Path, payload: dict[str, Any]) -> None:
    """Write a result JSON (with the environment) and say where it went."""
    from freeret.eval.results import environment, write_json

    write_json(out, {**payload, "environment": environment()})
    print(f"wrote {out}")


def bar_chart(out: Path, labels: list[str], series: dict[str, list[float]], ylabel: str, title: str,
              hline: float | None = None) -> None:
    """Grouped bar chart saved as PNG beside the JSON (one colour per series)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(series)
    for j, (name, values) in enumerate(series.items()):
        ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))], values, width, label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")
