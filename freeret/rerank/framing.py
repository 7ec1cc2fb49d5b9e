"""Choice framings for pointwise reranking (YAML data under ``conf/framing``).

A framing is a template with ``{query}`` and ``{candidate}``, the option labels the model
chooses between, and which label means "match". The score of a pair is the softmax over
the option tokens' logits at the answer position, read at the "match" option.
The query must come first: everything before the candidate's line is a prefix shared
by all candidates of a query (its KV cache is computed once). A framing may define named
``variants`` (another template for one kind of task); a dataset picks one through its
prompt facts (``prompt.framing_variant``, :mod:`freeret.prompts`): :meth:`Framing.for_dataset`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from freeret.errors import ConfigError
from freeret.prompts import DatasetPrompt
from freeret.templates import Template, placeholders

SLOTS = ("query", "candidate")
REQUIRED = set(SLOTS)


@dataclass(frozen=True)
class Framing:
    """Pair-scoring prompt: template, options, the matching option, and named template variants."""

    name: str
    template: str
    options: tuple[str, ...]
    match: str
    answer_prefix: str = ""
    variants: Mapping[str, str | None] = field(default_factory=dict)  # name -> template (None: the main one)
    variant: str | None = None  # the variant applied by for_dataset (None: the main template)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> Framing:
        """Build from a ``conf/framing`` mapping and check it (before any model loads)."""
        name = str(cfg.get("name", "custom"))
        if "datasets" in cfg:
            raise ConfigError(f"framing '{name}': per-dataset templates (datasets:) are no longer read; define a named "
                              f"template under variants: and name it in the dataset config (prompt.framing_variant)")
        framing = cls(
            name=name,
            template=str(cfg["template"]),
            options=tuple(str(o) for o in cfg["options"]),
            match=str(cfg["match"]),
            answer_prefix=str(cfg.get("answer_prefix") or ""),
            variants={str(k): (None if v is None else str(v)) for k, v in (cfg.get("variants") or {}).items()},
        )
        framing.validate()
        return framing

    @property
    def prompt(self) -> Template:
        """The framing's wording as a :class:`~freeret.templates.Template` with the ``query`` and ``candidate`` slots
        (the answer prefix is appended as written)."""
        return Template(self.template, tuple(SLOTS), variants=self.variants)

    def for_dataset(self, prompt: DatasetPrompt | None) -> Framing:
        """This framing as it scores ``prompt``'s dataset: the template of the variant the dataset names (ConfigError
        if this framing does not define it), else the main one (``Template.bind``)."""
        bound = self.prompt.bind(prompt, "framing", self.name)
        chosen = prompt.variants.get("framing") if prompt is not None else None
        return replace(self, template=bound.template, variants={}, variant=chosen)

    def validate(self) -> None:
        """Raise ConfigError for missing or repeated placeholders, a query after the candidate, or bad options."""
        if len(self.options) < 2 or len(set(self.options)) != len(self.options):
            raise ConfigError(f"framing '{self.name}': options must be at least two distinct labels, got {list(self.options)}")
        if self.match not in self.options:
            raise ConfigError(f"framing '{self.name}': match={self.match!r} is not one of the options {list(self.options)}")
        for variant, template in [(None, self.template), *self.variants.items()]:
            if template is None:
                continue
            names = placeholders(template)
            where = f" (variant {variant})" if variant else ""
            if names != REQUIRED:
                raise ConfigError(
                    f"framing '{self.name}'{where}: template must use exactly {{query}} and {{candidate}}, found {sorted(names)}"
                )
            if template.index("{query}") > template.index("{candidate}"):
                raise ConfigError(f"framing '{self.name}'{where}: {{query}} must come before {{candidate}}")
        self.prompt.validate(f"framing '{self.name}'")  # the Template's rules too: each slot once

    @property
    def match_index(self) -> int:
        """Position of the matching option in ``options``."""
        return self.options.index(self.match)

    def split(self) -> tuple[str, str, str]:
        """(head, middle, tail) around the two slots: ``head{query}middle{candidate}tail``.

        The shared prefix ends at the start of the candidate's line, so that tokenising
        prefix and suffix apart gives the same ids as the whole prompt.
        """
        head, middle, tail = self.prompt.pieces()[0]
        return head, middle, tail


def _swap_template(template: str, a: str, b: str) -> tuple[str, bool]:
    """(template with the two options' order swapped, whether the labels kept their place and swapped contents)."""
    line_a = re.search(rf"^{re.escape(a)}\. (.*)$", template, re.M)
    line_b = re.search(rf"^{re.escape(b)}\. (.*)$", template, re.M)
    if line_a and line_b:  # lettered choices: keep "A." first, move the contents
        body_a, body_b = line_a.group(1), line_b.group(1)
        out = template.replace(line_a.group(0), f"{a}. \0B\0").replace(line_b.group(0), f"{b}. \0A\0")
        return out.replace("\0B\0", body_b).replace("\0A\0", body_a), True
    cut = template.index("{candidate}")
    tail = re.sub(rf"\b({re.escape(a)}|{re.escape(b)})\b", lambda m: b if m.group(1) == a else a, template[cut:])
    if tail == template[cut:]:
        raise ConfigError(f"cannot swap the options of a template that does not name them after {{candidate}}: {template!r}")
    return template[:cut] + tail, False


def swap_options(framing: Framing) -> Framing:
    """The same framing with its two options listed in the other order (lettered choices keep letters, swap contents)."""
    if len(framing.options) != 2:
        raise ConfigError(f"framing '{framing.name}': the order swap needs exactly two options")
    a, b = framing.options
    template, moved = _swap_template(framing.template, a, b)
    variants = {k: None if v is None else _swap_template(v, a, b)[0] for k, v in framing.variants.items()}
    match = (b if framing.match == a else a) if moved else framing.match
    return replace(framing, name=f"{framing.name}_swapped", template=template, match=match, variants=variants)
