"""FreeRet entry point: compose the Hydra config and hand it to ``freeret.runner.run``.

    python run.py                                   # embedded SmolLM2 on the WordNet set
    python run.py model=qwen2vl_7b prior=caption    # a real MLLM (weights from the HF cache or model.path=DIR)
    python run.py -m layer=attn_last,mlp_last prior=e5v,freeret
    python run.py -m experiment=mmeb_table1 model=qwen25vl_7b   # a whole benchmark, model loaded once
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from freeret.errors import FreeRetError


CONF = Path(__file__).resolve().parent / "conf"
_CHOICE = re.compile(r"^\+{0,2}(\w+)=([\w.,-]+)$")


def unknown_choice(args: list[str]) -> str | None:
    """One line naming a config-group choice (``model=...``, ``dataset=...``) that has no YAML, else None."""
    for arg in args:
        match = _CHOICE.match(arg)
        if not match or not (CONF / match[1]).is_dir():
            continue
        group = match[1]
        for name in match[2].split(","):
            if name != "null" and not (CONF / group / f"{name}.yaml").is_file():
                known = ", ".join(sorted(p.stem for p in (CONF / group).glob("*.yaml")))
                return (f"{group}={name} is not a known {group} (no conf/{group}/{name}.yaml); "
                        f"choose one of: {known}, or add that file")
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one configuration (one dataset or a benchmark); print a line per dataset; return the mean main score."""
    from freeret.benchmark import run_all  # heavy imports (torch, lightning) after the cheap checks
    from freeret.runner import summary_line

    config = OmegaConf.to_container(cfg, resolve=True)
    config["run_dir"] = HydraConfig.get().runtime.output_dir
    try:
        payloads = run_all(config, on_result=lambda p: print(summary_line(p), flush=True))
    except FreeRetError as exc:
        if cfg.get("debug"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return sum(float(p["main_score"]) for p in payloads) / len(payloads)


if __name__ == "__main__":
    problem = unknown_choice(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
