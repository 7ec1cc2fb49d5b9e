"""FreeRet entry point: compose the Hydra config and hand it to ``freeret.benchmark.run_all``.

    python run.py                                   # embedded SmolLM2 on the WordNet set
    python run.py model=qwen2vl_7b prior=caption    # a real MLLM (weights from the HF cache or model.path=DIR)
    python run.py -m layer=attn_last,mlp_last prior=e5v,freeret
    python run.py -m experiment=mmeb_table1 model=qwen25vl_7b   # a whole benchmark, model loaded once
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from freeret.cli import exit_on_unknown_choice, one_line_errors, quiet_lightning

CONF = Path(__file__).resolve().parent / "conf"


def ranks_rerun_this_job(hydra_cfg: DictConfig) -> None:
    """Under ``-m``: Lightning starts the other DDP ranks as ``sys.argv`` + ``hydra.run.dir=<hydra.run.dir>``, which
    would be a new sweep of every job in a new folder. Make that command this job alone, in this job's folder."""
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task,
                *(o for o in hydra_cfg.overrides.hydra if o.startswith("hydra.job."))]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def with_preset(cfg: DictConfig, hydra_cfg: DictConfig) -> DictConfig:
    """``method=freeret_plus``: the config composed again with the loaded model's preset file
    (:func:`freeret.presets.resolve`; the command line's overrides still win); the job's ``.hydra/config.yaml`` is
    rewritten to what runs. Any other config comes back as Hydra composed it."""
    from hydra import compose

    from freeret.atomic_files import write_text_atomic
    from freeret.presets import resolve

    resolved = resolve(lambda overrides: compose(config_name="config", overrides=overrides),
                       list(hydra_cfg.overrides.task), composed=cfg)
    if resolved is not cfg and hydra_cfg.output_subdir is not None:
        write_text_atomic(Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml",
                          OmegaConf.to_yaml(resolved))
    return resolved


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one configuration (one dataset or a benchmark); print a line per dataset; return the mean main score."""
    # heavy imports (torch, lightning) after the cheap checks
    from freeret.benchmark import run_all
    from freeret.distributed import end_run, launch_state
    from freeret.run.report import summary_line

    quiet_lightning()
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        ranks_rerun_this_job(hydra_cfg)
    cfg = one_line_errors(lambda: with_preset(cfg, hydra_cfg), bool(cfg.get("debug")))
    config = OmegaConf.to_container(cfg, resolve=True)
    config["run_dir"] = hydra_cfg.runtime.output_dir
    launch = launch_state()
    results = one_line_errors(lambda: run_all(config, on_result=lambda r: print(summary_line(r), flush=True)),
                              bool(cfg.get("debug")))
    end_run(launch)  # the next job of a sweep starts its own ranks
    return sum(r.main_score for r in results) / len(results)


if __name__ == "__main__":
    exit_on_unknown_choice(CONF)
    main()
