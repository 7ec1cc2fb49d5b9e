"""Listwise reranking: the query and a numbered window of candidates in one prompt; no free-form generation.

The prompt lists a window of candidates, each on a line with a label (``[A] dog``), and asks which one matches
the query; a candidate's score in a window is the probability of its label at the answer position (softmax over
the window's label tokens), as in CoTRR-style listwise prompting, read off the logits instead of generated.

- ``window`` >= K: one window; the score is the label probability.
- ``window`` < K: sliding windows (RankGPT's procedure): a window of ``window`` candidates moves from the bottom of
  the stage-1 order to the top in steps of ``stride``, each window reordered by its label probabilities, so strong
  candidates climb; the score is the Borda count of the final order (K - position).
- ``permutations`` > 1: permutation self-consistency (Tang et al., NAACL 2024): the list is also ranked from
  seeded shuffles of the stage-1 order, and the scores of the passes are averaged.
- ``compact: caption`` (Retrv-R1's compact candidates): an image candidate enters the list as a short caption the
  model writes once per image per run (its text, if any, follows), instead of its image tokens.

Fast path: the prompt up to the candidate list (system turn, instruction, query) runs once per query into a KV
cache; every window is a suffix after it, and the permutations' windows of one step run as one batch. Windows that
show images take the full forward.
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from freeret.backbone.families import IMAGE
from freeret.backbone.vision_cache import VisionFeatureCache
from freeret.data.retrieval_set import Item
from freeret.data.visual import frame_count
from freeret.errors import ConfigError
from freeret.rerank.options import resolve_option_ids
from freeret.rerank.scorers.base import (
    BuildContext,
    PerQuery,
    RowScores,
    ScorerSpec,
    positive_int,
)
from freeret.rerank.scorers.lm import (
    base_model,
    head_logits,
    model_inputs,
    run_prefix,
    suffix_last_logits,
)
from freeret.templates import MARK, Split, Template, fill, split_at_line

log = logging.getLogger(__name__)
COMPACT = (None, "caption")


@dataclass(frozen=True)
class ListwiseSpec(ScorerSpec):
    """``conf/scorer/listwise.yaml`` (see the module docstring)."""

    name: ClassVar[str] = "listwise"

    prompt: Template = field(default_factory=lambda: Template("{query}\n{candidates}", ("query", "candidates")))
    line: str = "[{label}] {candidate}"  # one candidate's line in the list
    labels: tuple[str, ...] = tuple(string.ascii_uppercase[:20])
    window: int = 10
    stride: int = 5
    permutations: int = 1
    seed: int = 0
    compact: str | None = None  # null: images in the list; caption: a short caption per image candidate
    caption_prompt: str = "Describe the image in a few words."
    caption_tokens: int = 12

    @classmethod
    def _coerce(cls, key: str, value: Any) -> Any:
        if key == "prompt":
            return Template.from_config(value, ("query", "candidates"), f"scorer={cls.name}")
        return super()._coerce(key, value)

    def validate(self) -> None:
        for key in ("window", "stride", "permutations", "caption_tokens"):
            positive_int(self, key, getattr(self, key))
        positive_int(self, "seed", self.seed, minimum=0)
        if set(self.line.replace("{label}", "").replace("{candidate}", "")) & set("{}") or \
                self.line.count("{label}") != 1 or self.line.count("{candidate}") != 1:
            raise ConfigError(f"scorer={self.name}: line must hold {{label}} and {{candidate}} once each, got {self.line!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"scorer={self.name}: labels must be distinct, got {list(self.labels)}")
        if self.window < 2 or self.window > len(self.labels):
            raise ConfigError(f"scorer={self.name}: window must be between 2 and the number of labels "
                              f"({len(self.labels)}), got {self.window}")
        if self.stride >= self.window:
            raise ConfigError(f"scorer={self.name}: stride ({self.stride}) must be smaller than window ({self.window}), "
                              f"or windows would not overlap and strong candidates could not climb")
        if self.compact not in COMPACT:
            raise ConfigError(f"scorer={self.name}: compact={self.compact!r} is not one of null, caption")

    def preflight(self, side: Any, prompt: Any, framing: Any) -> None:
        pieces, answer = self.prompt.bind(prompt, "scorer", self.name).pieces()
        probe = side.render([pieces[0], "q", pieces[1], self.line_text(0, "c"), pieces[2]]) + answer
        resolve_option_ids(side.tokenizer, probe, self.labels[: self.window], f"scorer={self.name} labels")

    def line_text(self, index: int, text: str) -> str:
        """The list line of the ``index``-th candidate of a window."""
        return fill(self.line, {"label": self.labels[index], "candidate": text}, ("label", "candidate"))

    def templates(self) -> tuple[Template, ...]:
        return (self.prompt,)

    def build(self, ctx: BuildContext) -> Listwise:
        return Listwise(self, ctx)


def sliding_starts(k: int, window: int, stride: int) -> list[int]:
    """Window starts from the bottom of a list of ``k`` to its top (one window when ``k <= window``)."""
    if k <= window:
        return [0]
    starts, start = [], k - window
    while start > 0:
        starts.append(start)
        start -= stride
    return [*starts, 0]


class Listwise(PerQuery):
    """Listwise scorer (see the module docstring)."""

    name = "listwise"

    def __init__(self, spec: ListwiseSpec, ctx: BuildContext) -> None:
        self.spec, self.bb, self.batch_size = spec, ctx.backbone, ctx.batch_size
        bb = ctx.backbone
        self.vision = VisionFeatureCache(bb, ctx.vision_cache_mb) if bb.family.multimodal and ctx.vision_cache_mb > 0 else None
        (self.head, self.middle, self.tail), self.answer = spec.prompt.bind(ctx.prompt, "scorer", spec.name).pieces()
        probe = self.prompt(Item.make("query", "q", None), [Item.make("target", "c", None)])
        self.label_ids = resolve_option_ids(bb.tokenizer, probe, spec.labels[: spec.window], f"scorer={self.name} labels")
        self.rows = torch.tensor(self.label_ids)
        self.captions: dict[str, str] = {}
        self.windows_run = self.captions_written = 0

    # -- prompts ------------------------------------------------------------------------------------------------
    def shown(self, cand: Item) -> tuple[int, str]:
        """(images shown, text shown) for a candidate in the list: with ``compact: caption``, no image."""
        if self.spec.compact == "caption" and cand.image:
            return 0, " ".join(t for t in (self.caption(cand.image), cand.text.strip()) if t)
        return frame_count(cand.image), cand.text

    def _block(self, window: Sequence[Item]) -> list:
        parts: list = []
        for j, cand in enumerate(window):
            before, after = self.spec.line_text(j, "\0").split("\0")
            n_images, text = self.shown(cand)
            parts += [("\n" if j else "") + before, *([IMAGE] * n_images), text, after]
        return parts

    def prompt(self, query: Item, window: Sequence[Item]) -> str:
        """The whole prompt for one window, ending at the answer position."""
        return self.bb.render_parts([self.head, *([IMAGE] * frame_count(query.image)), query.text, self.middle,
                                     *self._block(window), self.tail]) + self.answer

    def _list_images(self, window: Sequence[Item]) -> list[str]:
        """The visuals the list shows (none with compact captions)."""
        return [c.image for c in window if c.image and self.shown(c)[0]]

    def _paths(self, query: Item, window: Sequence[Item]) -> list[str]:
        return [*([query.image] if query.image else []), *self._list_images(window)]

    def split(self, query: Item) -> Split:
        """(shared prefix, suffix template holding the list marker): the prefix ends where the list's line starts."""
        return split_at_line(self.bb.render_parts([self.head, *([IMAGE] * frame_count(query.image)), query.text,
                                                   self.middle, MARK, self.tail]) + self.answer)

    def _block_text(self, window: Sequence[Item]) -> str:
        return "".join(p for p in self._block(window) if p is not IMAGE)

    # -- captions (compact candidates) --------------------------------------------------------------------------
    @torch.no_grad()
    def caption(self, path: str) -> str:
        """A short caption of an image candidate, written by the model once per image per run (greedy)."""
        if path not in self.captions:
            prompt = self.bb.render_parts([*([IMAGE] * frame_count(path)), self.spec.caption_prompt])
            inputs = model_inputs(self.bb, None, [prompt], [[path]])  # pixels: generate takes no cached features
            out = self.bb.model.generate(**inputs, max_new_tokens=self.spec.caption_tokens, do_sample=False)
            text = self.bb.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            self.captions[path] = " ".join(text.split()).strip()
            self.captions_written += 1
        return self.captions[path]

    # -- window probabilities -----------------------------------------------------------------------------------
    def _probs(self, logits: torch.Tensor, size: int) -> list[torch.Tensor]:
        return list(logits[:, :size].float().softmax(-1))

    @torch.no_grad()
    def _naive_windows(self, query: Item, windows: Sequence[Sequence[Item]]) -> list[torch.Tensor]:
        """One full forward per window prompt."""
        out = []
        for window in windows:
            inputs = model_inputs(self.bb, self.vision, [self.prompt(query, window)], [self._paths(query, window)])
            last = base_model(self.bb)(**inputs, use_cache=False).last_hidden_state[:, -1]
            out += self._probs(head_logits(self.bb, last, self.rows).cpu(), len(window))
        self.windows_run += len(windows)
        return out

    def _fast_windows(self, query: Item) -> Callable[[Sequence[Sequence[Item]]], list[torch.Tensor]]:
        """A window-probability function for ``query`` whose text-only windows run after its cached prefix."""
        state: dict[str, Any] = {}

        def probs(windows: Sequence[Sequence[Item]]) -> list[torch.Tensor]:
            if any(self._list_images(w) for w in windows):
                return self._naive_windows(query, windows)  # images in the list: the full forward
            if "exact" not in state:
                state["exact"] = self.split(query).is_exact(self.bb.tokenizer, self._block_text(windows[0]),
                                                            self.prompt(query, windows[0]))
                if not state["exact"]:
                    log.warning("prefix/suffix tokenisation differs from the whole prompt for query %s: scoring it "
                                "naively", query.key)
            if not state["exact"]:
                return self._naive_windows(query, windows)
            split = self.split(query)
            if "prefix" not in state:
                inputs = model_inputs(self.bb, self.vision, [split.prefix], [[query.image] if query.image else []])
                state["prefix"] = run_prefix(self.bb, inputs)
            ids = [self.bb.tokenizer(split.suffix_for(self._block_text(w)), add_special_tokens=False)["input_ids"]
                   for w in windows]
            logits = suffix_last_logits(self.bb, state["prefix"], ids, self.rows, self.batch_size)
            self.windows_run += len(windows)
            return self._probs(logits, len(windows[0]))

        return probs

    # -- ranking ------------------------------------------------------------------------------------------------
    def orders(self, query: Item, k: int) -> list[list[int]]:
        """The stage-1 order, then ``permutations - 1`` seeded shuffles of it (seeded by the query too)."""
        orders = [list(range(k))]
        for p in range(1, self.spec.permutations):
            order = list(range(k))
            random.Random(f"{self.spec.seed}:{p}:{query.key}").shuffle(order)
            orders.append(order)
        return orders

    def rank(self, query: Item, cands: Sequence[Item],
             window_probs: Callable[[Sequence[Sequence[Item]]], list[torch.Tensor]]) -> RowScores:
        """Score every candidate (see the module docstring); ``window_probs`` gives each window's label
        probabilities, the windows of one step (one per permutation) at once."""
        k, size = len(cands), self.spec.window
        orders = self.orders(query, k)
        passes = torch.zeros(len(orders), k)
        for start in sliding_starts(k, size, self.spec.stride):
            windows = [order[start : start + size] for order in orders]
            probs = window_probs([[cands[i] for i in w] for w in windows])
            for n, (order, window, p) in enumerate(zip(orders, windows, probs)):
                if k <= size:
                    passes[n, window] = p
                ranked = sorted(range(len(window)), key=lambda j: -float(p[j]))  # stable: ties keep their order
                order[start : start + size] = [window[j] for j in ranked]
        if k > size:  # Borda points of the final orders
            for n, order in enumerate(orders):
                passes[n, order] = torch.arange(k, 0, -1, dtype=torch.float32)
        captions = [self.captions.get(c.image, "") if c.image else "" for c in cands]
        extras: dict[str, Any] = {"passes": passes.T.tolist()}
        if self.spec.compact == "caption" and any(captions):
            extras["captions"] = captions
        return RowScores(passes.mean(0), extras)

    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        """Reference: one full forward per window."""
        return self.rank(query, cands, lambda windows: self._naive_windows(query, windows))

    def score(self, query: Item, cands: Sequence[Item], records: Mapping | None = None) -> RowScores:
        """Fast path: the query's prefix once, every window a suffix after it."""
        if self.vision is not None and records:
            self.vision.receive(records)
        try:
            return self.rank(query, cands, self._fast_windows(query))
        finally:
            if self.vision is not None:
                self.vision.pending.clear()

    def image_uses(self, query: Item, cands: Sequence[Item]) -> set[tuple[str, int]]:
        """Visuals looked up in the cache; a list prompt's image count varies by window, so only families whose
        features do not depend on it are planned ahead (the others decode in the main process)."""
        if self.vision is None or self.bb.family.image_count_dependent:
            return set()
        uses = {(query.image, 1)} if query.image else set()
        return uses | {(c.image, 1) for c in cands if c.image}

    def signature(self) -> dict[str, Any]:
        # the prompts as bound to the dataset (its vars and scorer variant): another wording is another folder
        return {"scorer": self.name, "spec": self.spec.as_dict(), "bound": self.describe()}

    def describe(self) -> dict[str, Any]:
        return {"label_token_ids": self.label_ids, "labels": list(self.spec.labels[: self.spec.window]),
                "prompt": self.prompt(Item.make("query", "{query}", None),
                                      [Item.make("target", f"{{candidate {i + 1}}}", None) for i in range(2)])}

    def prepare(self, groups: Sequence[Mapping[str, Any]], done: Mapping[str, Mapping[str, Any]]) -> None:
        """Captions of image candidates in finished rows, read back from their records."""
        for group in groups:
            rec = done.get(group["row"])
            if rec is not None and "captions" in rec and rec.get("positions") == group["positions"]:
                self.captions.update((c.image, t) for c, t in zip(group["candidates"], rec["captions"]) if c.image and t)

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {}

    def counters(self) -> dict[str, int]:
        return {"listwise_windows_run": self.windows_run, "listwise_captions_written": self.captions_written}
