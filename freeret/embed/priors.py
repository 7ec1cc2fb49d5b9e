"""Prompt priors: one-word prompt templates (YAML data under ``conf/prior``) rendered per item.

A template names placeholders in braces. ``{text}`` is the item's text and ``{modality}``
what the content is ("image", "sentence", "image and sentence"); every other placeholder
comes from the prior's ``vars``, which per-dataset entries override and which may
themselves contain placeholders. Images are placed by the model family's chat template,
before the text, so a template only says where the text goes.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Mapping

from freeret.errors import ConfigError

ROLES = ("query", "target")
BUILTIN_VARS = ("text", "modality")
_MAX_DEPTH = 5
_TEXT_SLOT = "\0text\0"  # keeps {text} out of format_map: item text may hold braces


def placeholders(template: str) -> set[str]:
    """Names of the ``{placeholders}`` in a format string."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ConfigError(f"malformed prompt template {template!r}: {exc}") from exc


def modality(text: str, has_image: bool) -> str:
    """The word a prompt uses for the content."""
    if has_image and text.strip():
        return "image and sentence"
    return "image" if has_image else "sentence"


@dataclass(frozen=True)
class Prior:
    """Query and target templates plus their variables and per-dataset overrides."""

    name: str
    query: str
    target: str
    vars: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "Prior":
        """Build from a ``conf/prior`` mapping and check every placeholder resolves."""
        prior = cls(
            name=str(cfg.get("name", "custom")),
            query=str(cfg["query"]),
            target=str(cfg.get("target", cfg["query"])),
            vars={k: str(v) for k, v in (cfg.get("vars") or {}).items()},
            datasets={k: {kk: str(vv) for kk, vv in (v or {}).items()} for k, v in (cfg.get("datasets") or {}).items()},
        )
        prior.validate()
        return prior

    def variables(self, dataset: str | None) -> dict[str, str]:
        """The prior's variables with ``dataset``'s overrides applied."""
        merged = dict(self.vars)
        merged.update(self.datasets.get(dataset or "", {}))
        return merged

    def template(self, role: str, dataset: str | None = None) -> str:
        """The raw template for ``role``; a dataset may override it with a ``query``/``target`` entry."""
        if role not in ROLES:
            raise ConfigError(f"prompt role must be one of {ROLES}, got {role!r}")
        return self.datasets.get(dataset or "", {}).get(role, getattr(self, role))

    def validate(self) -> None:
        """Raise ConfigError naming any placeholder that no variable defines (for every dataset entry)."""
        for dataset in [None, *self.datasets]:
            known = set(self.variables(dataset)) | set(BUILTIN_VARS)
            texts = [self.template(r, dataset) for r in ROLES] + list(self.variables(dataset).values())
            for role in ROLES:
                if "text" not in placeholders(self.template(role, dataset)):
                    where = f" (dataset {dataset})" if dataset else ""
                    raise ConfigError(
                        f"prior '{self.name}'{where}: the {role} template has no {{text}} placeholder, so the item "
                        f"would not be in its prompt; add {{text}} where the item goes"
                    )
            for text in texts:
                missing = placeholders(text) - known
                if missing:
                    where = f" (dataset {dataset})" if dataset else ""
                    raise ConfigError(
                        f"prior '{self.name}'{where}: template uses undefined placeholder(s) "
                        f"{', '.join(sorted(missing))}; define them under prior.vars"
                    )

    def render(self, role: str, text: str, has_image: bool, dataset: str | None = None) -> str:
        """The user-turn text for one item (images are added by the chat template)."""
        values = self.variables(dataset)
        values.update(text=text.strip(), modality=modality(text, has_image))
        out = self.template(role, dataset)
        if not values["text"]:
            out = out.replace("{text}\n", "").replace("\n{text}", "")
        for _ in range(_MAX_DEPTH):
            if not placeholders(out) - {"text"}:
                break
            out = out.replace("{text}", _TEXT_SLOT).format_map(values).replace(_TEXT_SLOT, "{text}")
        return out.replace("{text}", values["text"]).strip()
