"""Shared Hydra entry for the probe scripts: compose ``conf/probe.yaml``, run one probe, print one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from freeret.cli import exit_on_unknown_choice, one_line_errors
from freeret.errors import ConfigError
from freeret.probes.runner import run_probe, summary_line

REPO = Path(__file__).resolve().parent.parent


def resolve_framings(config: dict[str, Any]) -> None:
    """Replace framing names in ``probe.framing_sensitivity.framings`` by their conf/framing entries."""
    section = (config.get("probe") or {}).get("framing_sensitivity") or {}
    resolved = []
    for name in section.get("framings") or []:
        if isinstance(name, dict):
            resolved.append(name)
            continue
        path = REPO / "conf" / "framing" / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
            raise ConfigError(f"framing {name!r} is not in conf/framing ({known})")
        resolved.append(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    if section:
        section["framings"] = resolved


def entry(name: str) -> Callable[[], Any]:
    """The Hydra main function of probe ``name``."""

    exit_on_unknown_choice(REPO / "conf")

    @hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="probe")
    def main(cfg: DictConfig) -> None:
        config = OmegaConf.to_container(cfg, resolve=True)
        config["run_dir"] = HydraConfig.get().runtime.output_dir

        def go() -> dict[str, Any]:
            resolve_framings(config)
            return run_probe(name, config)

        payload = one_line_errors(go, bool(cfg.get("debug")))
        print(summary_line(payload))

    return main
