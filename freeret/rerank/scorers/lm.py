"""Running the model for scorers: inputs with images, the LM head, and log-probabilities of given tokens.

- :func:`model_inputs`: a batch of rendered prompts with their visuals, on the model's device (cached vision
  features when the scorer has a vision cache, else each prompt decodes and processes its own images).
- :func:`continuation_logprobs`: one forward of left-padded rows that all end with the same scored tokens, and the
  log-probability of each of those tokens given everything before it (LM head and log-softmax there only).
- :func:`run_prefix`, then :func:`suffix_logprobs` / :func:`suffix_last_logits`: one prompt run once into a KV
  cache, then many suffixes right-padded after it, read at every suffix token (candidate likelihood) or at the last
  one (listwise).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from freeret.backbone.backbone import Backbone
from freeret.backbone.vision_cache import VisionFeatureCache
from freeret.data.visual import load_visual

TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")


def base_model(bb: Backbone) -> torch.nn.Module:
    """The model without its LM head: states after the final norm (vision tower included for VLMs)."""
    return bb.model.get_decoder() if not bb.family.multimodal else bb.model.model


def model_inputs(bb: Backbone, vision: VisionFeatureCache | None, prompts: list[str],
                 paths: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Left-padded inputs on the model's device for ``prompts`` whose visuals are ``paths`` (per prompt, in order).

    With ``vision``, each image is decoded and processed once per run and its features come from the cache;
    without it (the reference), every prompt decodes and processes its own."""
    if vision is not None and any(paths):
        inputs = vision.inputs(prompts, paths)
    else:
        images = [[im for p in row for im in load_visual(p)] for row in paths]
        inputs = bb.inputs(prompts, images if any(images) else None)
    return {k: v.to(bb.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def head_logits(bb: Backbone, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 LM-head logits of final-norm states, for vocabulary ``rows`` only (all when None), with the head's bias
    and the model's final soft-capping."""
    head = bb.model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    hidden = hidden.to(weight.device).float()
    if rows is not None:
        rows = rows.to(weight.device)
        weight, bias = weight[rows], (bias[rows] if bias is not None else None)
    logits = hidden @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    softcap = getattr(bb.model.config.get_text_config(), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def append_tokens(inputs: dict[str, Any], ids: Sequence[int]) -> dict[str, Any]:
    """``inputs`` (left-padded rows) with the same token ``ids`` appended to every row (mask, positions and token
    types extended to match)."""
    n = inputs["input_ids"].shape[0]
    device = inputs["input_ids"].device
    extra = torch.tensor(list(ids), dtype=inputs["input_ids"].dtype, device=device).expand(n, -1)
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    if isinstance(inputs.get("position_ids"), torch.Tensor) and inputs["position_ids"].dim() == 2:
        after = inputs["position_ids"][:, -1:] + torch.arange(1, len(ids) + 1, device=device)
        out["position_ids"] = torch.cat([inputs["position_ids"], after], dim=1)
    for key in TOKEN_TYPE_KEYS:
        if isinstance(inputs.get(key), torch.Tensor):
            out[key] = torch.cat([inputs[key], torch.zeros_like(extra, dtype=inputs[key].dtype)], dim=1)
    return out


@torch.no_grad()
def continuation_logprobs(bb: Backbone, inputs: dict[str, Any], n: int) -> torch.Tensor:
    """(rows, n) fp32 log P(token | everything before it) for the last ``n`` tokens of every row (left-padded rows
    that all end with the scored tokens); the LM head runs at those positions only. On the model's device."""
    hidden = base_model(bb)(**inputs, use_cache=False).last_hidden_state[:, -n - 1 : -1]
    logits = head_logits(bb, hidden)
    ids = inputs["input_ids"][:, -n:].to(logits.device)
    return logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]


@dataclass
class PrefixState:
    """A prompt prefix run once: its KV cache (copied per suffix batch, never written), its length, its last state
    (which predicts the first suffix token) and whether an image shifted the positions after it (M-RoPE)."""

    cache: Any
    length: int
    last: torch.Tensor
    rope_deltas: torch.Tensor | None


@torch.no_grad()
def run_prefix(bb: Backbone, inputs: dict[str, Any]) -> PrefixState:
    """Run one prefix row (images allowed) into a KV cache."""
    base = base_model(bb)
    inputs = {k: v for k, v in inputs.items() if k != "position_ids"}
    out = base(**inputs, use_cache=True)
    has_image = any(k not in ("input_ids", "attention_mask", *TOKEN_TYPE_KEYS) for k in inputs)
    deltas = getattr(base, "rope_deltas", None) if has_image else None  # M-RoPE (Qwen-VL): text after an image shifts
    return PrefixState(out.past_key_values, int(inputs["input_ids"].shape[1]), out.last_hidden_state[:, -1:], deltas)


def _suffix_batches(bb: Backbone, prefix: PrefixState, suffixes: Sequence[Sequence[int]],
                    batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``suffixes`` (token ids) right-padded in batches after ``prefix`` with explicit positions; yields (ids, mask,
    final-norm states) per batch."""
    base = base_model(bb)
    device = prefix.last.device
    for start in range(0, len(suffixes), batch_size):
        chunk = suffixes[start : start + batch_size]
        n, width = len(chunk), max(len(c) for c in chunk)
        ids = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        for i, c in enumerate(chunk):
            ids[i, : len(c)] = torch.tensor(list(c))
            mask[i, : len(c)] = 1
        ids, mask = ids.to(device), mask.to(device)
        batch_cache = copy.deepcopy(prefix.cache)
        batch_cache.batch_repeat_interleave(n)
        positions = torch.arange(prefix.length, prefix.length + width, device=device).expand(n, width)
        if prefix.rope_deltas is not None:
            positions = (positions + prefix.rope_deltas.to(device)).unsqueeze(0).expand(3, n, width)
        hidden = base(input_ids=ids, attention_mask=torch.cat([mask.new_ones(n, prefix.length), mask], dim=1),
                      position_ids=positions, past_key_values=batch_cache, use_cache=True).last_hidden_state
        yield ids, mask, hidden


@torch.no_grad()
def suffix_logprobs(bb: Backbone, prefix: PrefixState, conts: Sequence[Sequence[int]], batch_size: int,
                    scored: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Per suffix, the log-probabilities (fp32, host) of its tokens after ``prefix`` and its own earlier tokens: all
    of them, or its last ``scored[i]`` only; the LM head runs at the scored tokens only."""
    results: list[torch.Tensor] = []
    for start, (ids, mask, hidden) in zip(range(0, len(conts), batch_size), _suffix_batches(bb, prefix, conts, batch_size)):
        before = torch.cat([prefix.last.expand(len(ids), 1, -1), hidden[:, :-1]], dim=1)  # predicts each token
        lengths = mask.sum(1)
        picked = mask.bool()
        if scored is not None:  # only the last n real tokens of each row
            n = torch.tensor(list(scored[start : start + len(ids)]), device=mask.device)
            cols = torch.arange(mask.shape[1], device=mask.device)
            picked = picked & (cols[None] >= (lengths - n)[:, None])
        logits = head_logits(bb, before[picked])
        got = logits.log_softmax(-1).gather(-1, ids[picked][:, None].to(logits.device))[:, 0]
        results.extend(torch.split(got.to("cpu", torch.float32), picked.sum(1).tolist()))
    return results


@torch.no_grad()
def suffix_last_logits(bb: Backbone, prefix: PrefixState, suffixes: Sequence[Sequence[int]], rows: torch.Tensor,
                       batch_size: int) -> torch.Tensor:
    """(suffixes, rows) fp32 host logits at each suffix's last token after ``prefix``, vocabulary ``rows`` only."""
    out = []
    for _, mask, hidden in _suffix_batches(bb, prefix, suffixes, batch_size):
        last = hidden[torch.arange(len(mask), device=hidden.device), mask.sum(1).to(hidden.device) - 1]
        out.append(head_logits(bb, last, rows).to("cpu", torch.float32))
    return torch.cat(out)
