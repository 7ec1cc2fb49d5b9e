"""What every stage-2 scorer shares: the per-row record, the protocol, the spec (config) base, modality checks.

A scorer scores one query's top-K candidates; higher is a better match. What it returns becomes one JSONL record
per row in the rerank shards: a score per candidate plus extras (option probabilities, log-likelihood parts,
order flips, entropies), so a rerun resumes from them and the run's figures (a flip rate) are read back from them.
The stage (``freeret/rerank/stage.py``) owns fusion with stage 1 and the tie rules; a scorer only scores.

Modalities: an item is ``text``, ``image`` (an image or a clip, no text) or ``text+image``. Each scorer spec says
which kinds it takes as query and as candidate; a run whose data has another kind stops before any weights load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from freeret.data.retrieval_set import Item, RetrievalSet
from freeret.errors import ConfigError

if TYPE_CHECKING:
    from freeret.backbone.backbone import Backbone
    from freeret.backbone.image_records import ImageRecord
    from freeret.backbone.vision_cache import VisionFeatureCache
    from freeret.preflight import TextSide
    from freeret.prompts import DatasetPrompt
    from freeret.rerank.framing import Framing
    from freeret.templates import Template

TEXT, IMAGE_ONLY, BOTH = "text", "image", "text+image"
ITEM_KINDS = frozenset({TEXT, IMAGE_ONLY, BOTH})


def item_kind(item: Item) -> str:
    """``text``, ``image`` or ``text+image``."""
    if not item.image:
        return TEXT
    return BOTH if item.text.strip() else IMAGE_ONLY


def to_host(t: torch.Tensor) -> torch.Tensor:
    """A scorer's output contract: CPU, fp32."""
    return t.detach().to("cpu", torch.float32)


@dataclass
class RowScores:
    """One query's candidates scored: a score each (higher = better; CPU fp32) and JSON-able extras, each a list
    with one entry per candidate unless its name says otherwise."""

    scores: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The row's fields in a rerank shard."""
        return {"scores": self.scores.tolist(), **self.extras}


class Scorer(Protocol):
    """A stage-2 scorer: built from its spec once per run, then called once per query (see the module docstring)."""

    name: str
    bb: Backbone
    vision: VisionFeatureCache | None

    def score(self, query: Item, cands: Sequence[Item],
              records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> RowScores:
        """The run's path (fast): a score per candidate and the extras its shard record keeps."""

    def score_block(self, rows: Sequence[tuple[Item, Sequence[Item]]],
                    records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> list[RowScores]:
        """The run's path for several queries at once (one :class:`RowScores` per (query, candidates) row, in order):
        their pairs packed into forwards of up to ``max_tokens_per_batch`` tokens (``freeret/rerank/packing.py``);
        the same scores as :meth:`score` within float rounding."""

    def naive(self, query: Item, cands: Sequence[Item]) -> RowScores:
        """The reference: one full forward per prompt, same scores as :meth:`score` within float rounding."""

    def image_uses(self, query: Item, cands: Sequence[Item]) -> set[tuple[str, int]]:
        """(visual, images in its prompt) pairs that scoring looks up in the vision cache (DataLoader workers
        decode and process them ahead)."""

    def signature(self) -> dict[str, Any]:
        """What shapes the stored records besides the model and dataset (names the resume folder)."""

    def describe(self) -> dict[str, Any]:
        """Facts for the results file (option token ids, label ids, ...)."""

    def prepare(self, groups: Sequence[Mapping[str, Any]], done: Mapping[str, Mapping[str, Any]]) -> None:
        """Per-run work before the loop, given every group and the finished records (e.g. reload priors)."""

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Per-run figures from the stored records (e.g. a flip rate), for the results file."""

    def counters(self) -> dict[str, int]:
        """Work this process did (e.g. priors computed), for the results file's timing section."""


class PerQuery:
    """``score_block`` for scorers without a packed path: one :meth:`Scorer.score` per query."""

    def score_block(self, rows: Sequence[tuple[Item, Sequence[Item]]],
                    records: Mapping[tuple[str, int], list[ImageRecord]] | None = None) -> list[RowScores]:
        return [self.score(query, cands, records) for query, cands in rows]  # type: ignore[attr-defined]


class NoRunState:
    """Defaults for scorers that keep nothing across queries and report nothing extra."""

    def prepare(self, groups: Sequence[Mapping[str, Any]], done: Mapping[str, Mapping[str, Any]]) -> None:
        return None

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {}

    def counters(self) -> dict[str, int]:
        return {}


@dataclass(frozen=True)
class BuildContext:
    """What a scorer is built from besides its spec: the loaded model and the run's stage-2 settings."""

    backbone: Backbone
    framing: Framing | None
    prompt: DatasetPrompt | None = None  # the dataset's prompt facts (vars, variant names)
    batch_size: int = 16
    calibrate: bool = False
    vision_cache_mb: float = 2048
    max_tokens_per_batch: int | None = None  # suffix tokens per packed forward; None: by device (packing.py)
    candidate_cache_mb: float = 1024  # candidate prompt segments kept on the model's device (query likelihood)

    def max_tokens(self) -> int:
        """The packed forwards' token budget: the setting, or the default of the model's device."""
        from freeret.rerank.packing import default_max_tokens

        return self.max_tokens_per_batch or default_max_tokens(self.backbone.device)


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer's config (``conf/scorer/<name>.yaml``), checked before any weights load. Subclasses add fields."""

    name: ClassVar[str] = ""
    query_kinds: ClassVar[frozenset[str]] = ITEM_KINDS
    candidate_kinds: ClassVar[frozenset[str]] = ITEM_KINDS
    uses_framing: ClassVar[bool] = False  # reads conf/framing (the choice scorers)
    has_entropy: ClassVar[bool] = False  # records an entropy per candidate (tie_break=entropy)
    takes_calibrate: ClassVar[bool] = False  # honours pipeline.calibrate

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> ScorerSpec:
        """Build from the ``scorer`` mapping; unknown keys are a ConfigError (a typo would silently do nothing)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known - {"name"})
        if unknown:
            raise ConfigError(f"scorer={cls.name}: unknown key(s) {', '.join(unknown)}; its keys are "
                              f"{', '.join(sorted(known)) or 'none'} (conf/scorer/{cls.name}.yaml)")
        spec = cls(**{k: cls._coerce(k, v) for k, v in cfg.items() if k in known})
        spec.validate()
        return spec

    @classmethod
    def _coerce(cls, key: str, value: Any) -> Any:
        """A config value as the field holds it (OmegaConf containers become plain ones)."""
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return tuple(value)
        return value

    def validate(self) -> None:
        """Raise ConfigError for a bad value (subclasses)."""

    def preflight(self, side: TextSide, prompt: DatasetPrompt | None, framing: Framing | None) -> None:
        """Checks that need the tokenizer but not the weights (single-token labels, ...), before weights load."""

    def templates(self) -> tuple[Template, ...]:
        """The scorer's own prompts (a dataset's ``prompt.scorer_variant`` picks one of their variants); none for the
        choice scorers, whose wording is the framing's."""
        return ()

    def check_variant(self, prompt: DatasetPrompt | None) -> None:
        """ConfigError (one line, before any weights load) when the dataset names a scorer variant that one of this
        scorer's prompts does not define."""
        for template in self.templates():
            template.bind(prompt, "scorer", self.name)

    def check_modalities(self, rset: RetrievalSet) -> None:
        """ConfigError (one line) when a query or candidate of ``rset`` is of a kind this scorer cannot score."""
        for role, allowed, word in (("query", self.query_kinds, "queries"), ("target", self.candidate_kinds, "candidates")):
            bad = [it for it in rset.items.values() if it.role == role and item_kind(it) not in allowed]
            if bad:
                kinds = sorted({item_kind(it) for it in bad})
                raise ConfigError(
                    f"scorer={self.name} takes {' or '.join(sorted(allowed))} {word}, but {rset.name} has {len(bad)} "
                    f"{'/'.join(kinds)} {word} (e.g. {bad[0].image or bad[0].text!r}); choose another scorer "
                    f"(docs/rerankers.md lists what each one takes)")

    def build(self, ctx: BuildContext) -> Scorer:
        """The scorer for a loaded model."""
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain data (signatures, result files)."""
        out: dict[str, Any] = {"name": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.as_dict() if hasattr(value, "as_dict") else (list(value) if isinstance(value, tuple) else value)
        return out


def positive_int(spec: ScorerSpec, key: str, value: Any, minimum: int = 1) -> None:
    """ConfigError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"scorer={spec.name}: {key} must be an integer >= {minimum}, got {value!r}")


def in_unit_interval(spec: ScorerSpec, key: str, value: Any) -> None:
    """ConfigError unless 0 <= ``value`` <= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"scorer={spec.name}: {key} must be a number in [0, 1], got {value!r}")
