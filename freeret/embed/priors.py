"""Prompt priors: one-word prompt templates (YAML data under ``conf/prior``) rendered per item.

A template names placeholders in braces. ``{text}`` is the item's text and ``{modality}``
what the content is ("image", "sentence", "image and sentence"); every other placeholder
comes from the prior's ``vars``, which per-dataset entries override and which may
themselves contain placeholders. Images are placed by the model family's chat template,
before the text, so a template only says where the text goes.

Few-shot priors (PromptEOL, arXiv 2307.16645) also use ``{demos}``: the first ``demos.k``
(text, answer) demonstrations of the dataset's ``demo_set`` (a key of the JSON file
``demos.file``; ``none`` = zero-shot), each rendered with ``demos.line`` (``{demo_text}``,
``{demo_answer}`` and the vars). The demonstrations are held-out data: the shipped file's
items are disjoint from every evaluation set (``tests/test_wordnet_splits.py``).
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from freeret.errors import ConfigError

ROLES = ("query", "target")
BUILTIN_VARS = ("text", "modality", "demos")
LITERALS = ("text", "demos", "demo_text", "demo_answer")  # inserted verbatim last: item texts may hold braces
NO_DEMOS = "none"
_MAX_DEPTH = 5


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


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Format ``template`` with ``values`` (vars may nest placeholders); :data:`LITERALS` go in last, verbatim."""
    slots = {name: f"\0{name}\0" for name in LITERALS}
    out = template
    for _ in range(_MAX_DEPTH):
        if not placeholders(out) - set(LITERALS):
            break
        out = out.format_map({**values, **slots})
    for name, slot in slots.items():
        out = out.replace(slot, "{" + name + "}")
    for name in LITERALS:
        if name in values:
            out = out.replace("{" + name + "}", values[name])
    return out


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
    def from_dict(cls, cfg: Mapping[str, Any], prior: str) -> "Demonstrations":
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
    """Query and target templates plus their variables and per-dataset overrides (and, for few-shot priors, the
    demonstrations)."""

    name: str
    query: str
    target: str
    vars: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    demos: Demonstrations | None = None

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "Prior":
        """Build from a ``conf/prior`` mapping and check every placeholder resolves."""
        name = str(cfg.get("name", "custom"))
        prior = cls(
            name=name,
            query=str(cfg["query"]),
            target=str(cfg.get("target", cfg["query"])),
            vars={k: str(v) for k, v in (cfg.get("vars") or {}).items()},
            datasets={k: {kk: str(vv) for kk, vv in (v or {}).items()} for k, v in (cfg.get("datasets") or {}).items()},
            demos=Demonstrations.from_dict(cfg["demos"], name) if cfg.get("demos") else None,
        )
        prior.validate()
        return prior

    def describe(self, dataset: str | None = None) -> dict[str, Any]:
        """For results: the prior's name and, for a few-shot prior, which demonstrations ``dataset`` got."""
        out: dict[str, Any] = {"name": self.name}
        if self.demos is not None:
            demo_set = self.variables(dataset).get("demo_set", NO_DEMOS)
            out["demos"] = {"k": len(self.demos.pairs(demo_set, self.name, dataset)), "set": demo_set,
                            "file": self.demos.file, "sha256": self.demos.sha256}
        return out

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
            uses_demos = any("demos" in placeholders(self.template(r, dataset)) for r in ROLES)
            if uses_demos and self.demos is None:
                raise ConfigError(f"prior '{self.name}': a template uses {{demos}} but the prior has no demos: section")
            if self.demos is not None:
                texts.append(self.demos.line)
                known |= {"demo_text", "demo_answer"}
                self.demos.pairs(self.variables(dataset).get("demo_set", NO_DEMOS), self.name, dataset)
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
        values.update(text=text.strip(), modality=modality(text, has_image), demos="")
        if self.demos is not None:
            pairs = self.demos.pairs(values.get("demo_set", NO_DEMOS), self.name, dataset)
            values["demos"] = "".join(_fill(self.demos.line, {**values, "demo_text": t, "demo_answer": a})
                                      for t, a in pairs)
        out = self.template(role, dataset)
        if not values["text"]:
            out = out.replace("{text}\n", "").replace("\n{text}", "")
        return _fill(out, values).strip()
