"""Experiment loggers (``conf/logger``): none, csv, or W&B (offline unless turned on)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freeret.errors import ConfigError


def make_logger(cfg: Mapping[str, Any] | None, run_dir: Path):
    """A Lightning logger, or None for ``kind: none``."""
    kind = (cfg or {}).get("kind", "none")
    if kind == "none":
        return None
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = cfg.get("mode", "offline")
        return WandbLogger(
            project=cfg.get("project", "freeret"),
            entity=cfg.get("entity"),
            name=cfg.get("run_name"),
            group=cfg.get("group"),
            save_dir=str(run_dir),
            offline=mode != "online",
            mode=mode,
        )
    raise ConfigError(f"logger.kind={kind!r} is not one of none, csv, wandb")
