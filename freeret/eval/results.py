"""Result files: one JSON per dataset (:class:`RunResult`) with the main score and everything that shaped it.

A result file is written and read through :class:`RunResult` (``to_dict`` / ``from_dict``, ``schema_version``):
tables, scripts and tests read typed fields, never keys by string. Files written before the class existed
(schema 1, no ``schema_version``) read the same; their ``task.split`` held MMEB's IND/OOD, now ``distribution``.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from freeret.atomic_files import write_json
from freeret.errors import DataError
from freeret.eval.metrics import MAIN_SCORE, TIE_RULE
from freeret.optional import installed_version

PACKAGES = ("freeret", "torch", "transformers", "lightning", "tokenizers", "safetensors", "torchmetrics", "pillow", "numpy")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change results."""
    return {name: installed_version(name) for name in PACKAGES}


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every result."""
    import torch

    return {
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


SCHEMA_VERSION = 2  # 1: the untyped payload before RunResult (task.split held MMEB's IND/OOD); 2: RunResult
SPLITS = ("dev", "test")
DISTRIBUTIONS = ("IND", "OOD")


@dataclass(frozen=True)
class Task:
    """The dataset facts tables group by: which benchmark and meta-task, which split (dev or test) and, for MMEB,
    whether the dataset is in or out of the training distribution of MMEB-trained models (IND / OOD)."""

    benchmark: str | None = None
    meta_task: str | None = None
    split: str | None = None
    distribution: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Task:
        """From a result file's ``task`` or a dataset config; schema 1 kept MMEB's IND/OOD in ``split``."""
        d = d or {}
        split, distribution = d.get("split"), d.get("distribution")
        if split in DISTRIBUTIONS and distribution is None:  # schema 1: MMEB's eval sets are its test split
            split, distribution = "test", split
        return cls(d.get("benchmark"), d.get("meta_task"), split, distribution)


@dataclass(frozen=True)
class LayerRecord:
    """The sub-layer point read (``conf/layer``) and the decoder layer it resolved to."""

    label: str
    point: str
    index: int | None
    resolved_index: int | None
    apply_final_norm: bool = False
    points: list[dict[str, Any]] | None = None  # every point averaged (layer.points), resolved; None: the one above
    normalize_points: bool | None = None  # several points: each unit-normalised before averaging


@dataclass(frozen=True)
class Counts:
    """How many queries and items a result covers; failed queries count as misses in every metric."""

    num_queries: int  # every row, failed ones included: the denominator of every metric
    scored_queries: int
    failed_queries: int = 0
    num_unique_candidates: int = 0
    candidates_per_query: int = 0
    num_items_embedded: int = 0
    failed_items: int = 0
    bad_rows: int = 0
    warnings: int = 0


@dataclass(frozen=True)
class RerankRecord:
    """Stage 2 as it ran: top-K, the option labels and their token ids, the framing variant, and the other
    stage-2 settings (``conf/pipeline``) as given."""

    top_k: int
    options: list[str]  # empty for scorers without options (conf/scorer)
    match: str | None
    option_token_ids: list[int]
    framing_variant: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # batch_size, calibrate, fusion, tie_break, scorer_config, ...
    scorer: str = "choice"  # the stage-2 scorer (conf/scorer)

    def to_dict(self) -> dict[str, Any]:
        """The flat ``rerank`` mapping of a result file."""
        return {**self.settings, "top_k": self.top_k, "options": self.options, "match": self.match,
                "option_token_ids": self.option_token_ids, "framing_variant": self.framing_variant, "scorer": self.scorer}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RerankRecord:
        """From a result file's ``rerank`` mapping (any schema)."""
        typed = {f.name for f in fields(cls)} - {"settings"}
        kwargs = {k: d.get(k) for k in typed}
        kwargs["scorer"] = kwargs["scorer"] or "choice"  # files from before conf/scorer
        return cls(**kwargs, settings={k: v for k, v in d.items() if k not in typed})


@dataclass(frozen=True)
class RunResult:
    """One dataset's result file (``results/<dataset>.json``): the scores and everything that shaped them."""

    dataset: str
    pipeline: str
    main_score_name: str
    main_score: float
    metrics: dict[str, dict[str, float]]  # stage (embed, rerank) -> metric -> value in [0, 1]
    layer: LayerRecord
    prior: str
    task: Task
    counts: Counts
    model: dict[str, Any]  # Backbone.metadata(): name, family, revision, dtype, ...
    framing: str | None = None
    rerank: RerankRecord | None = None
    rag: dict[str, Any] | None = None
    # stage-1 readout and scoring axes (issue 15); absent in files written before they existed
    pooling: dict[str, Any] | None = None  # label, k, ...
    retriever: dict[str, Any] | None = None  # label (dense, bm25, hybrid), fusion settings
    postprocess: dict[str, Any] | None = None  # label, settings, statistics digest
    prior_detail: dict[str, Any] | None = None  # e.g. few-shot demonstrations (k, ids)
    views: dict[str, Any] | None = None  # a prompt ensemble's members, a query expansion's settings (issue 27)
    # the per-model preset applied (method=freeret_plus; freeret/presets.py): name, model (or _general), file, sha256,
    # the overrides it applied and its keys the command line replaced; absent when no preset applied
    preset: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tie_rule: str = TIE_RULE
    similarity: str = "cosine, fp32"
    schema_version: int = SCHEMA_VERSION

    @property
    def model_name(self) -> str:
        """The model config's name (``conf/model``)."""
        return str(self.model.get("name"))

    @property
    def final_stage(self) -> str:
        """The last stage that ran (its metrics give the main score)."""
        return list(self.metrics)[-1]

    def score(self, stage: str = "final", metric: str | None = None) -> float:
        """``metric`` (default: the main score's) of ``stage`` (``final``: the last one), as a fraction."""
        name = stage if stage != "final" else self.final_stage
        if name not in self.metrics:
            raise DataError(f"stage {stage!r} not in results of {self.dataset} (stages: {', '.join(self.metrics)})")
        return float(self.metrics[name][metric or self.main_score_name])

    def to_dict(self) -> dict[str, Any]:
        """The JSON mapping of a result file."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(layer=asdict(self.layer), task=asdict(self.task), counts=asdict(self.counts),
                   rerank=self.rerank.to_dict() if self.rerank else None)
        for optional in ("rag", "pooling", "retriever", "postprocess", "prior_detail", "views", "preset"):
            if out[optional] is None:
                out.pop(optional)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunResult:
        """Read a result mapping of any schema version (1: the untyped payload, 2: this class)."""
        version = int(d.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise DataError(f"results of {d.get('dataset')} have schema_version {version}; this FreeRet reads up to "
                            f"{SCHEMA_VERSION}: update FreeRet")
        layer = d.get("layer") or {}
        known_counts = {f.name for f in fields(Counts)}
        counts = {k: v for k, v in (d.get("counts") or {}).items() if k in known_counts}
        counts.setdefault("num_queries", 0)
        counts.setdefault("scored_queries", counts["num_queries"])
        return cls(
            dataset=str(d["dataset"]),
            pipeline=str(d.get("pipeline", "embed")),
            main_score_name=str(d.get("main_score_name", MAIN_SCORE)),
            main_score=float(d["main_score"]),
            metrics={stage: dict(m) for stage, m in d["metrics"].items()},
            layer=LayerRecord(str(layer.get("label")), str(layer.get("point")), layer.get("index"),
                              layer.get("resolved_index"), bool(layer.get("apply_final_norm", False)),
                              layer.get("points"), layer.get("normalize_points")),
            prior=str(d.get("prior")),
            task=Task.from_dict(d.get("task")),
            counts=Counts(**counts),
            model=dict(d.get("model") or {}),
            framing=d.get("framing"),
            rerank=RerankRecord.from_dict(d["rerank"]) if d.get("rerank") else None,
            rag=d.get("rag"),
            pooling=d.get("pooling"),
            retriever=d.get("retriever"),
            postprocess=d.get("postprocess"),
            prior_detail=d.get("prior_detail"),
            views=d.get("views"),
            preset=d.get("preset"),
            timing=dict(d.get("timing") or {}),
            environment=dict(d.get("environment") or {}),
            config=dict(d.get("config") or {}),
            tie_rule=str(d.get("tie_rule", TIE_RULE)),
            similarity=str(d.get("similarity", "cosine, fp32")),
        )

    @classmethod
    def read(cls, path: str | Path) -> RunResult:
        """Read ``results/<dataset>.json`` (any schema version)."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def write(self, path: Path, setting: str | None = None) -> Path:
        """Write the result file atomically (``setting``: the config key that moves its folder, for disk errors)."""
        return write_json(path, self.to_dict(), setting)
