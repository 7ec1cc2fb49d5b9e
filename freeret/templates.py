"""The one prompt-template type: placeholders, filling, named variants, binding to a dataset, splitting at a slot.

Every prompt the model reads is a :class:`Template` or built on one: the embedding priors (``conf/prior``,
:class:`freeret.embed.priors.Prior`), the choice framings (``conf/framing``, :class:`freeret.rerank.framing.Framing`),
the stage-2 scorers' own prompts (``conf/scorer/<name>.yaml`` ``prompt``) and the RAG prompts
(``conf/pipeline/rag.yaml``). The wording is data in those YAML files; the facts of a dataset (vars such as
``{query_kind}``, and which named variant it wants) are the dataset config's ``prompt:`` section
(:class:`freeret.prompts.DatasetPrompt`), never the template's.

- ``{name}`` placeholders are vars (defaults in the template's ``vars``, a dataset's facts over them; a var may hold
  placeholders itself) or *literals*: item texts and the template's slots, which are never formatted (an item may
  hold braces): :func:`fill` formats the vars first and inserts the literals last, verbatim.
- *Slots* (``{query}``, ``{candidate}``, ``{candidates}``) are where items go, in a fixed order; :meth:`Template.pieces`
  gives the texts around them.
- *Variants* are other wordings for one kind of task; :meth:`Template.bind` applies the one a dataset names in
  ``prompt.<owner>_variant`` (a variant the template lacks is a one-line ConfigError) and the dataset's vars.
- A rendered prompt holding :data:`MARK` where its per-candidate part goes splits at the start of that part's line
  (:func:`split_at_line`): the prefix shared by every candidate, run once into a KV cache, and the suffix; the split is
  used only where it tokenises like the whole prompt (:meth:`Split.is_exact`).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from freeret.errors import ConfigError
from freeret.prompts import DatasetPrompt, pick_variant

MARK = "\u2063SLOT\u2063"  # stands for a per-candidate part while a rendered prompt is split
MAX_DEPTH = 5  # how deeply vars may nest placeholders


def placeholders(template: str) -> set[str]:
    """Names of the ``{placeholders}`` in a format string."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ConfigError(f"malformed prompt template {template!r}: {exc}") from exc


def fill(template: str, values: Mapping[str, str], literals: tuple[str, ...] = ()) -> str:
    """``template`` with its var placeholders formatted from ``values`` (again while vars bring placeholders of
    their own, at most :data:`MAX_DEPTH` passes; none when it has none), then each of ``literals`` that ``values``
    holds inserted verbatim; the other ``literals`` stay ``{name}`` (slots for later)."""
    protect = {name: f"\0{name}\0" for name in literals}
    out = template
    for _ in range(MAX_DEPTH):
        if not placeholders(out) - set(literals):
            break
        out = out.format_map({**values, **protect})
    for name, mark in protect.items():
        out = out.replace(mark, "{" + name + "}")
    for name in literals:
        if name in values:
            out = out.replace("{" + name + "}", values[name])
    return out


class Split(NamedTuple):
    """A rendered prompt cut where its per-candidate part's line starts: the shared prefix, and the suffix template
    that holds :data:`MARK` where that part goes."""

    prefix: str
    suffix: str

    def suffix_for(self, text: str) -> str:
        """The suffix with ``text`` (one candidate, or a window's list) in place of the mark."""
        return self.suffix.replace(MARK, text)

    def is_exact(self, tokenizer: Any, text: str, whole: str) -> bool:
        """Whether prefix and suffix tokenised apart give ``whole``'s ids: the shared-prefix path scores the same
        tokens as the full forward only then (``splits_exactly``); callers check it once per query."""
        from freeret.backbone.shared_prefix import splits_exactly  # torch and transformers: only when scoring

        return splits_exactly(tokenizer, self.prefix, self.suffix_for(text), whole)


def split_at_line(rendered: str) -> Split:
    """The :class:`Split` of a prompt rendered with :data:`MARK` where the per-candidate part goes: the prefix ends at
    the start of that part's line, so tokenising the two apart gives the whole prompt's ids (when ``is_exact``)."""
    cut = rendered.rfind("\n", 0, rendered.index(MARK)) + 1
    return Split(rendered[:cut], rendered[cut:])


@dataclass(frozen=True)
class Template:
    """A user turn with item ``slots`` (in template order), then the answer's start (``answer_prefix``), after which
    the scored tokens follow; ``vars`` are the defaults of its other placeholders, ``variants`` other wordings
    (name -> template, or None: the main one). See the module docstring."""

    template: str
    slots: tuple[str, ...]
    answer_prefix: str = ""
    vars: Mapping[str, str] = field(default_factory=dict)
    variants: Mapping[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any, slots: tuple[str, ...], owner: str) -> Template:
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

    def wordings(self) -> list[tuple[str | None, str]]:
        """(variant name, template) of the main wording (name None) and of every variant that has its own."""
        return [(None, self.template), *((k, v) for k, v in self.variants.items() if v is not None)]

    def validate(self, owner: str) -> None:
        """Each slot once and in order, every other placeholder a known variable (in every variant)."""
        for variant, template in self.wordings():
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

    def variant(self, name: str | None) -> Template:
        """This template in variant ``name`` (None, or a variant set to null: the main wording), variants dropped."""
        if name is not None and name not in self.variants:
            raise ConfigError(f"prompt variant {name!r} is not defined (variants: {', '.join(self.variants) or 'none'})")
        return replace(self, template=self.variants.get(name) or self.template, variants={}) if name else \
            replace(self, variants={})

    def bind(self, dataset: DatasetPrompt | None, owner: str, name: str) -> Template:
        """This template as it renders ``dataset``: the variant the dataset names in ``prompt.<owner>_variant``
        (a ConfigError naming the dataset and ``name`` when this template does not define it) and its vars over the
        template's defaults; unchanged without a dataset."""
        if dataset is None:
            return self
        pick_variant(self.variants, dataset, owner, name)  # the one-line error naming the dataset and the owner
        bound = self.variant(dataset.variants.get(owner))
        return replace(bound, vars={**bound.vars, **dataset.vars})

    def pieces(self, values: Mapping[str, str] | None = None) -> tuple[list[str], str]:
        """(the texts around the slots, the answer prefix), vars filled (``values`` over the template's ``vars``)."""
        values = {**self.vars, **(values or {})}
        text = fill(self.template, values, self.slots)
        pieces = []
        for slot in self.slots:
            before, text = text.split("{" + slot + "}")
            pieces.append(before)
        return [*pieces, text], fill(self.answer_prefix, values, self.slots)

    def render(self, values: Mapping[str, str]) -> str:
        """The whole text: vars filled, then each slot given in ``values`` inserted verbatim."""
        return fill(self.template, {**self.vars, **values}, self.slots)
