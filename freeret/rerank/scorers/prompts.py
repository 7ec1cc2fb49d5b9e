"""Scorer prompts as data: a user turn with item slots, then the answer's start, after which the scored tokens follow.

``template`` holds the slots in a fixed order (``{query}``, ``{candidate}``, ``{candidates}``) and may name
variables (``{query_kind}``, ``{target_kind}``) whose defaults are the YAML's ``vars``; named ``variants`` are
other templates for one kind of task. Item text is never formatted (it may hold braces): the template is filled
first, the items go in last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from freeret.backbone.shared_prefix import splits_exactly
from freeret.embed.priors import placeholders
from freeret.errors import ConfigError
from freeret.prompts import DatasetPrompt, pick_variant

MARK = "\u2063SLOT\u2063"  # stands for a per-candidate part while a rendered prompt is split


class Split(NamedTuple):
    """A rendered prompt cut where its per-candidate part's line starts: the shared prefix, and the suffix template
    that holds :data:`MARK` where that part goes."""

    prefix: str
    suffix: str

    def suffix_for(self, text: str) -> str:
        """The suffix with ``text`` (one candidate, or a window's list) in place of the mark."""
        return self.suffix.replace(MARK, text)

    def is_exact(self, tokenizer: Any, text: str, whole: str) -> bool:
        """Whether prefix and suffix tokenised apart give ``whole``'s ids (``splits_exactly``): the shared-prefix path
        scores the same tokens as the full forward only then; callers check it once per query."""
        return splits_exactly(tokenizer, self.prefix, self.suffix_for(text), whole)


def split_at_line(rendered: str) -> Split:
    """The :class:`Split` of a prompt rendered with :data:`MARK` where the per-candidate part goes: the prefix ends at
    the start of that part's line, so tokenising the two apart gives the whole prompt's ids (when ``is_exact``)."""
    cut = rendered.rfind("\n", 0, rendered.index(MARK)) + 1
    return Split(rendered[:cut], rendered[cut:])


def fill(text: str, values: Mapping[str, str], keep: tuple[str, ...] = ()) -> str:
    """``text`` with its ``{placeholders}`` filled from ``values``; the ones in ``keep`` stay as they are."""
    for name in keep:
        text = text.replace("{" + name + "}", f"\0{name}\0")
    text = text.format_map(dict(values))
    for name in keep:
        text = text.replace(f"\0{name}\0", "{" + name + "}")
    return text


@dataclass(frozen=True)
class SlotPrompt:
    """One scorer prompt (see the module docstring); ``slots`` are the items it holds, in template order."""

    template: str
    slots: tuple[str, ...]
    answer_prefix: str = ""
    vars: Mapping[str, str] = field(default_factory=dict)
    variants: Mapping[str, str | None] = field(default_factory=dict)  # name -> template (None: the main one)

    @classmethod
    def from_config(cls, cfg: Any, slots: tuple[str, ...], owner: str) -> SlotPrompt:
        """From a mapping with ``template``, ``answer_prefix``, ``vars`` and ``variants``; checked."""
        if not isinstance(cfg, Mapping) or "template" not in cfg:
            raise ConfigError(f"{owner}: prompt must be a mapping with a template (and answer_prefix, vars, variants)")
        unknown = sorted(set(cfg) - {"template", "answer_prefix", "vars", "variants"})
        if unknown:
            raise ConfigError(f"{owner}: unknown prompt key(s) {', '.join(unknown)}")
        prompt = cls(template=str(cfg["template"]), slots=slots, answer_prefix=str(cfg.get("answer_prefix") or ""),
                     vars={str(k): str(v) for k, v in (cfg.get("vars") or {}).items()},
                     variants={str(k): None if v is None else str(v) for k, v in (cfg.get("variants") or {}).items()})
        prompt.validate(owner)
        return prompt

    def as_dict(self) -> dict[str, Any]:
        """Plain data (signatures, result files)."""
        return {"template": self.template, "answer_prefix": self.answer_prefix, "vars": dict(self.vars),
                "variants": dict(self.variants)}

    def validate(self, owner: str) -> None:
        """Each slot once and in order, every other placeholder a known variable."""
        for variant, template in [(None, self.template), *((k, v) for k, v in self.variants.items() if v is not None)]:
            where = f"{owner}{f' (variant {variant})' if variant else ''}"
            marks = ["{" + slot + "}" for slot in self.slots]
            if any(template.count(m) != 1 for m in marks):
                raise ConfigError(f"{where}: the template must hold {', '.join(marks)} once each: {template!r}")
            if [template.index(m) for m in marks] != sorted(template.index(m) for m in marks):
                raise ConfigError(f"{where}: the slots must come in the order {', '.join(marks)}: {template!r}")
            for text in (template, self.answer_prefix):
                unknown = placeholders(text) - set(self.slots) - set(self.vars)
                if unknown:
                    raise ConfigError(f"{where}: undefined placeholder(s) {', '.join(sorted(unknown))}; define them under vars")

    def split(self, variant: str | None = None, facts: Mapping[str, str] | None = None) -> tuple[list[str], str]:
        """(the template's texts around its slots, the answer prefix), variables filled (a dataset's ``facts`` over
        the defaults)."""
        if variant is not None and variant not in self.variants:
            raise ConfigError(f"prompt variant {variant!r} is not defined (variants: {', '.join(self.variants) or 'none'})")
        values = {**self.vars, **(facts or {})}
        text = fill(self.variants.get(variant) or self.template, values, self.slots)  # None (no variant, or null): main
        pieces = []
        for slot in self.slots:
            before, text = text.split("{" + slot + "}")
            pieces.append(before)
        return [*pieces, text], fill(self.answer_prefix, values)


def bind(prompt: SlotPrompt, dataset: DatasetPrompt | None, scorer: str) -> tuple[list[str], str]:
    """``prompt.split`` for a dataset: the variant it names in ``prompt.scorer_variant`` (ConfigError when the
    scorer's YAML does not define it) and its vars over the YAML's defaults."""
    if dataset is None:
        return prompt.split()
    pick_variant(prompt.variants, dataset, "scorer", scorer)  # the one-line error naming the dataset and the scorer
    return prompt.split(variant=dataset.variants.get("scorer"), facts=dataset.vars)
