"""What many test modules share: the repo, config composition, snapshots, and run.py's job in this process.

``run_py`` does what ``python run.py ARGS`` does (the unknown-choice check, composition, ``-m`` sweeps expanded as
Hydra's basic sweeper does, one-line errors with exit code 2, one summary line per dataset) without starting a
Python process: a cold start with torch, transformers and Lightning costs seconds, and most tests check the
run, not the process. ``run_py_process`` starts the real one, for the tests whose subject is the process boundary.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
QUIET = ["logger=none", "trainer.enable_progress_bar=false"]


def compose(overrides: list[str] | None = None, hydra: bool = False):
    """Compose the Hydra config as run.py would (without running; a per-model preset applied, as run.py applies
    it); ``hydra=True`` keeps the ``hydra`` node."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from freeret.presets import resolve

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return resolve(lambda o: hydra_compose(config_name="config", overrides=o, return_hydra_config=hydra),
                       list(overrides or []))


def dataset_prompt(name: str):
    """The prompt facts of ``conf/dataset/<name>.yaml`` (``mmeb/ImageNet-1K``, ``wordnet_rd``, ...), unresolved; a
    file that extends another (``defaults:``, as a dev twin extends its test twin) is composed as a run composes it."""
    from omegaconf import OmegaConf

    from freeret.prompts import DatasetPrompt

    entry = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    if "defaults" in entry:
        entry = compose([f"dataset={name}"]).dataset
    return DatasetPrompt.from_config(OmegaConf.to_container(entry))


def spec_of(name: str, *overrides: str):
    """The stage-2 scorer spec ``conf/scorer/<name>.yaml`` with ``overrides``."""
    from omegaconf import OmegaConf

    from freeret.rerank.scorers import scorer_spec

    return scorer_spec(OmegaConf.to_container(compose([f"scorer={name}", *overrides]).scorer, resolve=True))


def build_scorer(bb, name: str, *overrides: str, dataset: str | None = None, batch_size: int = 3, **ctx: Any):
    """The scorer on ``bb`` with the YAML's own wording (``dataset``: bound to that dataset's prompt facts); ``ctx``:
    other BuildContext fields (``max_tokens_per_batch``, ``candidate_cache_mb``)."""
    from omegaconf import OmegaConf

    from freeret.prompts import DatasetPrompt
    from freeret.rerank.framing import Framing
    from freeret.rerank.scorers.base import BuildContext

    prompt = DatasetPrompt.from_config(OmegaConf.to_container(compose([f"dataset={dataset}"]).dataset)) if dataset else None
    framing = Framing.from_dict(OmegaConf.to_container(compose([]).framing)).for_dataset(prompt)
    return spec_of(name, *overrides).build(BuildContext(bb, framing, prompt, batch_size, **ctx))


def tiny_gemma3(smollm: Any, sliding_window: int = 8) -> Any:
    """A seeded 4-layer Gemma 3 text model on SmolLM2's tokenizer (a ``Backbone``): Gemma's attention point is another
    module, and two of its layers attend within a ``sliding_window``."""
    import torch
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    from freeret.backbone.backbone import Backbone
    from freeret.backbone.families import get_family

    cfg = Gemma3TextConfig(vocab_size=len(smollm.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=sliding_window,
                           layer_types=["sliding_attention", "full_attention"] * 2)
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(cfg).eval()
    return Backbone(spec=smollm.spec, family=get_family("text"), model=model, processor=smollm.processor,
                    tokenizer=smollm.tokenizer)


def check_snapshot(path: Path, got: Any) -> None:
    """Compare with a frozen JSON snapshot; renew on purpose with FREERET_UPDATE_SNAPSHOTS=1."""
    if os.environ.get("FREERET_UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"missing snapshot {path.name}: create it with FREERET_UPDATE_SNAPSHOTS=1"
    assert got == json.loads(path.read_text())


def golden_mismatches(path: Path, got: dict[str, Any], meta: dict[str, str], relative: float = 1e-5) -> dict[str, float]:
    """Golden vectors (``tests/golden/*.safetensors``): each vector of ``got`` whose largest absolute difference from
    the frozen one exceeds ``relative`` of that one's largest absolute component, with that ratio; a key ending in
    ``_prefix_cache`` is compared with the key without it. Renew on purpose with FREERET_UPDATE_SNAPSHOTS=1 (the file
    records ``meta``, the inputs, and the torch and transformers versions that wrote it)."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    frozen = sorted(k for k in got if not k.endswith("_prefix_cache"))
    if os.environ.get("FREERET_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        save_file({k: got[k] for k in frozen}, path,
                  metadata={"torch": torch.__version__, "transformers": transformers.__version__, **meta})
    assert path.exists(), f"missing golden vectors {path.name}: create them with FREERET_UPDATE_SNAPSHOTS=1"
    want = load_file(path)
    assert sorted(want) == frozen, path.name
    bad = {}
    for key, vector in got.items():
        ref = want[key.removesuffix("_prefix_cache")]
        rel = float((vector - ref).abs().max() / ref.abs().max())
        if not rel <= relative:
            bad[key] = rel
    return bad


def results(run_dir: Path, dataset: str):
    """The result file one dataset of a run wrote."""
    from freeret.eval.results import RunResult

    return RunResult.read(run_dir / "results" / f"{dataset}.json")


@dataclass
class Ran:
    """What a finished run.py left: its exit code and what it printed (``subprocess.CompletedProcess``'s fields)."""

    returncode: int
    stdout: str
    stderr: str


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """The overrides of each job of ``run.py -m ARGS``: ``experiments/runs.py``'s :func:`expand` (Hydra's basic
    sweeper), with ``experiments/`` on ``sys.path`` as when a driver runs."""
    experiments = str(REPO / "experiments")
    if experiments not in sys.path:
        sys.path.insert(0, experiments)
    import runs

    return runs.expand(args)


def _captured(call: Callable[[], Any]) -> Ran:
    """``call()`` with what it prints captured, ending as the process would: ``sys.exit(code)`` gives that code, an
    uncaught error its traceback on stderr and exit code 1."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = call()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - the traceback is what the process would print
        err.write(traceback.format_exc())
        code = 1
    return Ran(code if isinstance(code, int) else 0, out.getvalue(), err.getvalue())


def _run_one(args: list[str], run_dir: Path) -> Ran:
    """One job of run.py in this process."""
    import torch
    from omegaconf import OmegaConf

    from freeret.benchmark import run_all
    from freeret.cli import one_line_errors, quiet_lightning
    from freeret.run.report import summary_line

    quiet_lightning()  # as run.py's main does
    cfg = compose(args)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["run_dir"] = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()  # a run's `threads=` is for its process: give this one back what it had
    try:
        return _captured(lambda: one_line_errors(
            lambda: run_all(config, on_result=lambda r: print(summary_line(r), flush=True)), bool(cfg.get("debug"))))
    finally:
        torch.set_num_threads(threads)


def run_py(args: list[str], run_dir: Path, env: dict[str, str] | None = None) -> Ran:
    """``python run.py ARGS hydra.run.dir=RUN_DIR`` (``-m`` in ARGS: a sweep into RUN_DIR/<job>), in this process;
    a sweep stops at its first failed job, and the output of every job run is kept."""
    import pytest

    from freeret.cli import unknown_choice

    multirun = "-m" in args
    args = [a for a in args if a != "-m" and not a.startswith("hydra.")]
    problem = unknown_choice(args, CONF)
    if problem:
        return Ran(2, "", f"error: {problem}\n")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        jobs = [(job, run_dir / str(n)) for n, job in enumerate(sweep_jobs(args))] if multirun else [(args, run_dir)]
        ran = Ran(0, "", "")
        for job, where in jobs:
            one = _run_one(job, where)
            ran = Ran(one.returncode, ran.stdout + one.stdout, ran.stderr + one.stderr)
            if ran.returncode:
                break
        return ran


def run_py_process(args: list[str], run_dir: Path, env: dict[str, str] | None = None,
                   timeout: int = 900) -> subprocess.CompletedProcess:
    """The real ``python run.py ARGS`` in a new process, run dir (or sweep dir with ``-m``) RUN_DIR."""
    run_dir.mkdir(parents=True, exist_ok=True)
    where = f"hydra.sweep.dir={run_dir}" if "-m" in args else f"hydra.run.dir={run_dir}"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args, where], capture_output=True, text=True,
                          env=full_env, cwd=run_dir, timeout=timeout)


def script(path: str):
    """An entry-point script (``experiments/make_tables.py``) imported as a module, to call its ``main`` here.

    Its folder goes on ``sys.path`` as when Python runs it (the drivers import their sibling ``runs``)."""
    import importlib.util

    file = REPO / path
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(f"script_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(path: str, argv: list[str]) -> Ran:
    """``python PATH ARGV`` in this process: the script's ``main(argv)``, what it printed and its exit code."""
    import inspect

    main = script(path).main
    saved = sys.argv
    sys.argv = [str(REPO / path), *argv]  # for a main() that parses sys.argv itself
    try:
        return _captured(lambda: main(argv) if inspect.signature(main).parameters else main())
    finally:
        sys.argv = saved
