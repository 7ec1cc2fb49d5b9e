"""Every residual-stream point of a decoder at the pooled (last) token, captured in one forward per batch.

Points in forward order: ``emb`` (the input of layer 0), then for each layer i ``attn_i`` (after the
attention sub-layer and its residual add, h^Attn_i) and ``mlp_i`` (the layer output, h^MLP_i). The
forward runs to the end so that the model's own next-token prediction is read from its output logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from freeret.backbone.backbone import Backbone
from freeret.backbone.capture import run_until_captured
from freeret.data.datamodule import PromptCollator, plan_batches
from freeret.data.retrieval_set import Item
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior


def point_specs(num_layers: int) -> list[tuple[str, LayerSpec]]:
    """(label, spec) for attn_i and mlp_i of every layer, in forward order."""
    return [(f"{p}_{i}", LayerSpec(point=p, index=i)) for i in range(num_layers) for p in ("attn", "mlp")]


def point_labels(num_layers: int) -> list[str]:
    """``emb`` then attn_i / mlp_i for every layer."""
    return ["emb"] + [label for label, _ in point_specs(num_layers)]


def short_label(label: str, num_layers: int) -> str:
    """attn_{L-1} -> attn_last, mlp_{L-2} -> mlp_last-1: the names the paper's figures use."""
    if label == "emb":
        return label
    point, idx = label.split("_")
    back = num_layers - 1 - int(idx)
    return f"{point}_last" if back == 0 else f"{point}_last-{back}" if back < 5 else label


@dataclass
class Sweep:
    """States (points, items, hidden) in fp32 at the last token, and the model's predicted next token per item."""

    labels: list[str]
    states: torch.Tensor
    next_token: torch.Tensor
    keys: list[str]

    def index(self, label: str) -> int:
        """Position of a point label in ``labels``."""
        return self.labels.index(label)


@torch.no_grad()
def sweep_batch(backbone: Backbone, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, batch, hidden) last-token states and (batch,) argmax next tokens for one left-padded batch."""
    if not bool(inputs["attention_mask"][:, -1].all()):
        raise ValueError("last-token pooling needs left padding: the last position of a row is padding")
    inputs = {k: v.to(backbone.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    specs = [spec for _, spec in point_specs(backbone.num_layers)]
    emb: dict[str, torch.Tensor] = {}
    handle = backbone.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: emb.__setitem__("x", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    try:
        with backbone.capture(specs, stop=False) as captured:
            out = run_until_captured(backbone.model, **inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    states = [emb["x"][:, -1]] + [captured[spec][:, -1] for spec in specs]
    return torch.stack(states).float().cpu(), out.logits[:, -1].argmax(-1).cpu()


def sweep_items(backbone: Backbone, items: Sequence[Item], prior: Prior, batch_size: int = 16) -> Sweep:
    """Sweep every item (rendered with ``prior``, bound to its dataset) in homogeneous, length-sorted batches; rows
    follow ``items``."""
    collate = PromptCollator(backbone, prior)
    n_points = 1 + 2 * backbone.num_layers
    states: torch.Tensor | None = None
    next_token = torch.empty(len(items), dtype=torch.long)
    for batch in plan_batches(items, batch_size):
        enc = collate([items[i] for i in batch])
        got, nxt = sweep_batch(backbone, enc["inputs"])
        if states is None:
            states = torch.empty(n_points, len(items), got.shape[-1])
        states[:, batch] = got
        next_token[batch] = nxt
    assert states is not None, "no items to sweep"
    return Sweep(point_labels(backbone.num_layers), states, next_token, [it.key for it in items])
