"""Priors: prompt templates as data, rendered per item.

A template names placeholders in braces. ``{text}`` is the item's text and ``{modality}``
what the content is ("image", "sentence", "image and sentence"); every other placeholder
comes from the prior's ``vars``, which may themselves contain placeholders. A dataset's prompt
facts (its config's ``prompt:``, :mod:`freeret.prompts`) override those vars and may pick one of
the prior's named ``variants``: :meth:`Prior.for_dataset`. Images are placed by the model
family's chat template, before the text, so a template only says where the text goes.

Few-shot priors (PromptEOL, arXiv 2307.16645) also use ``{demos}``: the first ``demos.k``
(text, answer) demonstrations of the dataset's ``demo_set`` (a prompt fact naming a key of the
JSON file ``demos.file``; ``none`` = zero-shot), each rendered with ``demos.line``
(``{demo_text}``, ``{demo_answer}`` and the vars). The demonstrations are held-out data: the
shipped file's items are disjoint from every evaluation set (``tests/test_wordnet_splits.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from freeret.errors import ConfigError
from freeret.prompts import DatasetPrompt, pick_variant
from freeret.templates import fill, placeholders

ROLES = ("query", "target")
BUILTIN_VARS = ("text", "modality", "demos")
LITERALS = ("text", "demos", "demo_text", "demo_answer")  # inserted verbatim last: item texts may hold braces
NO_DEMOS = "none"
VARIANT_KEYS = ("query", "target", "vars")  # what a prior variant may replace


def modality(text: str, has_image: bool) -> str:
    """The word a prompt uses for the content."""
    if has_image and text.strip():
        return "image and sentence"
    return "image" if has_image else "sentence"


@dataclass(frozen=True)
class Demonstrations:
    """Few-shot demonstrations: ``sets`` (name -> (text, answer) pairs, in order), how many to use, the line each
    renders as, and the file they came from (path and sha256, recorded in results)."""

    sets: Mapping[str, tuple[tuple[str, str], ...]]
    k: int
    line: str
    file: str
    sha256: str

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], prior: str) -> Demonstrations:
        """Load ``demos.file`` (a JSON object: set name -> list of {text, answer}); one-line errors."""
        from freeret.data.retrieval_set import resolve_path

        path = resolve_path(str(cfg.get("file") or ""))
        if not path.is_file():
            raise ConfigError(f"prior '{prior}': demos.file={cfg.get('file')!r} is not a file")
        data = path.read_bytes()
        try:
            raw = json.loads(data)
            sets = {str(name): tuple((str(d["text"]), str(d["answer"])) for d in rows) for name, rows in raw.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"prior '{prior}': {path} is not a JSON object of [{{text, answer}}, ...] lists "
                              f"({exc})") from exc
        k = int(cfg.get("k", 1))
        if k < 0:
            raise ConfigError(f"prior '{prior}': demos.k={k} must be >= 0")
        return cls(sets, k, str(cfg.get("line", "")), str(path), hashlib.sha256(data).hexdigest())

    def pairs(self, demo_set: str, prior: str, dataset: str | None) -> tuple[tuple[str, str], ...]:
        """The first ``k`` pairs of ``demo_set`` (none for ``none``)."""
        if demo_set == NO_DEMOS or self.k == 0:
            return ()
        if demo_set not in self.sets:
            raise ConfigError(f"prior '{prior}' (dataset {dataset}): demo_set={demo_set!r} is not in {self.file}; "
                              f"choose one of {', '.join(sorted(self.sets))} or none")
        if len(self.sets[demo_set]) < self.k:
            raise ConfigError(f"prior '{prior}': demos.k={self.k} but {self.file} holds {len(self.sets[demo_set])} "
                              f"demonstrations for {demo_set}")
        return self.sets[demo_set][: self.k]


@dataclass(frozen=True)
class Prior:
    """Query and target templates, their variables, named variants a dataset may pick, and (for few-shot priors)
    the demonstrations."""

    name: str
    query: str
    target: str
    vars: Mapping[str, str] = field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    variant: str | None = None  # the variant applied by for_dataset (None: the main templates)
    demos: Demonstrations | None = None
    dataset: str | None = None  # the dataset for_dataset bound (for messages)

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
            demos=Demonstrations.from_dict(cfg["demos"], name) if cfg.get("demos") else None,
        )
        prior.validate()
        for key in variants:
            prior._with_variant(key, {}).validate()
        return prior

    def _with_variant(self, key: str | None, dataset_vars: Mapping[str, str], dataset: str | None = None) -> Prior:
        over = (self.variants.get(key) if key else None) or {}
        return Prior(name=self.name, query=over.get("query", self.query), target=over.get("target", self.target),
                     vars={**self.vars, **(over.get("vars") or {}), **dataset_vars}, variant=key, demos=self.demos,
                     dataset=dataset)

    def for_dataset(self, prompt: DatasetPrompt | None) -> Prior:
        """This prior as it renders ``prompt``'s dataset: the variant the dataset names, then its vars over the
        prior's; checked (a variant this prior lacks, or a placeholder left undefined, is a ConfigError)."""
        if prompt is None:
            return self
        pick_variant(self.variants, prompt, "prior", self.name)
        bound = self._with_variant(prompt.variants.get("prior"), prompt.vars, prompt.dataset)
        bound.validate(prompt.dataset)
        return bound

    def describe(self) -> dict[str, Any]:
        """For results: the prior's name and, for a few-shot prior, which demonstrations its dataset got."""
        out: dict[str, Any] = {"name": self.name}
        if self.demos is not None:
            demo_set = self.vars.get("demo_set", NO_DEMOS)
            out["demos"] = {"k": len(self.demos.pairs(demo_set, self.name, self.dataset)), "set": demo_set,
                            "file": self.demos.file, "sha256": self.demos.sha256}
        return out

    def missing_demonstrations(self) -> str | None:
        """Why a few-shot prior bound to a dataset runs with fewer demonstrations than its ``demos.k`` asks for (the
        dataset names no ``prompt.demo_set``), or None: a preset must not drop part of itself silently."""
        if self.demos is None or self.demos.k == 0 or self.vars.get("demo_set", NO_DEMOS) != NO_DEMOS:
            return None
        return (f"prior '{self.name}' asks for demos.k={self.demos.k} demonstrations, but dataset {self.dataset} names no "
                f"demonstration set (prompt.demo_set): it runs zero-shot")

    def template(self, role: str) -> str:
        """The raw template for ``role``."""
        if role not in ROLES:
            raise ConfigError(f"prompt role must be one of {ROLES}, got {role!r}")
        return getattr(self, role)

    def validate(self, dataset: str | None = None) -> None:
        """Raise ConfigError naming any placeholder that no variable defines, a template without {text}, or
        demonstrations that cannot be found."""
        where = f" (dataset {dataset})" if dataset else f" (variant {self.variant})" if self.variant else ""
        known = set(self.vars) | set(BUILTIN_VARS)
        for role in ROLES:
            if "text" not in placeholders(self.template(role)):
                raise ConfigError(
                    f"prior '{self.name}'{where}: the {role} template has no {{text}} placeholder, so the item "
                    f"would not be in its prompt; add {{text}} where the item goes"
                )
        texts = [self.template(r) for r in ROLES] + list(self.vars.values())
        if any("demos" in placeholders(self.template(r)) for r in ROLES) and self.demos is None:
            raise ConfigError(f"prior '{self.name}': a template uses {{demos}} but the prior has no demos: section")
        if self.demos is not None:
            texts.append(self.demos.line)
            known |= {"demo_text", "demo_answer"}
            self.demos.pairs(self.vars.get("demo_set", NO_DEMOS), self.name, dataset)
        for text in texts:
            missing = placeholders(text) - known
            if missing:
                raise ConfigError(
                    f"prior '{self.name}'{where}: template uses undefined placeholder(s) "
                    f"{', '.join(sorted(missing))}; define them under prior.vars"
                )

    def render(self, role: str, text: str, has_image: bool) -> str:
        """The user-turn text for one item (images are added by the chat template)."""
        values = dict(self.vars)
        values.update(text=text.strip(), modality=modality(text, has_image), demos="")
        if self.demos is not None:
            pairs = self.demos.pairs(values.get("demo_set", NO_DEMOS), self.name, self.dataset)
            values["demos"] = "".join(fill(self.demos.line, {**values, "demo_text": t, "demo_answer": a}, LITERALS)
                                      for t, a in pairs)
        out = self.template(role)
        if not values["text"]:
            out = out.replace("{text}\n", "").replace("\n{text}", "")
        return fill(out, values, LITERALS).strip()
