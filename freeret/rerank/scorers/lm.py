"""Running the model for scorers: inputs with images, the LM head, and log-probabilities of given tokens.

- :func:`model_inputs`: a batch of rendered prompts with their visuals, on the model's device (cached vision
  features when the scorer has a vision cache, else each prompt decodes and processes its own images).
- :func:`continuation_logprobs`: one forward of left-padded rows that all end with the same scored tokens, and the
  log-probability of each of those tokens given everything before it (LM head and log-softmax there only).
- :func:`run_prefix`, then :func:`suffix_logprobs` / :func:`suffix_last_logits`: one prompt run once into a KV
  cache, then many suffixes right-padded after it, read at every suffix token (candidate likelihood), at the last
  few (query likelihood) or at the last one (listwise): thin wrappers over the one shared-prefix routine,
  :class:`~freeret.backbone.shared_prefix.SharedPrefix`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from freeret.backbone.backbone import Backbone
from freeret.backbone.shared_prefix import Prefix, SharedPrefix, padded
from freeret.backbone.vision_cache import VisionFeatureCache
from freeret.data.visual import load_visual

TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")
_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its SharedPrefix


def shared_prefix(bb: Backbone) -> SharedPrefix:
    """The model's shared-prefix runner (:mod:`freeret.backbone.shared_prefix`), one per model."""
    runner = _RUNNERS.get(bb.model)
    if runner is None:
        runner = _RUNNERS[bb.model] = SharedPrefix(bb.model, bb.family)
    return runner


def base_model(bb: Backbone) -> torch.nn.Module:
    """The model without its LM head: states after the final norm (vision tower included for VLMs)."""
    return shared_prefix(bb).base


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


def prompt_ids(bb: Backbone, prompt: str) -> list[int]:
    """A text prompt's token ids as a forward of it alone takes them (special tokens as the model's inputs add them):
    a packed segment (``freeret/rerank/packing.py``) runs exactly the tokens the per-query path runs."""
    return bb.inputs([prompt])["input_ids"][0].tolist()


def head_logits(bb: Backbone, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 LM-head logits of final-norm states, for vocabulary ``rows`` only (all when None), with the head's bias
    and the model's final soft-capping (on the head's device)."""
    return shared_prefix(bb).head_logits(hidden, rows)


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


@torch.no_grad()
def run_prefix(bb: Backbone, inputs: dict[str, Any]) -> Prefix:
    """Run one prefix row (images allowed) into a KV cache, through the final norm."""
    return shared_prefix(bb).run_prefix(inputs)


@torch.no_grad()
def suffix_logprobs(bb: Backbone, prefix: Prefix, conts: Sequence[Sequence[int]], batch_size: int,
                    scored: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Per suffix, the log-probabilities (fp32, host) of its tokens after ``prefix`` and its own earlier tokens: all
    of them, or its last ``scored[i]`` only; the LM head runs at the scored tokens only."""
    runner = shared_prefix(bb)
    results: list[torch.Tensor] = []
    for start in range(0, len(conts), batch_size):
        chunk = conts[start : start + batch_size]
        keep = [len(c) if scored is None else scored[start + i] for i, c in enumerate(chunk)]
        results.extend(runner.rows_logprobs(prefix, chunk, keep))
    return results


@torch.no_grad()
def suffix_last_logits(bb: Backbone, prefix: Prefix, suffixes: Sequence[Sequence[int]], rows: torch.Tensor,
                       batch_size: int) -> torch.Tensor:
    """(suffixes, rows) fp32 host logits at each suffix's last token after ``prefix``, vocabulary ``rows`` only."""
    runner = shared_prefix(bb)
    out = []
    for start in range(0, len(suffixes), batch_size):
        ids, mask = padded(suffixes[start : start + batch_size])
        out.append(runner.last_logits(prefix, ids, mask, rows).to("cpu", torch.float32))
    return torch.cat(out)
