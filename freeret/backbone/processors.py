"""Processors for vision-language backbones, with torchvision image processing where it imports and PIL elsewhere.

``AutoProcessor`` is not used: it loads a video processor and silently falls back
from torchvision to PIL. ``load_processor`` assembles the processor from its parts
instead: the tokenizer (``AutoTokenizer``, left padding), the family's image
processor (``image_backend``: the torchvision one, ~3.5x faster with the same token
ids, where torchvision imports; else the PIL one; or the one the config names),
the processor options from ``processor_config.json`` and the chat
template (``chat_template.jinja``/``chat_template.json``, else the tokenizer's).
The two backends' pixel values differ slightly (up to ~0.03), so the class that
ran is part of a vector's signature and of the results.
Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision and InternVL processors are built through
small subclasses whose ``__init__`` takes no video processor. Which classes build a
family's processor is its :class:`~freeret.backbone.recipe.ProcessorRecipe`, handed
in by the family adapter (``families.py``), so this module knows no family names.

Prompt text (``IMAGE_TOKEN_CONTENT``): callers render a single user turn with the
processor's own chat template, one ``{"type": "image"}`` entry per image before the
text (``freeret.toy.chat.render_chat`` is the reference)::

    processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXT}]}],
        tokenize=False,
        add_generation_prompt=True,
    )

Text-only prompts drop the image entry. This works unchanged for every vision family
(``families.processor_recipes()``); the template writes the family's image placeholder (``<|image_pad|>``
inside ``<|vision_start|>...<|vision_end|>``, ``<image>``, ``<IMG_CONTEXT>``), which
the processor then expands to the right number of image tokens.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import (
    AutoTokenizer,
    BatchFeature,
    InternVLProcessor,
    LlavaOnevisionProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)

from freeret.backbone.recipe import ProcessorRecipe

IMAGE_TOKEN_CONTENT: dict[str, str] = {"type": "image"}
"""The content entry that stands for one image in a chat message (see the module docstring)."""


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ):
        """Build from an image processor and a tokenizer."""
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without a video processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ):
        """Build from an image processor and a tokenizer."""
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class LlavaOnevisionImageOnlyProcessor(LlavaOnevisionProcessor):
    """LLaVA-OneVision processor without a video processor."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ):
        """Build from an image processor, a tokenizer and the checkpoint's processor options."""
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


class InternVLImageOnlyProcessor(InternVLProcessor):
    """InternVL processor without a video processor."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        """Build from an image processor, a tokenizer and the number of tokens per image tile."""
        super().__init__(
            image_processor, tokenizer, None, image_seq_length=image_seq_length, chat_template=chat_template, **kwargs
        )


IMAGE_BACKENDS: tuple[str, ...] = ("auto", "pil", "torchvision")


@lru_cache(maxsize=1)
def torchvision_importable() -> bool:
    """Whether torchvision imports here (installed is not enough: a build for another torch fails on import)."""
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means the PIL processors run
        return False
    return True


def image_backend(requested: str = "auto") -> str:
    """The image processing that runs for ``model.image_processor=requested``: "torchvision" or "pil".

    ``auto`` takes torchvision where it imports; asking for torchvision where it does not is a ConfigError.
    """
    from freeret.errors import ConfigError

    if requested not in IMAGE_BACKENDS:
        raise ConfigError(f"model.image_processor={requested!r} is not one of {', '.join(IMAGE_BACKENDS)}")
    if requested == "auto":
        return "torchvision" if torchvision_importable() else "pil"
    if requested == "torchvision" and not torchvision_importable():
        raise ConfigError("model.image_processor=torchvision but torchvision does not import here: install the "
                          "torchvision build that matches your torch, or use model.image_processor=auto (PIL)")
    return requested


def load_processor(
    recipe: ProcessorRecipe,
    path: str | Path,
    *,
    revision: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    local_files_only: bool = False,
    image_processor: str = "auto",
) -> ProcessorMixin:
    """Load the processor ``recipe`` describes from a hub id or folder with a left-padding tokenizer and the image processing
    ``image_backend(image_processor)`` picks.

    ``min_pixels``/``max_pixels`` bound the resized image area of Qwen families (ValueError elsewhere).
    Hub and file errors (``OSError`` and subclasses) propagate unchanged.
    """
    if (min_pixels is not None or max_pixels is not None) and not recipe.pixel_limits:
        raise ValueError(f"min_pixels/max_pixels apply to Qwen families only, not {recipe.real_processor_name}")
    hub: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
    tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side="left", **hub)
    tokenizer.padding_side = "left"
    image_kwargs: dict[str, int] = {}
    if min_pixels is not None:
        image_kwargs["min_pixels"] = min_pixels
    if max_pixels is not None:
        image_kwargs["max_pixels"] = max_pixels
    images = recipe.image_processor_for(image_backend(image_processor)).from_pretrained(str(path), **hub, **image_kwargs)
    processor_dict, _ = recipe.processor_class.get_processor_dict(str(path), **hub)
    if processor_dict.get("chat_template") is None and tokenizer.chat_template is not None:
        processor_dict["chat_template"] = tokenizer.chat_template
    return recipe.processor_class.from_args_and_dict([images, tokenizer], processor_dict)


def processor_inputs(
    recipe: ProcessorRecipe,
    processor: ProcessorMixin,
    prompts: list[str],
    images: list[list[Image.Image]] | None,
) -> BatchFeature:
    """Tokenize a batch of rendered prompts (left padded, PyTorch tensors) with one image list per prompt or none."""
    kwargs: dict[str, Any] = {"padding": True, "padding_side": "left", "return_tensors": "pt"}
    if images is None or not any(images):
        return processor(text=list(prompts), **kwargs)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} image lists")
    batch_images: list[Any] = [list(sample) for sample in images]
    if not recipe.nested_images:
        batch_images = [image for sample in batch_images for image in sample]
    return processor(images=batch_images, text=list(prompts), **kwargs)
