"""Prompt priors: one-word prompt templates (YAML data under ``conf/prior``) rendered per item.

A template names placeholders in braces. ``{text}`` is the item's text and ``{modality}``
what the content is ("image", "sentence", "image and sentence"); every other placeholder
comes from the prior's ``vars``, which may themselves contain placeholders. A dataset's prompt
facts (its config's ``prompt:``, :mod:`freeret.prompts`) override those vars and may pick one of
the prior's named ``variants``: :meth:`Prior.for_dataset`. Images are placed by the model
family's chat template, before the text, so a template only says where the text goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from freeret.errors import ConfigError
from freeret.prompts import DatasetPrompt, pick_variant, placeholders

ROLES = ("query", "target")
BUILTIN_VARS = ("text", "modality")
VARIANT_KEYS = ("query", "target", "vars")  # what a prior variant may replace
_MAX_DEPTH = 5
_TEXT_SLOT = "\0text\0"  # keeps {text} out of format_map: item text may hold braces


def modality(text: str, has_image: bool) -> str:
    """The word a prompt uses for the content."""
    if has_image and text.strip():
        return "image and sentence"
    return "image" if has_image else "sentence"


@dataclass(frozen=True)
class Prior:
    """Query and target templates, their variables, and named variants a dataset may pick."""

    name: str
    query: str
    target: str
    vars: Mapping[str, str] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    variant: str | None = None  # the variant applied by for_dataset (None: the main templates)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> Prior:
        """Build from a ``conf/prior`` mapping and check every placeholder resolves (in every variant too)."""
        name = str(cfg.get("name", "custom"))
        if "datasets" in cfg:
            raise ConfigError(f"prior '{name}': per-dataset entries (datasets:) are no longer read; a dataset states "
                              f"its prompt facts in its own config's prompt: section (freeret/prompts.py)")
        variants: dict[str, Mapping[str, Any] | None] = {}
        for key, over in (cfg.get("variants") or {}).items():
            extra = set(over or {}) - set(VARIANT_KEYS)
            if extra:
                raise ConfigError(f"prior '{name}': variant {key} sets {', '.join(sorted(extra))}; a variant may set "
                                  f"{', '.join(VARIANT_KEYS)}")
            variants[str(key)] = None if over is None else {
                k: ({kk: str(vv) for kk, vv in v.items()} if k == "vars" else str(v)) for k, v in over.items()}
        prior = cls(
            name=name,
            query=str(cfg["query"]),
            target=str(cfg.get("target", cfg["query"])),
            vars={k: str(v) for k, v in (cfg.get("vars") or {}).items()},
            variants=variants,
        )
        prior.validate()
        for key in variants:
            prior._with_variant(key, {}).validate()
        return prior

    def _with_variant(self, key: str | None, dataset_vars: Mapping[str, str]) -> Prior:
        over = (self.variants.get(key) if key else None) or {}
        return Prior(name=self.name, query=over.get("query", self.query), target=over.get("target", self.target),
                     vars={**self.vars, **(over.get("vars") or {}), **dataset_vars}, variant=key)

    def for_dataset(self, prompt: DatasetPrompt | None) -> Prior:
        """This prior as it renders ``prompt``'s dataset: the variant the dataset names, then its vars over the
        prior's; checked (a variant this prior lacks, or a placeholder left undefined, is a ConfigError)."""
        if prompt is None:
            return self
        pick_variant(self.variants, prompt, "prior", self.name)
        bound = self._with_variant(prompt.variants.get("prior"), prompt.vars)
        bound.validate(prompt.dataset)
        return bound

    def template(self, role: str) -> str:
        """The raw template for ``role``."""
        if role not in ROLES:
            raise ConfigError(f"prompt role must be one of {ROLES}, got {role!r}")
        return getattr(self, role)

    def validate(self, dataset: str | None = None) -> None:
        """Raise ConfigError naming any placeholder that no variable defines, or a template without {text}."""
        where = f" (dataset {dataset})" if dataset else f" (variant {self.variant})" if self.variant else ""
        known = set(self.vars) | set(BUILTIN_VARS)
        for role in ROLES:
            if "text" not in placeholders(self.template(role)):
                raise ConfigError(
                    f"prior '{self.name}'{where}: the {role} template has no {{text}} placeholder, so the item "
                    f"would not be in its prompt; add {{text}} where the item goes"
                )
        for text in [self.template(r) for r in ROLES] + list(self.vars.values()):
            missing = placeholders(text) - known
            if missing:
                raise ConfigError(
                    f"prior '{self.name}'{where}: template uses undefined placeholder(s) "
                    f"{', '.join(sorted(missing))}; define them under prior.vars"
                )

    def render(self, role: str, text: str, has_image: bool) -> str:
        """The user-turn text for one item (images are added by the chat template)."""
        values = dict(self.vars)
        values.update(text=text.strip(), modality=modality(text, has_image))
        out = self.template(role)
        if not values["text"]:
            out = out.replace("{text}\n", "").replace("\n{text}", "")
        for _ in range(_MAX_DEPTH):
            if not placeholders(out) - {"text"}:
                break
            out = out.replace("{text}", _TEXT_SLOT).format_map(values).replace(_TEXT_SLOT, "{text}")
        return out.replace("{text}", values["text"]).strip()
