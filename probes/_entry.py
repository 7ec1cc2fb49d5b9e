"""Shared Hydra entry for the probe scripts: compose ``conf/probe.yaml``, run one probe, print one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from freeret.cli import exit_on_unknown_choice, one_line_errors, quiet_lightning
from freeret.probes.run_probe import resolve_framings, run_probe, summary_line

REPO = Path(__file__).resolve().parent.parent


def entry(name: str) -> Callable[[], Any]:
    """The Hydra main function of probe ``name``."""

    exit_on_unknown_choice(REPO / "conf")
    quiet_lightning()

    @hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="probe")
    def main(cfg: DictConfig) -> None:
        config = OmegaConf.to_container(cfg, resolve=True)
        config["run_dir"] = HydraConfig.get().runtime.output_dir

        def go() -> dict[str, Any]:
            resolve_framings(config, REPO / "conf")
            return run_probe(name, config)

        payload = one_line_errors(go, bool(cfg.get("debug")))
        print(summary_line(payload))

    return main
