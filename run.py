"""FreeRet entry point: compose the Hydra config and hand it to ``freeret.runner.run``.

    python run.py                                   # embedded SmolLM2 on the WordNet set
    python run.py model=qwen2vl_7b prior=caption    # a real MLLM (weights from the HF cache or model.path=DIR)
    python run.py -m layer=attn_last,mlp_last prior=e5v,freeret
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from freeret.cli import one_line_errors
from freeret.runner import run, summary_line


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one configuration; print a one-line summary; return the main score (for sweepers)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["run_dir"] = HydraConfig.get().runtime.output_dir
    payload = one_line_errors(lambda: run(config), bool(cfg.get("debug")))
    print(summary_line(payload))
    return float(payload["main_score"])


if __name__ == "__main__":
    main()
