"""Helpers shared by the experiment scripts: load configs as plain dicts, write JSON + a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent


def conf(group: str, name: str) -> dict[str, Any]:
    """One config-group entry from conf/ as a plain dict (no Hydra needed)."""
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{name}.yaml"), resolve=True)


def save(out: Path, payload: dict[str, Any]) -> None:
    """Write a result JSON (with the environment) and say where it went."""
    from freeret.eval.results import environment, write_json

    write_json(out, {**payload, "environment": environment()})
    print(f"wrote {out}")
