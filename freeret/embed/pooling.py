"""Which positions of the prompt a vector is pooled from (``conf/pooling``), and which sub-layer points are averaged.

- ``last`` (FreeRet, default): the state at the prompt's last token, which would predict the one-word answer.
- ``last_k``: the mean of the states at the last ``k`` real tokens.
- ``mean``: the mean over the item's own content tokens (its text and its image tokens), not the template's.
  ``occurrence: last`` takes the item text's LAST occurrence in the prompt (echo embeddings, Springer et al. 2024,
  arXiv 2402.15449: a prior that writes the item twice, pooled over the second copy, whose tokens have each seen the
  whole item); ``first`` (default) the first. Image tokens (placed once, by the chat template) stay in the mask.

Weights are (batch, seq) rows over a left-padded batch that sum to 1; the item's content positions come from the
collator (:func:`content_span`), counted from the prompt's end so that they hold after a processor expands the
image tokens before the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from freeret.errors import ConfigError, known_keys

POOLINGS = ("last", "last_k", "mean")
OCCURRENCES = ("first", "last")  # mean: which occurrence of the item's text in the prompt is pooled


@dataclass(frozen=True)
class PoolingSpec:
    """One ``conf/pooling`` entry."""

    name: str = "last"
    k: int = 4  # last_k: how many final tokens
    occurrence: str = "first"  # mean: the item text's first or last occurrence in the prompt (last: echo)

    def __post_init__(self) -> None:
        if self.name not in POOLINGS:
            raise ConfigError(f"pooling.name={self.name!r} is not one of {', '.join(POOLINGS)}")
        if int(self.k) < 1:
            raise ConfigError(f"pooling.k={self.k} must be >= 1")
        if self.occurrence not in OCCURRENCES:
            raise ConfigError(f"pooling.occurrence={self.occurrence!r} is not one of {', '.join(OCCURRENCES)}")
        if self.occurrence != "first" and self.name != "mean":
            raise ConfigError(f"pooling.occurrence={self.occurrence} applies to pooling=mean only, not "
                              f"pooling={self.name}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> PoolingSpec:
        """Build from a ``conf/pooling`` mapping (None = last), refusing unknown keys."""
        cfg = known_keys(cfg, cls, "pooling")
        return cls(**cfg)

    @property
    def needs_content(self) -> bool:
        """Whether the collator must mark each item's content tokens."""
        return self.name == "mean"

    @property
    def label(self) -> str:
        """Short name for results and tables (the occurrence only when it is not the default first)."""
        if self.name == "last_k":
            return f"last_k(k={self.k})"
        return f"mean(occurrence={self.occurrence})" if self.occurrence != "first" else self.name

    def describe(self) -> dict[str, Any]:
        """What results and the vector signature record: a default occurrence is left out, so settings from before
        the key existed keep their signature."""
        return {"name": self.name, "label": self.label, **({"k": int(self.k)} if self.name == "last_k" else {}),
                **({"occurrence": self.occurrence} if self.occurrence != "first" else {})}

    def weights(self, mask: torch.Tensor, content: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, seq) fp32 pooling weights, each row summing to 1, for a left-padded ``mask``."""
        if self.name == "last":
            w = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            w[:, -1] = 1.0
            return w
        if self.name == "last_k":
            cols = torch.arange(mask.shape[1], device=mask.device)
            picked = (cols >= mask.shape[1] - int(self.k)) & mask.bool()
        else:
            if content is None:
                raise ValueError("pooling=mean needs each item's content mask")
            picked = content.to(mask.device).bool() & mask.bool()
            if not bool(picked.any(1).all()):
                raise ValueError("pooling=mean: an item has no content token in its prompt")
        w = picked.float()
        return w / w.sum(1, keepdim=True)


def content_span(tokenizer: Any, prompt: str, start: int, end: int) -> tuple[int, int]:
    """Token positions of characters ``[start, end)`` of ``prompt``, as (first, last + 1) counted from the END of its
    tokenisation (negative; (0, 0) for an empty span). Needs a fast tokenizer (offsets)."""
    if end <= start:
        return 0, 0
    try:
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise ConfigError("pooling=mean needs a fast tokenizer (character offsets)") from exc
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    n = len(enc["input_ids"])
    return inside[0] - n, inside[-1] + 1 - n


def content_mask(ids: torch.Tensor, spans: Sequence[tuple[int, int]], image_token_id: int | None = None) -> torch.Tensor:
    """(batch, seq) bool: each row's text span (counted from the end) and its image tokens."""
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    width = ids.shape[1]
    for row, (a, b) in enumerate(spans):
        if b > a:
            mask[row, width + a : width + b] = True
    if image_token_id is not None:
        mask |= ids == image_token_id
    return mask


def image_token_id(processor: Any) -> int | None:
    """The id of the token a VLM processor repeats for each image patch (None for a text model)."""
    token_id = getattr(processor, "image_token_id", None)
    if token_id is not None:
        return int(token_id)
    token = getattr(processor, "image_token", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if token is None or tokenizer is None:
        return None
    return int(tokenizer.convert_tokens_to_ids(token))
