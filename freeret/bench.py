"""What every benchmark and experiment script shares: the common arguments (threads, repeats, out path, model and
weights, device), an interleaved best-of-N timer (variants timed round-robin, so a busy machine slows each alike and
ratios are measured side by side in one run), config entries as plain dicts, the model-FLOP count and the matmul
reference that MFU is measured against (``widths``, ``flops_per_sequence``, ``matmul_gflops``), and one writer for
the JSON (with the environment) and the bar plot beside it. ``scripts/gpu_check.py`` reads these JSON files whole.

``experiments/bench_rerank_commits.py`` loads this file into another checkout's ``freeret`` (an older one may lack
these helpers): it imports nothing from ``freeret`` at module level but ``freeret.paths``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from freeret.paths import repo_root

T = TypeVar("T")
BENCH_OUT = repo_root() / "outputs" / "bench"


def conf(group: str, name: str) -> dict[str, Any]:
    """One config-group entry from conf/ as a plain dict (its own YAML only; no defaults list, no Hydra)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(repo_root() / "conf" / group / f"{name}.yaml"), resolve=True)


def dataset_prompt(name: str):  # noqa: ANN201 - freeret.prompts.DatasetPrompt, imported lazily
    """The prompt facts (``prompt:``) of ``conf/dataset/<name>.yaml``, which templates are bound to."""
    from omegaconf import OmegaConf

    from freeret.prompts import DatasetPrompt

    return DatasetPrompt.from_config(OmegaConf.to_container(OmegaConf.load(repo_root() / "conf" / "dataset" / f"{name}.yaml")))


def parser(doc: str | None, *, model: str | None = None, layers: int | None = None, weights: bool = False,
           threads: int | None | bool = False, threads_help: str = "torch threads (1 is steadiest on a shared CPU)",
           repeats: int | None = None, repeats_help: str = "interleaved rounds; each variant's best round is kept",
           device: bool = False, device_help: str = "cpu, or cuda", out: Path | None = None) -> argparse.ArgumentParser:
    """An argument parser with the benchmarks' common flags: ``--model`` (default ``model``) and ``--layers`` of
    ``qwen2vl_2b_dims``, ``--weights``, ``--threads`` (``threads``: its default; False: no flag), ``--repeats``,
    ``--device`` and ``--out`` (default ``out``; None: the script names it from its arguments)."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    if model is not None:
        ap.add_argument("--model", default=model, help="a conf/model name, or qwen2vl_2b_dims (random weights)")
    if layers is not None:
        ap.add_argument("--layers", type=int, default=layers, help="decoder layers of qwen2vl_2b_dims (the real 2B has 28)")
    if weights:
        ap.add_argument("--weights", choices=["real", "random", "auto"], default="real",
                        help="smollm2_135m: its real weights, random ones in its shape (from .gpu_bundle/smollm2_135m), "
                             "or real where installed, else random")
    if threads is not False:
        ap.add_argument("--threads", type=int, default=threads, help=threads_help)
    if repeats is not None:
        ap.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    if device:
        ap.add_argument("--device", default="cpu", help=device_help)
    ap.add_argument("--out", type=Path, default=out)
    return ap


def set_threads(n: int | None) -> None:
    """torch's intra-op threads (None: leave torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


@dataclass
class Timing:
    """A variant's best round: wall seconds and the process CPU seconds of that round."""

    seconds: float = float("inf")
    cpu_seconds: float = float("inf")


def best_of(variants: Mapping[str, Callable[[], T]], repeats: int,
            each: Callable[[int, str, float, float, T], None] | None = None,
            round_start: Callable[[int], None] | None = None,
            round_end: Callable[[int], None] | None = None) -> tuple[dict[str, Timing], dict[str, T]]:
    """Time every variant once per round, round-robin, for ``repeats`` rounds; keep each variant's fastest round.

    Returns (best timing per variant, each variant's last result). ``each(round, name, seconds, cpu_seconds,
    result)`` sees every timed call; ``round_start`` / ``round_end`` run around each round, untimed (a reference
    measured beside the variants)."""
    best = {name: Timing() for name in variants}
    last: dict[str, T] = {}
    for r in range(repeats):
        if round_start:
            round_start(r)
        for name, call in variants.items():
            t, c = time.perf_counter(), time.process_time()
            result = call()
            secs, cpu = time.perf_counter() - t, time.process_time() - c
            if secs < best[name].seconds:
                best[name] = Timing(secs, cpu)
            last[name] = result
            if each:
                each(r, name, secs, cpu, result)
        if round_end:
            round_end(r)
    return best, last


def widths(bb: Any) -> dict[str, int]:
    """Decoder widths that enter the FLOP count, of a :class:`~freeret.backbone.backbone.Backbone`."""
    cfg = bb.model.config.get_text_config()
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {"layers": bb.num_layers, "d": cfg.hidden_size, "ff": cfg.intermediate_size, "q": heads * head_dim,
            "kv": kv * head_dim, "vocab": cfg.vocab_size}


def flops_per_sequence(w: Mapping[str, int], s: int, early_exit: bool, head: bool, start: int = 0) -> float:
    """Forward FLOPs of ``s`` tokens at positions start+1..start+s (multiply-add = 2 FLOPs; norms and
    activations ignored; ``start`` > 0 for a suffix that attends to ``start`` cached prefix tokens).

    Per token: 2 * (L * P_attn + L' * P_mlp) with P_attn = 2*d*q + 2*d*kv (q, o, k, v projections),
    P_mlp = 3*d*ff (gate, up, down) and L' = L-1 when the forward stops at h^Attn_L (else L); plus the
    LM head 2*d*V per token when ``head``. Causal attention: 4*q*p per layer for the token at position p
    (scores and weighted sum), summed over p = start+1..start+s: 2*q*((start+s)(start+s+1) - start(start+1)).
    """
    p_attn = 2 * w["d"] * w["q"] + 2 * w["d"] * w["kv"]
    p_mlp = 3 * w["d"] * w["ff"]
    mlp_layers = w["layers"] - 1 if early_exit else w["layers"]
    per_token = 2 * (w["layers"] * p_attn + mlp_layers * p_mlp) + (2 * w["d"] * w["vocab"] if head else 0)
    end = start + s
    return per_token * s + w["layers"] * 2 * w["q"] * (end * (end + 1) - start * (start + 1))


def sync(device: Any) -> None:
    """Wait for queued GPU work on ``device`` (a torch.device), so wall times cover it."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def matmul_gflops(device: Any, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n x n torch.mm on ``device`` (the reference for MFU), at torch's current threads."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def write(out: Path, payload: dict[str, Any]) -> None:
    """Write a result JSON with the environment it ran in, and say where it went."""
    from freeret.atomic_files import write_json
    from freeret.eval.results import environment

    write_json(out, {**payload, "environment": environment()})
    print(f"wrote {out}")


def bar_chart(out: Path, labels: list[str], series: dict[str, list[float]], ylabel: str, title: str,
              hline: float | None = None) -> None:
    """Grouped bar chart saved as PNG beside the JSON (one colour per series)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(series)
    for j, (name, values) in enumerate(series.items()):
        ax.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))], values, width, label=name)
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print(f"wrote {out.with_suffix('.png')}")
