"""Query-side generation (HyDE-style, Gao et al. 2022, arXiv 2212.10496; issue 27): the model writes a short
hypothetical target for each query (for a definition, the word it names), greedily, with its chat template; the text
is embedded as a target and combined with the query's own vector (:mod:`freeret.views`). Settings are data
(``conf/expand``); generations are cached in a JSONL beside the embedding stores, keyed by the model's identity, the
rendered generation prompt and the settings, so a rerun generates nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freeret.atomic_files import ensure_dir
from freeret.backbone.backbone import Backbone
from freeret.errors import ConfigError, known_keys
from freeret.prompts import DatasetPrompt
from freeret.templates import Template

log = logging.getLogger(__name__)
MODES = ("beside", "alone")
SLOTS = ("text",)
CACHE_FILE = "generations.jsonl"


@dataclass(frozen=True)
class ExpandSpec:
    """``conf/expand``: ``none`` (no generation) or ``hyde``: the generation prompt (a Template with ``{text}`` and
    the dataset's vars, bound to the dataset), ``max_new_tokens``, ``mode`` (``beside``: weighted mean with the query's
    vector, ``weight`` the generated view's share; ``alone``: the generated view replaces it), ``batch_size``."""

    name: str = "none"
    template: Any = None
    max_new_tokens: int = 8
    mode: str = "beside"
    weight: float = 0.5
    batch_size: int = 16
    prompt: Template | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, dataset: DatasetPrompt | None = None) -> ExpandSpec:
        """Read and check ``conf/expand`` (one-line ConfigErrors), the template bound to ``dataset``."""
        raw = known_keys({k: v for k, v in (cfg or {}).items() if k != "prompt"}, cls, "expand")
        if "prompt" in (cfg or {}):
            raise ConfigError("unknown expand key(s) prompt")
        spec = cls(**raw)
        if spec.name == "none":
            return cls()
        if spec.name != "hyde":
            raise ConfigError(f"expand={spec.name!r} is not available; choose none or hyde")
        if spec.mode not in MODES:
            raise ConfigError(f"expand.mode={spec.mode!r} is not one of {', '.join(MODES)}")
        if isinstance(spec.weight, bool) or not isinstance(spec.weight, (int, float)) or not 0 <= spec.weight <= 1:
            raise ConfigError(f"expand.weight={spec.weight!r} must be a number in [0, 1] (the generated view's share)")
        for key in ("max_new_tokens", "batch_size"):
            value = getattr(spec, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"expand.{key}={value!r} must be a positive integer")
        prompt = Template.from_config(spec.template, SLOTS, "expand.template").bind(dataset, "expand", spec.name)
        return cls(spec.name, spec.template, spec.max_new_tokens, spec.mode, float(spec.weight), spec.batch_size, prompt)

    @property
    def active(self) -> bool:
        """Whether queries get a generated view."""
        return self.name != "none"

    def settings(self) -> dict[str, Any]:
        """What shapes a generation (in its cache key): the bound prompt and the decoding settings."""
        assert self.prompt is not None
        return {"template": self.prompt.template, "answer_prefix": self.prompt.answer_prefix,
                "vars": dict(sorted(self.prompt.vars.items())), "max_new_tokens": self.max_new_tokens,
                "decoding": "greedy"}

    def describe(self) -> dict[str, Any]:
        """For results and the derived store's name: the settings and how the view combines."""
        return {"name": self.name, **self.settings(), "mode": self.mode, "weight": self.weight}

    def user_text(self, text: str) -> str:
        """The generation prompt's user turn for one query."""
        assert self.prompt is not None
        return self.prompt.render({"text": text.strip()})

    def answer_prefix(self) -> str:
        """The start of the answer the model continues (vars filled)."""
        assert self.prompt is not None
        return self.prompt.pieces()[1]


def clean(generated: str) -> str:
    """The generated target: cut at the first newline or closing quote, stripped (may be empty)."""
    text = generated.split("\n", 1)[0]
    for quote in ('"', "\u201d"):
        text = text.split(quote, 1)[0]
    return text.strip().strip(".").strip()


def model_identity(backbone: Backbone) -> dict[str, Any]:
    """What identifies the weights that generate: name, hub id or path, revision, dtype and the checkpoint's files."""
    from freeret.signatures import _weights_fingerprint

    meta = backbone.metadata()
    return {**{k: meta.get(k) for k in ("name", "family", "source", "hf_id", "path", "revision", "dtype")},
            "weights": _weights_fingerprint(backbone.checkpoint_dir)}


def generation_key(identity: Mapping[str, Any], prompt: str, settings: Mapping[str, Any]) -> str:
    """The cache key of one generation: the model, the full rendered prompt (chat template and answer prefix
    included) and the settings."""
    return hashlib.sha256(json.dumps([identity, prompt, settings], sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_cache(path: Path) -> dict[str, str]:
    """key -> raw generation from a cache JSONL (a torn last line from a killed writer is skipped)."""
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[str(rec["key"])] = str(rec["generated"])
            except (ValueError, KeyError, TypeError):
                continue
    return out


@dataclass
class Generations:
    """One dataset's generations: query text -> cleaned target, and how many were generated or read from the cache."""

    texts: dict[str, str]
    raw: dict[str, str]
    generated: int
    reused: int

    def record(self, spec: ExpandSpec, examples: int = 3) -> dict[str, Any]:
        """For results: the settings, the counts, the first few examples."""
        shown = [{"query": q, "generated": self.raw[q], "target": t} for q, t in list(self.texts.items())[:examples]]
        return {**spec.describe(), "generated": self.generated, "reused": self.reused,
                "empty": sum(1 for t in self.texts.values() if not t), "examples": shown}


def generate_targets(backbone: Backbone, spec: ExpandSpec, queries: Sequence[str], cache_folder: Path,
                     setting: str | None = None) -> Generations:
    """A hypothetical target for each query text (unique texts, in order): cached ones read from
    ``cache_folder/generations.jsonl``, the rest generated greedily in left-padded batches on the backbone's device
    (:func:`freeret.rag.generate`) and appended to it."""
    from freeret.rag import generate

    ensure_dir(cache_folder, setting)
    path = cache_folder / CACHE_FILE
    identity, settings, prefix = model_identity(backbone), spec.settings(), spec.answer_prefix()
    unique = list(dict.fromkeys(queries))
    keys = {q: generation_key(identity, backbone.render(spec.user_text(q)) + prefix, settings) for q in unique}
    cached = read_cache(path)
    todo = [q for q in unique if keys[q] not in cached]
    if todo:
        log.info("expand=%s: generating %d hypothetical targets (%d cached)", spec.name, len(todo), len(unique) - len(todo))
        out = generate(backbone, [spec.user_text(q) for q in todo], prefix, spec.max_new_tokens, spec.batch_size,
                       desc=f"expand={spec.name}")
        lines = "".join(json.dumps({"key": keys[q], "generated": g}) + "\n" for q, g in zip(todo, out))
        with open(path, "a", encoding="utf-8") as fh:  # one write per run: concurrent jobs append whole lines
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        cached.update({keys[q]: g for q, g in zip(todo, out)})
    raw = {q: cached[keys[q]] for q in unique}
    return Generations({q: clean(g) for q, g in raw.items()}, raw, len(todo), len(unique) - len(todo))
