"""Which point of the residual stream an embedding is read from.

A point is ``attn`` (after layer i's self-attention and its residual add: h^Attn_i),
``mlp`` (after layer i's MLP: the layer output, h^MLP_i) or ``final_norm`` (the last
layer's output after the final norm, as E5-V and ``hidden_states[-1]`` use).

An index is an int (absolute; negative counts from the end) or a float in [0, 1], a relative
depth: ``attn@0.75`` is layer round(0.75 * (L - 1)) of an L-layer model, so one config spans
model sizes (``attn@1.0`` is the last layer, ``attn@1`` the second).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from freeret.errors import ConfigError

POINTS = ("attn", "mlp", "final_norm")


@dataclass(frozen=True)
class LayerSpec:
    """A sub-layer point; ``index`` may be negative (-1 is the last layer)."""

    point: str = "attn"
    index: int | float = -1
    apply_final_norm: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ConfigError(f"layer.point={self.point!r} is not one of {', '.join(POINTS)}")
        if isinstance(self.index, float) and not 0.0 <= self.index <= 1.0:
            raise ConfigError(f"layer index {self.index} is a relative depth and must lie in [0, 1] "
                              f"(an absolute index is an integer)")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> LayerSpec:
        """Build from a ``conf/layer`` mapping."""
        return cls(
            point=str(cfg.get("point", "attn")),
            index=_index(cfg.get("index", -1)),
            apply_final_norm=bool(cfg.get("apply_final_norm", False)),
            name=cfg.get("name"),
        )

    @classmethod
    def parse(cls, text: str, apply_final_norm: bool = False) -> LayerSpec:
        """A point written ``attn@-1``, ``mlp@12``, ``attn@0.75`` (relative depth) or ``final_norm``."""
        point, _, index = str(text).partition("@")
        if point == "final_norm" and not index:
            return cls("final_norm", -1, apply_final_norm)
        if not index:
            raise ConfigError(f"layer point {text!r} needs an index: {point}@-1, {point}@12 or {point}@0.75")
        try:
            value: int | float = float(index) if "." in index else int(index)
        except ValueError as exc:
            raise ConfigError(f"layer point {text!r}: {index!r} is not an integer or a relative depth") from exc
        return cls(point, value, apply_final_norm)

    def resolve(self, num_layers: int) -> int:
        """Absolute layer index for a model with ``num_layers`` decoder layers."""
        if self.point == "final_norm":
            return num_layers - 1
        if isinstance(self.index, float):
            return int(math.floor(self.index * (num_layers - 1) + 0.5))
        idx = self.index + num_layers if self.index < 0 else self.index
        if not 0 <= idx < num_layers:
            raise ConfigError(
                f"layer.index={self.index} is out of range for a model with {num_layers} decoder layers "
                f"(use -{num_layers}..{num_layers - 1})"
            )
        return idx

    def order(self, num_layers: int) -> tuple[int, int]:
        """Position in forward order, used to stop after the deepest requested point."""
        return (self.resolve(num_layers), POINTS.index(self.point))

    @property
    def label(self) -> str:
        """Short name for logs and result files."""
        if self.name:
            return self.name
        return "final_norm" if self.point == "final_norm" else f"{self.point}@{self.index}"


def _index(value: Any) -> int | float:
    """A configured index: an int, or a float relative depth (YAML ``0.75``)."""
    if isinstance(value, float) or (isinstance(value, str) and "." in value):
        return float(value)
    return int(value)


@dataclass(frozen=True)
class Readout:
    """Which vector stage 1 reads: one or more points (``layer.points``; their pooled states averaged, each
    L2-normalised first when ``normalize_points``, since the residual stream's norm grows with depth) and the
    pooling (:class:`~freeret.embed.pooling.PoolingSpec`). ``prepend``: token prepending
    (:class:`~freeret.embed.prepend.PrependSpec`; None = none); ``lexical_k``: PromptReps, the same forward also stores
    the top-``lexical_k`` lexical weights of the next-token distribution at the last token (None = dense only)."""

    points: tuple[LayerSpec, ...]
    pooling: Any = None  # PoolingSpec; None = last token
    normalize_points: bool = True
    name: str | None = None
    prepend: Any = None  # PrependSpec; None = no token prepending
    lexical_k: int | None = None

    @classmethod
    def of(cls, spec: LayerSpec | Readout) -> Readout:
        """A readout for a single point with last-token pooling (or ``spec`` itself)."""
        return spec if isinstance(spec, Readout) else cls((spec,), name=spec.name)

    @classmethod
    def from_config(cls, layer: Mapping[str, Any], pooling: Mapping[str, Any] | None = None,
                    prepend: Mapping[str, Any] | None = None) -> Readout:
        """From ``conf/layer`` (``points: [attn@0.75, attn@-1]``, or ``point`` + ``index``), ``conf/pooling`` and
        ``conf/prepend`` (token prepending: last-token or last-k pooling only)."""
        from freeret.embed.pooling import PoolingSpec
        from freeret.embed.prepend import PrependSpec

        norm = bool(layer.get("apply_final_norm", False))
        if layer.get("points"):
            points = tuple(LayerSpec.parse(p, norm) for p in layer["points"])
        else:
            points = (LayerSpec.from_dict(layer),)
        spec = PoolingSpec.from_dict(pooling)
        tp = PrependSpec.from_dict(prepend)
        if tp.on and spec.needs_content:
            raise ConfigError(f"prepend={tp.name} takes pooling=last or last_k, not pooling={spec.label} (the placeholder "
                              f"would sit in the pooled content)")
        return cls(points, spec, bool(layer.get("normalize_points", True)), layer.get("name"), tp if tp.on else None)

    @property
    def single(self) -> bool:
        """One point, last-token pooling: the paper's readout (and its fast path)."""
        return len(self.points) == 1 and (self.pooling is None or self.pooling.name == "last")

    @property
    def label(self) -> str:
        """The layer's name, or its points joined by ``+``."""
        return self.name or "+".join(p.label for p in self.points)

    @property
    def prefix_cache_ok(self) -> bool:
        """Whether the shared-prefix fast path may run it: not with token prepending (the slot sits in the prefix)."""
        return self.prepend is None

    def resolve(self, num_layers: int) -> list[int]:
        """Every point's absolute layer index (a bad index or prepend range fails here, before weights load)."""
        if self.prepend is not None:
            self.prepend.layers(num_layers)
        return [p.resolve(num_layers) for p in self.points]

    def describe(self, num_layers: int) -> dict[str, Any]:
        """What shapes the vector besides the item (for the vector signature and results)."""
        out: dict[str, Any] = {"points": [{"point": p.point, "index": p.resolve(num_layers),
                                           "apply_final_norm": p.apply_final_norm} for p in self.points]}
        if len(self.points) > 1:
            out["normalize_points"] = self.normalize_points
        if self.pooling is not None and self.pooling.name != "last":
            out["pooling"] = self.pooling.describe()
        if self.prepend is not None:
            out["prepend"] = self.prepend.describe(num_layers)
        if self.lexical_k is not None:
            out["lexical"] = {"name": "promptreps", "k": int(self.lexical_k)}
        return out
