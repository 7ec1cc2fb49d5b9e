"""Read residual-stream points of a decoder with hooks, and stop the forward early.

The hooks are armed only inside :func:`capture`, so unrelated forwards are untouched.
Once every requested point is read, a private exception aborts the forward: nothing
after the deepest point (final MLP, final norm, LM head) is computed.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from freeret.embed.layers import LayerSpec


class _StopForward(Exception):
    """Raised by a hook once all requested points are captured."""


def attn_point_module(layer: nn.Module) -> nn.Module:
    """The module whose INPUT is h^Attn (residual + attention output) in this layer.

    Llama/Qwen-style layers feed it to ``post_attention_layernorm``; Gemma-style layers
    normalise the attention output before the residual add, so the same point is the
    input of ``pre_feedforward_layernorm``.
    """
    for name in ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2"):
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"cannot find the post-attention point in {type(layer).__name__}")


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    """(decoder, its layers, its final norm) for any causal LM or VLM in transformers."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for attr in ("language_model", "text_model"):
        inner = getattr(decoder, attr, None)
        if inner is not None and hasattr(inner, "layers"):
            decoder = inner
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if not isinstance(layers, nn.ModuleList) or norm is None:
        raise TypeError(f"cannot find decoder layers and final norm in {type(model).__name__}")
    return decoder, layers, norm


@contextmanager
def capture(
    layers: nn.ModuleList, norm: nn.Module, specs: Sequence[LayerSpec], stop: bool = True
) -> Iterator[dict[LayerSpec, torch.Tensor]]:
    """Arm hooks that store each point's (batch, seq, hidden) tensor into the yielded dict.

    Run the forward inside the ``with`` block wrapped in :func:`run_until_captured`.
    """
    n = len(layers)
    out: dict[LayerSpec, torch.Tensor] = {}
    wanted = set(specs)
    handles = []

    def store(spec: LayerSpec, tensor: torch.Tensor) -> None:
        out[spec] = tensor
        if stop and wanted.issubset(out):
            raise _StopForward

    for spec in specs:
        idx = spec.resolve(n)
        if spec.point == "attn":
            handles.append(
                attn_point_module(layers[idx]).register_forward_pre_hook(
                    lambda _m, args, spec=spec: store(spec, args[0])
                )
            )
        elif spec.point == "mlp":
            handles.append(
                layers[idx].register_forward_hook(
                    lambda _m, _a, output, spec=spec: store(spec, output[0] if isinstance(output, tuple) else output)
                )
            )
        else:
            handles.append(norm.register_forward_hook(lambda _m, _a, output, spec=spec: store(spec, output)))
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def run_until_captured(forward, *args, **kwargs):
    """Call ``forward``; return its output, or None if a capture hook stopped it early."""
    try:
        return forward(*args, **kwargs)
    except _StopForward:
        return None
