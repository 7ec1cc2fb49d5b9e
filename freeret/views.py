"""Several vectors ("views") per item, combined into one (issue 27): prompt ensembles (MetaEOL, Lei et al. 2024,
arXiv 2402.18458: ``conf/prior/metaeol.yaml``'s ``ensemble:``) and query-side generation (HyDE, Gao et al. 2022:
``conf/expand``, :mod:`freeret.generate`).

A view is (the ensemble member whose template renders it, the item it embeds: role + text + image, a weight). Every
view is embedded by the ordinary machinery into the ordinary store (its key: role and the rendered prompt, so it is
shared with any run that renders the same prompt); an item's vector is then the weighted mean of its views'
L2-normalised vectors, written to a derived store under a combined key (:func:`combined_key`), so post-processing,
the retrievers and everything downstream read it like any other vector. Without an ensemble or an expansion no view
exists and a run takes the single-prompt path unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from freeret.data.retrieval_set import Item
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.generate import ExpandSpec
from freeret.prompts import DatasetPrompt
from freeret.retrieve.shards import ShardStore, shard_name, write_shard

COMBINE = "weighted mean of L2-normalised views"  # the rule, named in the derived store's signature


def views_code() -> str:
    """Hash of this module and the generation module: the derived store moves when the combination could."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in ("views.py", "generate.py"):
        h.update(name.encode() + b"\0" + (root / name).read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class View:
    """One vector of an item: ``item`` (role, text, image: the role picks the member's template) rendered by
    ensemble member ``member``, with ``weight`` in the item's mean."""

    member: int
    item: Item
    weight: float


def ensemble_members(prior_cfg: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The member prior mappings of an ensemble prior (``ensemble:``), or None for a single prior."""
    members = prior_cfg.get("ensemble")
    if members is None:
        return None
    name = prior_cfg.get("name", "custom")
    if not isinstance(members, Sequence) or isinstance(members, str) or not members:
        raise ConfigError(f"prior '{name}': ensemble must be a non-empty list of prior mappings (name, query, target, vars)")
    for i, member in enumerate(members):
        if not isinstance(member, Mapping) or "query" not in member:
            raise ConfigError(f"prior '{name}': ensemble[{i}] must be a prior mapping with name, query, target, vars")
    return list(members)


@dataclass(frozen=True)
class Views:
    """A run's views: the ensemble members (bound to the dataset; one member = no ensemble) and the expansion."""

    name: str
    members: tuple[Prior, ...]
    ensemble: bool
    expand: ExpandSpec

    @classmethod
    def from_config(cls, prior_cfg: Mapping[str, Any], expand_cfg: Mapping[str, Any] | None,
                    prompt: DatasetPrompt | None, prior: Prior) -> Views:
        """From ``conf/prior`` (its ``ensemble:``, each member a Prior bound to ``prompt``) and ``conf/expand``;
        ``prior`` (the run's bound prior) is the one member of a prior without an ensemble."""
        raw = ensemble_members(prior_cfg)
        members = tuple(Prior.from_dict(m).for_dataset(prompt) for m in raw) if raw else (prior,)
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError(f"prior '{prior.name}': ensemble member names repeat ({', '.join(names)})")
        return cls(prior.name, members, raw is not None, ExpandSpec.from_config(expand_cfg, prompt))

    @property
    def active(self) -> bool:
        """Whether any item has more than its one single-prompt vector (False: the ordinary path)."""
        return self.ensemble or self.expand.active

    def of(self, item: Item, generated: str | None = None) -> list[View]:
        """The views of ``item``: its text under every member; for a query with a non-empty ``generated`` target,
        the generated text as a target beside the query (mode ``beside``, share ``weight``) or instead of it."""
        n = len(self.members)
        own = [View(m, item, 1.0 / n) for m in range(n)]
        if item.role != "query" or not self.expand.active or not generated:
            return own
        made = Item.make("target", generated, None)
        if self.expand.mode == "alone":
            return [View(m, made, 1.0 / n) for m in range(n)]
        w = self.expand.weight
        return [View(m, item, (1 - w) / n) for m in range(n)] + [View(m, made, w / n) for m in range(n)]

    def describe(self) -> dict[str, Any]:
        """For results and the derived store's name: the members and the expansion settings."""
        out: dict[str, Any] = {"combine": COMBINE}
        if self.ensemble:
            out["ensemble"] = [m.describe()["name"] for m in self.members]
        if self.expand.active:
            out["expand"] = self.expand.describe()
        return out


def combined_key(parts: Sequence[tuple[str, float]]) -> str:
    """The key of a combined vector: a hash of its views' store keys and weights (in view order)."""
    digest = hashlib.sha256(json.dumps([[k, round(w, 12)] for k, w in parts]).encode()).hexdigest()[:24]
    return f"v-{digest}"


def combine(vectors: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """The weighted mean of the L2-normalised rows of ``vectors`` (fp32)."""
    w = torch.tensor(list(weights), dtype=torch.float32, device=vectors.device)
    unit = F.normalize(vectors.float(), dim=-1)
    return (w[:, None] * unit).sum(0) / w.sum()


def write_combined(source: ShardStore, derived: ShardStore, parts: Mapping[str, Sequence[tuple[str, float]]],
                   setting: str | None = None, chunk: int = 4096) -> int:
    """Write every combined vector of ``parts`` (combined key -> its views' (store key, weight)) that ``derived``
    lacks, from the views in ``source``, in shards of ``chunk``; returns how many were written."""
    todo = [k for k in parts if k not in derived]
    for start in range(0, len(todo), chunk):
        keys = todo[start : start + chunk]
        needed = sorted({view for k in keys for view, _ in parts[k]})
        rows = {view: i for i, view in enumerate(needed)}
        vectors = source.gather(needed)
        out = torch.stack([combine(vectors[[rows[v] for v, _ in parts[k]]], [w for _, w in parts[k]]) for k in keys])
        path = Path(derived.folder) / shard_name(keys)
        write_shard(path, keys, out, setting)
        derived.add(path, keys)
    return len(todo)
