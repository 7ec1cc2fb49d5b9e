"""Batches of unique items for Lightning's prediction loop.

Items are grouped by (role, has image) so a batch shares one prompt kind, and sorted by
text length inside a group so batches carry little padding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from freeret.backbone.backbone import Backbone
from freeret.data.retrieval_set import Item
from freeret.data.visual import frame_count, load_visual
from freeret.embed.pooling import content_mask, content_span, image_token_id
from freeret.embed.prepend import PrependSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.templates import MARK


def plan_batches(items: Sequence[Item], batch_size: int) -> list[list[int]]:
    """Index batches: homogeneous in (role, has image), long texts first inside each group."""
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item.role, item.image is not None), []).append(i)
    batches = []
    for key in sorted(groups):
        idx = sorted(groups[key], key=lambda i: (-len(items[i].text), items[i].key))
        batches += [idx[j : j + batch_size] for j in range(0, len(idx), batch_size)]
    return batches


class PlannedBatches(Sampler[list[int]]):
    """A fixed list of index batches (Lightning needs a Sampler object, not a list)."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def default_num_workers() -> int:
    """DataLoader workers when the config says ``null``: min(8, CPUs per GPU) on a CUDA machine, where decoding
    and preprocessing images in the main process would starve the GPU; 0 on CPU-only machines, where workers
    would only compete with the model for the same cores."""
    if not torch.cuda.is_available():
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, torch.cuda.device_count())))


def num_workers(value: int | None) -> int:
    """A configured worker count (``embed.num_workers``, ``pipeline.num_workers``); ``null`` = the default above."""
    if value is None:
        return default_num_workers()
    if int(value) < 0:
        raise ConfigError(f"num_workers must be >= 0 or null (auto), got {value}")
    return int(value)


class PromptCollator:
    """Turns a list of items into model inputs with the prior's prompts (in DataLoader workers when there are
    some: it holds the processor, not the model). ``prior`` is bound to the dataset (:meth:`Prior.for_dataset`).
    With ``content=True`` (``pooling=mean``) a batch also carries ``content``: (batch, seq) bool, each item's own
    tokens (its text's and its images'); ``occurrence`` (``pooling.occurrence``) says which copy of the text counts
    when the prior writes it more than once (``last``: echo embeddings). With ``prepend`` (token prepending) the
    placeholder is written right before the item's text (every copy of it) and a batch carries ``slot``: (batch,)
    each row's slot position counted from the end (:meth:`slot`)."""

    def __init__(self, backbone: Backbone, prior: Prior, content: bool = False, occurrence: str = "first",
                 prepend: PrependSpec | None = None) -> None:
        self.prompter, self.prior, self.content, self.occurrence = backbone.prompter, prior, content, occurrence
        self.prepend = prepend if prepend is not None and prepend.on else None

    def _text(self, item: Item) -> str:
        """The text the prior writes: the item's, after the placeholder with token prepending (not for no text)."""
        text = item.text.strip()
        return self.prepend.placeholder + text if self.prepend is not None and text else item.text

    def prompt(self, item: Item, n_images: int | None = None) -> str:
        """The full prompt string for one item (a video clip puts one image per sampled frame)."""
        text = self.prior.render(item.role, self._text(item), item.image is not None)
        return self.prompter.render(text, n_images=frame_count(item.image) if n_images is None else n_images)

    def slot(self, item: Item, prompt: str, n_images: int) -> int:
        """Token prepending's slot: the position (from the end) of the one token holding the placeholder before the
        item's first copy of its text; -1 (the last token: overwriting it with itself is a no-op) for an item without
        text. The placeholder must be one token in context that does not reach into the text (a one-line error)."""
        text, placeholder = self._text(item), self.prepend.placeholder  # type: ignore[union-attr]
        if text == item.text:
            return -1
        slotted = self.prompter.render(self.prior.render(item.role, MARK, item.image is not None), n_images=n_images)
        at = slotted.find(MARK)
        if at < 0 or slotted.replace(MARK, text) != prompt:
            raise ConfigError(f"prepend cannot locate the item's text in its prompt (prior {self.prior.name})")
        tokenizer = getattr(self.prompter.processor, "tokenizer", self.prompter.processor)
        try:
            enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError as exc:
            raise ConfigError("prepend needs a fast tokenizer (character offsets)") from exc
        end = at + len(placeholder.rstrip())  # the placeholder's token; the text starts at at + len(placeholder)
        inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > at]
        if len(inside) != 1 or enc["offset_mapping"][inside[0]][1] > at + len(placeholder):
            raise ConfigError(f"prepend.placeholder={placeholder!r} is not exactly one token before the item's text "
                              f"(prior {self.prior.name}, {len(inside)} tokens): choose another placeholder")
        return inside[0] - len(enc["input_ids"])

    def text_span(self, item: Item, prompt: str, n_images: int) -> tuple[int, int]:
        """Characters of ``prompt`` that are the item's own text (its first or, with ``occurrence='last'``, its last
        copy): located by rendering the prompt with a slot in its place (so a template that repeats the text's
        words cannot mislead)."""
        text = item.text.strip()
        if not text:
            return 0, 0
        slotted = self.prompter.render(self.prior.render(item.role, MARK, item.image is not None),
                                       n_images=n_images)
        slot = slotted.rfind(MARK) if self.occurrence == "last" else slotted.find(MARK)
        if slot < 0 or slotted.replace(MARK, text) != prompt:
            raise ConfigError(f"pooling=mean cannot locate the item's text in its prompt (prior {self.prior.name})")
        start = len(slotted[:slot].replace(MARK, text))  # earlier copies of the slot hold the text in the prompt
        return start, start + len(text)

    def __call__(self, items: list[Item]) -> dict[str, Any]:
        images = [load_visual(it.image) for it in items] if items[0].image is not None else None
        counts = [len(images[i]) if images else 0 for i in range(len(items))]
        prompts = [self.prompt(it, counts[i]) for i, it in enumerate(items)]
        batch = {"keys": [it.key for it in items], "inputs": self.prompter.inputs(prompts, images)}
        if self.content:
            tokenizer = getattr(self.prompter.processor, "tokenizer", self.prompter.processor)
            spans = [content_span(tokenizer, p, *self.text_span(it, p, counts[i])) for i, (it, p) in
                     enumerate(zip(items, prompts))]
            batch["content"] = content_mask(batch["inputs"]["input_ids"], spans, image_token_id(self.prompter.processor))
        if self.prepend is not None:
            batch["slot"] = torch.tensor([self.slot(it, p, counts[i]) for i, (it, p) in enumerate(zip(items, prompts))])
        return batch


class ItemDataModule(L.LightningDataModule):
    """Serves unique items in planned batches to ``Trainer.predict``."""

    def __init__(self, items: Sequence[Item], collate: PromptCollator, batch_size: int = 32, num_workers: int = 0) -> None:
        super().__init__()
        self.items, self.collate = list(items), collate
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.items,  # type: ignore[arg-type]
            batch_sampler=PlannedBatches(plan_batches(self.items, self.batch_size)),
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )
