"""Images preprocessed once: the processor's output for one image, reused by every prompt that shows it.

Reranking shows one candidate image in the pair prompts of many queries. Decoding it and running the image
processor for every pair is wasted work: each (image, images per prompt) is processed once into an
:class:`ImageRecord` (in a DataLoader worker when there is one), holding what the processor's ``_process_images``
produced for it (pixels, grid sizes, tile counts) and the text that replaces its placeholder. A batch of pair
prompts is then tokenised from the records alone (:func:`record_inputs`): the processor runs its own placeholder
expansion, tokenisation and bookkeeping, but no image work, and the model receives the cached vision features
instead of pixels (``freeret.backbone.vision_cache``). Tested equal to the processor on the decoded images, for
every family, on every key but the pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from freeret.backbone.backbone import Prompter
from freeret.backbone.families import IMAGE
from freeret.data.visual import load_visual

PIXEL_KEYS = frozenset({"pixel_values", "pixel_attention_mask"})
PER_PROMPT_KEYS = frozenset({"batch_num_images"})  # one entry per prompt (LLaVA-OneVision), not per image
_STAND_IN = Image.new("RGB", (1, 1))  # satisfies the processor's image count checks; its pixels are never read


def frame_key(path: str, index: int, n_frames: int) -> str:
    """The cache key of one image of a visual: the path itself, or ``<clip>#frame<i>`` for a clip's frames."""
    return path if n_frames == 1 else f"{path}#frame{index}"


@dataclass
class ImageRecord:
    """One image processed for a prompt holding ``count`` copies of it (``count`` > 1 only where features depend
    on how many images share a prompt); ``processed`` is what the processor's image step returned."""

    key: str
    count: int
    processed: dict[str, Any]
    replacement: str  # the text the processor writes in place of one image placeholder
    meta: dict[str, Any] = field(init=False)  # the first copy's non-pixel entries and pixel-shaped stand-ins

    def __post_init__(self) -> None:
        self.meta = {}
        for name, value in self.processed.items():
            if name in PER_PROMPT_KEYS or not hasattr(value, "__len__"):
                continue
            first = value[: len(value) // self.count]
            self.meta[name] = first.new_empty((len(first), 0)) if name in PIXEL_KEYS else first

    @property
    def pixel_bytes(self) -> int:
        """Host memory the processed pixels hold."""
        return sum(v.numel() * v.element_size() for k, v in self.processed.items()
                   if k in PIXEL_KEYS and isinstance(v, torch.Tensor))

    def without_pixels(self) -> ImageRecord:
        """The same record minus the pixels (kept once the vision tower has run on them)."""
        stripped = replace(self, processed={k: v for k, v in self.processed.items() if k not in PIXEL_KEYS})
        stripped.meta = self.meta  # the pixel stand-ins stay: the processor still counts tiles from them
        return stripped


@contextlib.contextmanager
def _image_step(processor: Any, step: Callable[..., Any]) -> Iterator[None]:
    """Run ``processor`` with ``step`` in place of its ``_process_images`` (images -> (processed, replacements))."""
    processor._process_images = step
    try:
        yield
    finally:
        del processor._process_images


def preprocess(prompter: Prompter, key: str, image: Image.Image, count: int = 1) -> ImageRecord:
    """Run the processor once on a prompt holding ``count`` copies of ``image`` and keep its image step's output."""
    processor = prompter.processor
    original = processor._process_images
    seen: dict[str, Any] = {}

    def step(images: Any, **kwargs: Any) -> tuple[Any, list[str]]:
        seen["processed"], seen["replacements"] = original(images, **kwargs)
        return seen["processed"], seen["replacements"]

    with _image_step(processor, step):
        prompter.inputs([prompter.render_parts([IMAGE] * count + [""])], [[image] * count])
    return ImageRecord(key, count, dict(seen["processed"]), seen["replacements"][0])


def preprocess_visual(prompter: Prompter, path: str, count: int = 1) -> list[ImageRecord]:
    """Decode one item's visual (an image, or a clip's sampled frames) and process each image once."""
    frames = load_visual(path)
    return [preprocess(prompter, frame_key(path, i, len(frames)), frame, count) for i, frame in enumerate(frames)]


def _merge(per_prompt: Sequence[Sequence[ImageRecord]]) -> dict[str, Any]:
    flat = [r for records in per_prompt for r in records]
    merged: dict[str, Any] = {}
    for name in flat[0].meta:
        values = [r.meta[name] for r in flat]
        merged[name] = torch.cat(values) if isinstance(values[0], torch.Tensor) else [x for v in values for x in v]
    for name in PER_PROMPT_KEYS & flat[0].processed.keys():
        merged[name] = torch.tensor([len(records) for records in per_prompt if records])  # as the processor counts
    return merged


def record_inputs(prompter: Prompter, prompts: list[str], per_prompt: Sequence[Sequence[ImageRecord]]) -> dict[str, Any]:
    """Model inputs for ``prompts`` whose images are given as records (in prompt order), without pixel entries."""
    if not any(per_prompt):
        return prompter.inputs(prompts)
    merged = _merge(per_prompt)
    replacements = [r.replacement for records in per_prompt for r in records]
    with _image_step(prompter.processor, lambda images, **kwargs: (merged, replacements)):
        out = prompter.inputs(prompts, [[_STAND_IN] * len(records) for records in per_prompt])
    return {k: v for k, v in out.items() if k not in PIXEL_KEYS}
