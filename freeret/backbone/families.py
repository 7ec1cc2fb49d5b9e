"""Model-family adapters: how each family loads, renders its chat prompt and batches inputs.

A family's quirks live here and nowhere else. Add one with ``@register_family("name")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from freeret.errors import ConfigError

FAMILIES: dict[str, "Family"] = {}


class _ImageSlot:
    """Marks where an image goes among a prompt's text parts."""

    def __repr__(self) -> str:
        return "IMAGE"


IMAGE = _ImageSlot()


def register_family(name: str) -> Callable[[type["Family"]], type["Family"]]:
    """Class decorator that registers a family adapter under ``name``."""

    def wrap(cls: type[Family]) -> type[Family]:
        FAMILIES[name] = cls(name)
        return cls

    return wrap


def get_family(name: str) -> "Family":
    """The adapter for ``name``, or a ConfigError listing the known families."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


class Family:
    """Base adapter: a text-only causal LM (Llama, Qwen2, Gemma3, ...)."""

    multimodal = False
    image_count_dependent = False  # vision features change with the number of images in a prompt

    def __init__(self, name: str) -> None:
        self.name = name

    def model_class(self):
        """The transformers auto class that loads this family."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def load_processor(self, path: str | Path, **kwargs: Any) -> tuple[Any, Any]:
        """(processor, tokenizer); for text models both are the tokenizer, left-padded."""
        from transformers import AutoTokenizer

        for key in ("min_pixels", "max_pixels", "image_processor"):
            kwargs.pop(key, None)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, tokenizer

    def render(self, processor: Any, parts: Sequence[str | _ImageSlot], chat: bool, system: str | None) -> str:
        """The full prompt for one user turn; ``parts`` are texts and ``IMAGE`` slots, in order.

        The embedding is read at the prompt's last token; a reranker appends its answer cue.
        """
        n_images = sum(p is IMAGE for p in parts)
        if n_images and not self.multimodal:
            raise ConfigError(f"model family {self.name!r} is text-only but an item has an image")
        if not chat or getattr(processor, "chat_template", None) is None:
            if n_images:
                raise ConfigError(f"model family {self.name!r} needs its chat template to place images")
            return "".join(p for p in parts if p is not IMAGE)
        content: Any = "".join(p for p in parts if p is not IMAGE)
        if self.multimodal:
            content = [{"type": "image"} if p is IMAGE else {"type": "text", "text": p} for p in parts if p is IMAGE or p]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def inputs(self, processor: Any, prompts: list[str], images: list[list[Image.Image]] | None) -> dict[str, torch.Tensor]:
        """Tokenised, left-padded batch; positions follow the real tokens (cumsum of the mask)."""
        enc = processor(prompts, padding=True, return_tensors="pt", add_special_tokens=not _has_bos(processor, prompts))
        batch = dict(enc)
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return batch


def _has_bos(tokenizer: Any, prompts: list[str]) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and all(p.startswith(bos) for p in prompts)


@register_family("text")
class TextFamily(Family):
    """Generic text causal LM."""


class VisionFamily(Family):
    """Vision-language models loaded with AutoModelForImageTextToText (no remote code)."""

    multimodal = True

    def model_class(self):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def load_processor(self, path: str | Path, **kwargs: Any) -> tuple[Any, Any]:
        from freeret.backbone.processors import load_processor

        kwargs.pop("trust_remote_code", None)
        processor = load_processor(self.name, path, **kwargs)
        return processor, processor.tokenizer

    def inputs(self, processor: Any, prompts: list[str], images: list[list[Image.Image]] | None) -> dict[str, torch.Tensor]:
        from freeret.backbone.processors import processor_inputs

        return dict(processor_inputs(self.name, processor, prompts, images))


# These families differ only in their processors, whose quirks live in processors.py.
for _name in ("qwen2_vl", "qwen2_5_vl", "idefics3", "llava_onevision", "internvl"):
    FAMILIES[_name] = VisionFamily(_name)
FAMILIES["llava_onevision"].image_count_dependent = True  # any-resolution tiles only for single-image prompts
