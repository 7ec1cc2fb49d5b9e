"""Choice framings for pointwise reranking (YAML data under ``conf/framing``).

A framing is a template with ``{query}`` and ``{candidate}``, the option labels the model
chooses between, and which label means "match". The score of a pair is the softmax over
the option tokens' logits at the answer position, read at the "match" option.
The query must come first: everything before the candidate's line is a prefix shared
by all candidates of a query (its KV cache is computed once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from freeret.embed.priors import placeholders
from freeret.errors import ConfigError

REQUIRED = {"query", "candidate"}


@dataclass(frozen=True)
class Framing:
    """Pair-scoring prompt: template, options, the matching option, and per-dataset template overrides."""

    name: str
    template: str
    options: tuple[str, ...]
    match: str
    answer_prefix: str = ""
    datasets: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "Framing":
        """Build from a ``conf/framing`` mapping and check it (before any model loads)."""
        framing = cls(
            name=str(cfg.get("name", "custom")),
            template=str(cfg["template"]),
            options=tuple(str(o) for o in cfg["options"]),
            match=str(cfg["match"]),
            answer_prefix=str(cfg.get("answer_prefix") or ""),
            datasets={k: str(v) for k, v in (cfg.get("datasets") or {}).items()},
        )
        framing.validate()
        return framing

    def validate(self) -> None:
        """Raise ConfigError for missing placeholders, a query after the candidate, or bad options."""
        if len(self.options) < 2 or len(set(self.options)) != len(self.options):
            raise ConfigError(f"framing '{self.name}': options must be at least two distinct labels, got {list(self.options)}")
        if self.match not in self.options:
            raise ConfigError(f"framing '{self.name}': match={self.match!r} is not one of the options {list(self.options)}")
        for dataset, template in [(None, self.template), *self.datasets.items()]:
            names = placeholders(template)
            where = f" (dataset {dataset})" if dataset else ""
            if names != REQUIRED:
                raise ConfigError(
                    f"framing '{self.name}'{where}: template must use exactly {{query}} and {{candidate}}, found {sorted(names)}"
                )
            if template.index("{query}") > template.index("{candidate}"):
                raise ConfigError(f"framing '{self.name}'{where}: {{query}} must come before {{candidate}}")

    @property
    def match_index(self) -> int:
        """Position of the matching option in ``options``."""
        return self.options.index(self.match)

    def split(self, dataset: str | None = None) -> tuple[str, str, str]:
        """(head, middle, tail) around the two slots: ``head{query}middle{candidate}tail``.

        The shared prefix ends at the start of the candidate's line, so that tokenising
        prefix and suffix apart gives the same ids as the whole prompt.
        """
        template = self.datasets.get(dataset or "", self.template)
        head, rest = template.split("{query}", 1)
        middle, tail = rest.split("{candidate}", 1)
        return head, middle, tail
