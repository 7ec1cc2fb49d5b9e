"""Checks that need the tokenizer but not the weights: framing options, text length budget.

The runner calls these after the checkpoint's config is read and before any weights load,
so a bad framing or an over-long item is known within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freeret.backbone.families import IMAGE, Family, get_family
from freeret.backbone.loading import _load_kwargs
from freeret.backbone.spec import ModelSpec
from freeret.data.retrieval_set import Item
from freeret.embed.priors import Prior
from freeret.errors import CheckpointNotFoundError
from freeret.rerank.framing import Framing
from freeret.rerank.options import resolve_option_ids

IMAGE_SHARE = 4  # items with an image keep 1/IMAGE_SHARE of the context free for image tokens


@dataclass
class TextSide:
    """A family's processor and tokenizer, loaded without the model."""

    spec: ModelSpec
    family: Family
    processor: Any
    tokenizer: Any

    def render(self, parts: list[Any]) -> str:
        """A full prompt, exactly as the backbone renders it."""
        return self.family.render(self.processor, parts, self.spec.chat_template, self.spec.system_prompt)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` alone (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def cut_tokens(self, text: str, n: int) -> str:
        """The first ``n`` tokens of ``text``, decoded back to a string."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
        return self.tokenizer.decode(ids)


def load_text_side(spec: ModelSpec, checkpoint: tuple[str, str | None]) -> TextSide:
    """Load only the processor/tokenizer of ``spec`` (seconds, no weights)."""
    family = get_family(spec.family)
    where, revision = checkpoint
    try:
        processor, tokenizer = family.load_processor(
            where, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels, **_load_kwargs(spec, revision)
        )
    except OSError as exc:
        raise CheckpointNotFoundError(f"could not load the tokenizer of {spec.name} from {where}: {str(exc).splitlines()[0]}") from exc
    return TextSide(spec, family, processor, tokenizer)


def check_framing(side: TextSide, framing: Framing) -> list[int]:
    """The framing's option ids in the probe prompt the scorer uses; ConfigError if not single distinct tokens."""
    head, middle, tail = framing.split()
    query, cand = Item.make("query", "q", None), Item.make("target", "c", None)
    probe = side.render([head, query.text, middle, cand.text, tail]) + framing.answer_prefix
    return resolve_option_ids(side.tokenizer, probe, framing.options, f"framing '{framing.name}'")


def context_length(spec: ModelSpec, checkpoint: tuple[str, str | None], side: TextSide) -> int:
    """Positions the language model takes: its config's ``max_position_embeddings`` (tokenizer limit if lower)."""
    from transformers import AutoConfig

    where, revision = checkpoint
    config = AutoConfig.from_pretrained(where, **_load_kwargs(spec, revision)).get_text_config()
    n = int(getattr(config, "max_position_embeddings", 0) or 0) or 1 << 30
    tok = int(getattr(side.tokenizer, "model_max_length", 0) or 0)
    return min(n, tok) if 0 < tok < 1 << 30 else n


def text_budget(side: TextSide, prior: Prior, context: int, with_images: bool) -> int:
    """Most item-text tokens that fit: the context minus the longest empty prompt (and an image share)."""
    overhead = 0
    for role in ("query", "target"):
        for has_image in (False, True) if with_images and side.family.multimodal else (False,):
            text = prior.render(role, "", has_image)
            prompt = side.render([IMAGE, text] if has_image else [text])
            overhead = max(overhead, side.count_tokens(prompt))
    reserve = context // IMAGE_SHARE if with_images else 0
    return max(1, context - overhead - reserve - 8)

