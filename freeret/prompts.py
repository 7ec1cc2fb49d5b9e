"""Per-dataset prompt facts, with one owner: the dataset config's ``prompt:`` section.

Templates (:mod:`freeret.templates`) are data under ``conf/prior``, ``conf/framing``, ``conf/scorer`` and
``conf/pipeline/rag.yaml``: they name placeholders, give their defaults, and may
define named *variants* (another wording for one kind of task, e.g. the ``presence`` question of a framing for
classification into object classes). They never name a dataset. A dataset config says what is true of its data
and which variants it wants::

    prompt:
      query_kind: image              # vars any template may use as {query_kind}, {target_kind}, ...
      target_kind: object class
      framing_variant: presence      # every framing defines `presence` (a template, or null: its main one)

Each key is checked before any data or weights load: a var outside :data:`DATASET_VARS`, a ``*_variant`` key for
something that has no variants, and a variant the chosen prior or framing does not define are one-line
ConfigErrors. :meth:`freeret.templates.Template.bind` (through it :meth:`freeret.rerank.framing.Framing.for_dataset`
and the scorers) and :meth:`freeret.embed.priors.Prior.for_dataset` apply the facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from freeret.errors import ConfigError

# The vars a dataset config may set under ``prompt:``; templates use them as placeholders and give their defaults.
DATASET_VARS: dict[str, str] = {
    "query_kind": "what a query is, in a few words ('definition', 'question about the image')",
    "target_kind": "what a candidate is ('word', 'object class')",
    "semantic_grounding": "the FreeRet prior's grounding line, where the dataset needs its own wording",
    "demo_set": "the few-shot prior's demonstration set (a key of data/wordnet_fewshot/demos.json, or none)",
    "query_unit": "what a PromptEOL line calls a query ('sentence', 'word'; default: its modality)",
    "target_unit": "what a PromptEOL line calls a candidate ('word'; default: its modality)",
    "demo_unit": "what a PromptEOL line calls a demonstration ('sentence', 'word')",
}
VARIANT_OWNERS = ("prior", "framing", "scorer")  # ``<owner>_variant`` names one of that config group's variants
T = TypeVar("T")


@dataclass(frozen=True)
class DatasetPrompt:
    """A dataset's prompt facts: vars that templates fill in, and the variant it wants from each owner."""

    dataset: str
    vars: Mapping[str, str] = field(default_factory=dict)
    variants: Mapping[str, str] = field(default_factory=dict)  # owner ("prior", "framing", "scorer") -> variant name

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DatasetPrompt:
        """Read and check the ``prompt:`` section of a ``conf/dataset`` mapping (absent: no facts)."""
        name = str(cfg.get("name") or cfg.get("kind") or "dataset")
        section = cfg.get("prompt") or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"dataset {name}: prompt must be a mapping of prompt facts, got {section!r}")
        known = [*DATASET_VARS, *(f"{owner}_variant" for owner in VARIANT_OWNERS)]
        values: dict[str, str] = {}
        variants: dict[str, str] = {}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"dataset {name}: prompt.{key} is not a prompt fact; the keys are {', '.join(known)} "
                                  f"(freeret/prompts.py)")
            if value is None:
                continue  # null: the template's default (vars) or main wording (variants)
            if key.endswith("_variant"):
                variants[key.removesuffix("_variant")] = str(value)
            else:
                values[key] = str(value)
        return cls(name, values, variants)


def pick_variant(variants: Mapping[str, T | None], prompt: DatasetPrompt | None, owner: str, name: str) -> T | None:
    """The variant of prior/framing/scorer ``name`` that ``prompt``'s dataset asks for (None: its main wording);
    ConfigError when it does not define that variant."""
    wanted = prompt.variants.get(owner) if prompt is not None else None
    if wanted is None:
        return None
    if wanted not in variants:
        have = ", ".join(sorted(variants)) or "none"
        raise ConfigError(f"dataset {prompt.dataset} asks for {owner} variant '{wanted}' (prompt.{owner}_variant), "
                          f"which {owner} '{name}' does not define (its variants: {have}); add variants.{wanted} to "
                          f"that {owner}'s YAML (a template, or null to use its main one)")
    return variants[wanted]
