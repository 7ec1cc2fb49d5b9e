"""Model-family adapters: how each family loads, renders its chat prompt, batches inputs, and where its parts are.

A family's quirks live here and nowhere else: the model class, the processor recipe, where the decoder, the base
model and the vision encoder sit inside a loaded model, which module's input is the attention point, and the
position rule for text that follows a cached prefix (M-RoPE after an image). ``FAMILIES`` is the one registry of
families; a vision family hands its :class:`~freeret.backbone.recipe.ProcessorRecipe` to ``processors.py`` (which
imports nothing from here), and the toy models (``freeret/toy/models.py``) take their family list from here. Add a
family with :func:`register_family`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from freeret.backbone.recipe import ProcessorRecipe
from freeret.errors import ConfigError
from freeret.registry import Registry

FAMILIES: Registry[Family] = Registry("model.family", message="unknown model family {name!r}; known: {known}")
"""Every model family by name (``model.family``), filled by :func:`register_family` below."""


class _ImageSlot:
    """Marks where an image goes among a prompt's text parts."""

    def __repr__(self) -> str:
        return "IMAGE"


IMAGE = _ImageSlot()

# The module whose INPUT is h^Attn (residual + attention output) in a decoder layer, by layer layout, first match wins.
# Gemma 2/3 normalise the attention output before the residual add (``post_attention_layernorm`` is that norm), so
# their point is the input of ``pre_feedforward_layernorm``; Llama, Qwen2, Mistral (every family here): the input of
# ``post_attention_layernorm``; GPT-2 style: ``ln_2``.
ATTN_POINT_MODULES = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")


def attn_point(layer: nn.Module) -> nn.Module:
    """The module whose input is h^Attn in ``layer`` (see ``ATTN_POINT_MODULES``)."""
    for name in ATTN_POINT_MODULES:
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"cannot find the post-attention point in {type(layer).__name__}")


@dataclass(frozen=True)
class PrefixPositions:
    """Where a one-row prefix sits in position space: the ids to run it with (None: the model's default 0..P-1),
    the first position after it, and how many position axes the text after it takes (3 for M-RoPE after an image)."""

    prefix_ids: torch.Tensor | None
    next: int
    axes: int = 1

    def suffix(self, n: int, width: int, device: torch.device) -> torch.Tensor:
        """Explicit positions of ``n`` right-padded suffixes of ``width`` tokens: (n, width) or (axes, n, width)."""
        positions = torch.arange(self.next, self.next + width, device=device).expand(n, width)
        return positions if self.axes == 1 else positions.unsqueeze(0).expand(self.axes, n, width)


def register_family(family: Family) -> Family:
    """Add ``family`` to ``FAMILIES`` under its name (``model.family=<name>``)."""
    FAMILIES.add(family.name, family)
    return family


def get_family(name: str) -> Family:
    """The adapter for ``name``, or an UnknownNameError listing the known families."""
    return FAMILIES[name]


def vision_families() -> tuple[str, ...]:
    """Names of the vision-language families, in registration order."""
    return tuple(name for name, family in FAMILIES.items() if family.multimodal)


def processor_recipes() -> dict[str, ProcessorRecipe]:
    """Each vision family's processor recipe, in registration order."""
    return {name: family.processor for name, family in FAMILIES.items() if family.processor is not None}


def family_of(model: nn.Module) -> Family:
    """The adapter for a loaded model, by its config's ``model_type`` (a text LM when no vision family claims it)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for _, family in FAMILIES.items():
        if family.model_type is not None and family.model_type == model_type:
            return family
    return FAMILIES["text"]


class Family:
    """Base adapter: a text-only causal LM (Llama, Qwen2, Gemma3, ...)."""

    multimodal = False
    image_count_dependent = False  # vision features change with the number of images in a prompt
    model_type: str | None = None  # the config.model_type of the models this adapter serves (None: any text LM)
    processor: ProcessorRecipe | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    # -- loading -----------------------------------------------------------------------------------
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

    # -- prompts -----------------------------------------------------------------------------------
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

    # -- where things are in a loaded model ----------------------------------------------------------
    def decoder_parts(self, model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
        """(text decoder, its layers, its final norm)."""
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

    def base_model(self, model: nn.Module) -> nn.Module:
        """The module that takes the model's whole inputs (images included) and returns ``last_hidden_state``
        after the final norm, without the LM head."""
        return model.get_decoder()

    def image_encoder(self, model: nn.Module) -> Callable[..., Any]:
        """The vision tower plus projector: processed pixels -> the features the decoder receives."""
        raise ConfigError(f"model family {self.name!r} is text-only: it has no image encoder")

    def attn_point(self, layer: nn.Module) -> nn.Module:
        """The module whose input is h^Attn in ``layer``."""
        return attn_point(layer)

    def prefix_positions(self, base: nn.Module, inputs: Mapping[str, Any]) -> PrefixPositions:
        """The position rule of a one-row prefix (``inputs`` as the base model takes them): plain 0..P-1."""
        return PrefixPositions(None, int(inputs["input_ids"].shape[1]))


def _has_bos(tokenizer: Any, prompts: list[str]) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and all(p.startswith(bos) for p in prompts)


class VisionFamily(Family):
    """Vision-language models loaded with AutoModelForImageTextToText (no remote code)."""

    multimodal = True

    def __init__(self, name: str, processor: ProcessorRecipe, image_count_dependent: bool = False) -> None:
        super().__init__(name)
        self.model_type = name
        self.processor = processor
        self.image_count_dependent = image_count_dependent

    def model_class(self):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def load_processor(self, path: str | Path, **kwargs: Any) -> tuple[Any, Any]:
        from freeret.backbone.processors import load_processor

        kwargs.pop("trust_remote_code", None)
        processor = load_processor(self.processor, path, **kwargs)
        return processor, processor.tokenizer

    def inputs(self, processor: Any, prompts: list[str], images: list[list[Image.Image]] | None) -> dict[str, torch.Tensor]:
        from freeret.backbone.processors import processor_inputs

        return dict(processor_inputs(self.processor, processor, prompts, images))

    def base_model(self, model: nn.Module) -> nn.Module:
        return model.model  # the *Model under *ForConditionalGeneration: merges image features into the embeddings

    def image_encoder(self, model: nn.Module) -> Callable[..., Any]:
        return model.model.get_image_features


class QwenVLFamily(VisionFamily):
    """Qwen2-VL and Qwen2.5-VL: multimodal RoPE (M-RoPE). After an image, text positions are shifted by the image's
    grid (a "rope delta") and run on three position axes, so text after a cached image prefix needs them explicit."""

    def prefix_positions(self, base: nn.Module, inputs: Mapping[str, Any]) -> PrefixPositions:
        if inputs.get("image_grid_thw") is None:
            return super().prefix_positions(base, inputs)
        wanted = inspect.signature(base.get_rope_index).parameters
        positions, _ = base.get_rope_index(**{k: v for k, v in inputs.items() if k in wanted and k != "kwargs"})
        return PrefixPositions(positions, int(positions.max()) + 1, axes=positions.shape[0])


_PIL = "transformers:{}"
_TV = "transformers.models.{0}.image_processing_{0}:{1}"
_OURS = "freeret.backbone.processors:{}"

register_family(Family("text"))
register_family(QwenVLFamily("qwen2_vl", ProcessorRecipe(
    _OURS.format("Qwen2VLImageOnlyProcessor"), _PIL.format("Qwen2VLImageProcessorPil"),
    _TV.format("qwen2_vl", "Qwen2VLImageProcessor"), "Qwen2VLProcessor", nested_images=False, pixel_limits=True)))
register_family(QwenVLFamily("qwen2_5_vl", ProcessorRecipe(
    _OURS.format("Qwen2_5_VLImageOnlyProcessor"), _PIL.format("Qwen2VLImageProcessorPil"),
    _TV.format("qwen2_vl", "Qwen2VLImageProcessor"), "Qwen2_5_VLProcessor", nested_images=False, pixel_limits=True)))
register_family(VisionFamily("idefics3", ProcessorRecipe(
    _PIL.format("Idefics3Processor"), _PIL.format("Idefics3ImageProcessorPil"),
    _TV.format("idefics3", "Idefics3ImageProcessor"), "Idefics3Processor", nested_images=True)))
register_family(VisionFamily("llava_onevision", ProcessorRecipe(
    _OURS.format("LlavaOnevisionImageOnlyProcessor"), _PIL.format("LlavaOnevisionImageProcessorPil"),
    _TV.format("llava_onevision", "LlavaOnevisionImageProcessor"), "LlavaOnevisionProcessor", nested_images=True),
    image_count_dependent=True))  # any-resolution tiles only for single-image prompts
register_family(VisionFamily("internvl", ProcessorRecipe(
    _OURS.format("InternVLImageOnlyProcessor"), _PIL.format("GotOcr2ImageProcessorPil"),
    _TV.format("got_ocr2", "GotOcr2ImageProcessor"), "InternVLProcessor", nested_images=False)))
