"""Figures from probe result payloads (plain dicts, as in the JSON files): no model and no torch needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _depth_axis(ax, points: Sequence[str]) -> None:
    """x ticks at each layer's attention point, labelled by layer number (about ten ticks)."""
    attn = [i for i, p in enumerate(points) if p.startswith("attn_")]
    step = max(1, len(attn) // 10)
    ticks = attn[::step] + ([attn[-1]] if attn and attn[-1] not in attn[::step] else [])
    ax.set_xticks(ticks, [points[i].split("_")[1] for i in ticks], fontsize=8)
    ax.set_xlabel("layer (o after attention + residual, s after MLP + residual)")


def depth_plot(profile: Sequence[Mapping[str, Any]], series: Mapping[str, str], title: str, out: Path | None = None,
               highlight: str | None = None, ylabel: str = "cosine", twin: Mapping[str, str] | None = None):
    """One line per ``series`` key (label = value) across all points; ``twin`` series go on a right axis."""
    points = [rec["point"] for rec in profile]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    axes = [(ax, series, "-")]
    if twin:
        axes.append((ax.twinx(), twin, "--"))
    handles = []
    for axis, group, style in axes:
        for key, label in group.items():
            xs = [i for i, rec in enumerate(profile) if rec.get(key) is not None]
            ys = [profile[i][key] for i in xs]
            (line,) = axis.plot(xs, ys, style, lw=1.2, label=label, color=f"C{len(handles)}")
            handles.append(line)
            for marker, prefix in (("o", "attn_"), ("s", "mlp_")):
                sel = [(x, y) for x, y in zip(xs, ys) if points[x].startswith(prefix)]
                if sel:
                    axis.plot(*zip(*sel), marker, ms=3, color=line.get_color())
    if twin:
        axes[1][0].set_ylabel(", ".join(twin.values()))
    if highlight in points:
        ax.axvline(points.index(highlight), color="grey", ls=":", lw=1)
        ax.annotate(highlight, (points.index(highlight), ax.get_ylim()[1]), fontsize=7, ha="right", va="top", color="grey")
    _depth_axis(ax, points)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, out)


def tail_plot(profile: Sequence[Mapping[str, Any]], series: Mapping[str, str], title: str, n: int = 6,
              out: Path | None = None):
    """The last ``n`` points only, with their names on the axis (the paper's zoom on the final layers)."""
    tail = list(profile)[-n:]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for key, label in series.items():
        ax.plot(range(len(tail)), [rec.get(key) for rec in tail], "o-", label=label)
    ax.set_xticks(range(len(tail)), [rec.get("short", rec["point"]) for rec in tail], fontsize=8, rotation=20)
    ax.set_ylabel("cosine")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def framing_bars(records: Sequence[Mapping[str, Any]], title: str, out: Path | None = None):
    """Grouped bars per framing: content-free P(match option), accuracy, flip rate (dashed: 0.5)."""
    keys = {"p_match_content_free": "P(match option), content-free", "accuracy": "accuracy (labelled pairs)",
            "flip_rate": "flip rate (options swapped)"}
    labels = [f"{r['framing']}\n({'/'.join(r['options'])})" for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(keys)
    for j, (key, name) in enumerate(keys.items()):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(records))]
        ax.bar(xs, [r[key] for r in records], width, label=name)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(records)), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability / rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: Path | None):
    """Save as PNG when ``out`` is given (and close); return the figure otherwise."""
    if out is None:
        return fig
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def model_overlay(profiles: Mapping[str, Sequence[Mapping[str, Any]]], key: str, title: str, out: Path | None = None,
                  ylabel: str = "cosine"):
    """``key`` across relative depth (0 = emb, 1 = mlp_last) for several models: sizes with different depths align."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for model, prof in profiles.items():
        xs = [i / max(1, len(prof) - 1) for i, rec in enumerate(prof) if rec.get(key) is not None]
        ax.plot(xs, [rec[key] for rec in prof if rec.get(key) is not None], "-", lw=1.2, label=model)
    ax.set_xlabel("relative depth (0 = embeddings, 1 = after the final MLP)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
