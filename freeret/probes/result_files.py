"""Find and read probe result files (``<run_dir>/probes/<probe>.json``) under a folder: what the notebooks read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def find_results(root: str | Path, probe: str) -> list[dict[str, Any]]:
    """Every ``probes/<probe>.json`` under ``root`` (sorted by path); raises if there is none."""
    paths = sorted(Path(root).rglob(f"probes/{probe}.json"))
    if not paths:
        raise FileNotFoundError(f"no probes/{probe}.json under {Path(root).resolve()}: run python probes/{probe}.py first "
                                "or point FREERET_RESULTS at a folder of probe runs")
    return [{**json.loads(p.read_text()), "_path": str(p)} for p in paths]


def latest_per_model(payloads: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One payload per model name (the last found wins), for cross-model figures."""
    return {p["model"]["name"]: p for p in payloads}
