"""Label-free post-processing of stored embeddings, applied when scoring (the shards keep the raw vectors).

The pooled states of a decoder are extremely anisotropic (unrelated items at cosine ~0.97): a few directions
shared by every vector swamp the ones that tell items apart. Each method removes them with statistics that use
no label, only vectors:

- ``center``: subtract the mean vector (arXiv 2511.11041).
- ``abtt``: all-but-the-top (Mu et al. 2017, arXiv 1702.01417): subtract the mean, then the projections on the
  top ``d`` principal directions of the centred vectors.
- ``lmhead_filter``: EmbedFilter-style (arXiv 2606.07502): project out the LM-head (unembedding) matrix's
  ``top`` leading and ``bottom`` trailing right-singular directions, the "edge spectrum" through which the model
  writes frequent tokens; needs no corpus (``center: true`` subtracts the corpus mean first).
- ``whiten``: PCA whitening (subtract the mean, rotate onto the principal axes, divide by their standard
  deviations; ``dim`` keeps the leading axes), for comparison: reported to hurt.

Statistics are fitted on the run's own embedded items (``fit_on: items``: queries and candidates together;
``roles``: each role its own), or on a named unlabeled corpus embedded the same way (``fit_on: corpus``). They are
a dict of tensors with a content hash (:attr:`Statistics.digest`), written beside the shards and recorded in
results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from freeret.atomic_files import write_bytes_atomic
from freeret.errors import ConfigError

METHODS = ("none", "center", "abtt", "lmhead_filter", "whiten")
FIT_ON = ("items", "roles", "corpus")
ROLES = ("query", "target")


@dataclass(frozen=True)
class PostprocessSpec:
    """One ``conf/postprocess`` entry: the method and its parameters."""

    name: str = "none"
    d: int = 1  # abtt: principal directions removed after centring
    top: int = 1  # lmhead_filter: leading singular directions removed
    bottom: int = 0  # lmhead_filter: trailing singular directions removed
    center: bool = False  # lmhead_filter: subtract the fitted mean first
    dim: int | None = None  # whiten: keep this many principal axes (None = all with non-zero variance)
    eps: float = 1e-6  # whiten: added to each variance
    fit_on: str = "items"
    max_fit_items: int | None = None  # fit on a seeded sample of at most this many vectors per group (None = all)
    corpus: Mapping[str, Any] | None = None  # fit_on=corpus: a dataset config whose items (not rows) are embedded

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ConfigError(f"postprocess.name={self.name!r} is not one of {', '.join(METHODS)}")
        if self.fit_on not in FIT_ON:
            raise ConfigError(f"postprocess.fit_on={self.fit_on!r} is not one of {', '.join(FIT_ON)}")
        if self.fit_on == "corpus" and not self.corpus and self.needs_fit:
            raise ConfigError("postprocess.fit_on=corpus needs postprocess.corpus: a dataset config, e.g. "
                              "+dataset@postprocess.corpus=wordnet_rd_dev")
        for key in ("d", "top", "bottom"):
            if int(getattr(self, key)) < 0:
                raise ConfigError(f"postprocess.{key}={getattr(self, key)} must be >= 0")
        if self.dim is not None and int(self.dim) < 1:
            raise ConfigError(f"postprocess.dim={self.dim} must be >= 1 or null")
        if self.max_fit_items is not None and int(self.max_fit_items) < 2:
            raise ConfigError(f"postprocess.max_fit_items={self.max_fit_items} must be >= 2 or null")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> PostprocessSpec:
        """Build from a ``conf/postprocess`` mapping (None = no post-processing); unknown keys are refused."""
        cfg = dict(cfg or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"unknown postprocess key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**cfg)

    @property
    def needs_fit(self) -> bool:
        """Whether the method needs corpus statistics (``lmhead_filter`` alone needs only the weights)."""
        return self.name in ("center", "abtt", "whiten") or (self.name == "lmhead_filter" and self.center)

    @property
    def groups(self) -> tuple[str, ...]:
        """The statistics groups: one shared by both roles, or one per role."""
        return ROLES if self.fit_on == "roles" else ("all",)

    def group(self, role: str) -> str:
        """The statistics group that transforms vectors of ``role``."""
        return role if self.fit_on == "roles" else "all"

    def describe(self) -> dict[str, Any]:
        """The parameters that shape the transform (for results and the statistics' identity)."""
        keys = {"abtt": ("d",), "lmhead_filter": ("top", "bottom", "center"), "whiten": ("dim", "eps")}
        out: dict[str, Any] = {"name": self.name, **{k: getattr(self, k) for k in keys.get(self.name, ())}}
        if self.needs_fit:
            out.update(fit_on=self.fit_on, max_fit_items=self.max_fit_items)
            if self.fit_on == "corpus":
                out["corpus"] = (self.corpus or {}).get("name")
        return out

    @property
    def label(self) -> str:
        """A short name for tables and summary lines, e.g. ``abtt(d=2)``."""
        params = {k: v for k, v in self.describe().items() if k not in ("name", "max_fit_items", "eps")
                  and v not in (None, False, 0, "items")}
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")


def _sample(x: torch.Tensor, limit: int | None, seed: int = 0) -> torch.Tensor:
    if limit is None or x.shape[0] <= limit:
        return x
    gen = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=gen)[:limit].sort().values]


def principal_axes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(axes as columns, variances), largest first, of already centred rows ``x`` (fp64 SVD)."""
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    variances = s**2 / max(1, x.shape[0] - 1)
    axes = vh.T
    # a sign convention, so the same data gives the same stored axes on any BLAS
    flip = torch.sign(axes[axes.abs().argmax(0), torch.arange(axes.shape[1])])
    return axes * flip, variances


def lmhead_directions(head: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """(hidden, top + bottom) right-singular vectors of the (vocab, hidden) LM-head matrix: the ``top`` with the
    largest and the ``bottom`` with the smallest singular values."""
    _, _, vh = torch.linalg.svd(head.double(), full_matrices=False)
    picked = [vh[:top]] + ([vh[vh.shape[0] - bottom:]] if bottom else [])
    return torch.cat(picked).T


def fit(spec: PostprocessSpec, vectors: Mapping[str, torch.Tensor], head: torch.Tensor | None = None,
        seed: int = 0) -> Statistics:
    """Statistics for ``spec`` from raw vectors per group (``spec.groups``) and, for ``lmhead_filter``, the LM-head
    weight. Only vectors enter: no row, label or positive."""
    tensors: dict[str, torch.Tensor] = {}
    if spec.name == "lmhead_filter":
        if head is None:
            raise ConfigError("postprocess=lmhead_filter needs the model's LM head (output embeddings)")
        tensors["filter"] = lmhead_directions(head, int(spec.top), int(spec.bottom)).float()
    if spec.needs_fit:
        for group in spec.groups:
            x = vectors.get(group)
            if x is None or x.shape[0] < 2:
                raise ConfigError(f"postprocess={spec.name} needs at least 2 vectors to fit on ({group}: "
                                  f"{0 if x is None else x.shape[0]})")
            x = _sample(x.double(), spec.max_fit_items, seed)
            mean = x.mean(0)
            tensors[f"{group}.mean"] = mean.float()
            if spec.name in ("abtt", "whiten"):
                axes, variances = principal_axes(x - mean)
                if spec.name == "abtt":
                    if int(spec.d) > axes.shape[1]:
                        raise ConfigError(f"postprocess.d={spec.d} exceeds the {axes.shape[1]} principal directions "
                                          f"of {x.shape[0]} vectors")
                    tensors[f"{group}.axes"] = axes[:, : int(spec.d)].float()
                else:
                    keep = int((variances > variances[0] * 1e-10).sum())
                    keep = min(keep, int(spec.dim)) if spec.dim else keep
                    tensors[f"{group}.axes"] = axes[:, :keep].float()
                    tensors[f"{group}.scale"] = (variances[:keep] + spec.eps).rsqrt().float()
    return Statistics(spec, tensors, {g: int(v.shape[0]) for g, v in vectors.items()})


@dataclass
class Statistics:
    """Fitted statistics: tensors by name (``<group>.mean``, ``<group>.axes``, ``<group>.scale``, ``filter``)."""

    spec: PostprocessSpec
    tensors: dict[str, torch.Tensor]
    fitted_on: dict[str, int]

    @property
    def digest(self) -> str:
        """sha256 of the method's parameters and every tensor's bytes (recorded in results)."""
        h = hashlib.sha256(json.dumps(self.spec.describe(), sort_keys=True).encode())
        for name in sorted(self.tensors):
            t = self.tensors[name].contiguous()
            h.update(name.encode() + b"\0" + str(tuple(t.shape)).encode() + t.numpy().tobytes())
        return h.hexdigest()

    def apply(self, x: torch.Tensor, role: str) -> torch.Tensor:
        """Transform raw vectors (n, hidden) of ``role`` (fp32 out; cosine follows)."""
        spec = self.spec
        x = x.float()
        if spec.name == "none":
            return x
        group = spec.group(role)
        if spec.needs_fit:
            x = x - self.tensors[f"{group}.mean"]
        if spec.name == "abtt":
            axes = self.tensors[f"{group}.axes"]
            x = x - (x @ axes) @ axes.T
        elif spec.name == "whiten":
            x = (x @ self.tensors[f"{group}.axes"]) * self.tensors[f"{group}.scale"]
        elif spec.name == "lmhead_filter":
            filt = self.tensors["filter"]
            x = x - (x @ filt) @ filt.T
        return x

    def summary(self) -> dict[str, Any]:
        """What results record: the method, its parameters, how many vectors it was fitted on, the digest."""
        return {**self.spec.describe(), "label": self.spec.label, "fitted_on": self.fitted_on,
                "statistics_sha256": self.digest}

    def save(self, folder: Path, setting: str | None = None) -> Path:
        """Write ``<folder>/postprocess/postprocess-<digest[:16]>.safetensors`` (atomically; kept if already there).
        A subfolder: the shard store reads every ``*.safetensors`` in ``folder`` as a shard."""
        from safetensors.torch import save

        path = Path(folder) / "postprocess" / f"postprocess-{self.digest[:16]}.safetensors"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {"spec": json.dumps(self.spec.describe(), sort_keys=True), "fitted_on": json.dumps(self.fitted_on),
                    "sha256": self.digest}
            write_bytes_atomic(path, save({k: v.contiguous() for k, v in self.tensors.items()}, metadata=meta), setting)
        return path

    @classmethod
    def load(cls, spec: PostprocessSpec, path: Path) -> Statistics:
        """Read statistics written by :meth:`save` (for inspection; runs refit, which is cheap)."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
        return cls(spec, load_file(str(path)), json.loads(meta["fitted_on"]))


IDENTITY = Statistics(PostprocessSpec(), {}, {})
