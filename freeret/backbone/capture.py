"""Read residual-stream points of a decoder with hooks, and stop the forward early.

The hooks are armed only inside :func:`capture`, so unrelated forwards are untouched.
Once every requested point is read, a private exception aborts the forward: nothing
after the deepest point (final MLP, final norm, LM head) is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# The default rule of attention points (families.py owns it; a family may override it).
from freeret.backbone.families import attn_point as attn_point_module
from freeret.embed.layers import LayerSpec


class _StopForward(Exception):
    """Raised by a hook once all requested points are captured."""


@contextmanager
def capture(
    layers: nn.ModuleList, norm: nn.Module, specs: Sequence[LayerSpec], stop: bool = True,
    attn_point: Callable[[nn.Module], nn.Module] | None = None,
) -> Iterator[dict[LayerSpec, torch.Tensor]]:
    """Arm hooks that store each point's (batch, seq, hidden) tensor into the yielded dict.

    Run the forward inside the ``with`` block wrapped in :func:`run_until_captured`. ``attn_point`` maps a layer to
    the module whose input is h^Attn (the family's rule, :meth:`Family.attn_point`; default: the generic rule).
    """
    attn_point = attn_point or attn_point_module
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
                attn_point(layers[idx]).register_forward_pre_hook(
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


@contextmanager
def token_prepending(layers: nn.ModuleList, start: int, end: int, slots: torch.Tensor) -> Iterator[None]:
    """Token prepending (:mod:`freeret.embed.prepend`): at the input of layers ``[start, end)``, each row's slot
    position gets the row's last-position state (a left-padded batch: the last position is every row's last token).

    ``slots``: (batch,) slot positions counted from the END (negative). The hook writes a clone on the states' own
    device; the states arrive positionally or as the ``hidden_states`` keyword (both handled).
    """

    def overwrite(_module: nn.Module, args: tuple, kwargs: dict):
        positional = bool(args)
        hidden = args[0] if positional else kwargs["hidden_states"]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        where = slots.to(hidden.device) + hidden.shape[1]
        hidden, last = hidden.clone(), hidden[:, -1]
        hidden[rows, where] = last
        if positional:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handles = [layers[i].register_forward_pre_hook(overwrite, with_kwargs=True) for i in range(start, end)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
