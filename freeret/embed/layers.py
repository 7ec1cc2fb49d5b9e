"""Which point of the residual stream an embedding is read from.

A point is ``attn`` (after layer i's self-attention and its residual add: h^Attn_i),
``mlp`` (after layer i's MLP: the layer output, h^MLP_i) or ``final_norm`` (the last
layer's output after the final norm, as E5-V and ``hidden_states[-1]`` use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from freeret.errors import ConfigError

POINTS = ("attn", "mlp", "final_norm")


@dataclass(frozen=True)
class LayerSpec:
    """A sub-layer point; ``index`` may be negative (-1 is the last layer)."""

    point: str = "attn"
    index: int = -1
    apply_final_norm: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ConfigError(f"layer.point={self.point!r} is not one of {', '.join(POINTS)}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "LayerSpec":
        """Build from a ``conf/layer`` mapping."""
        return cls(
            point=str(cfg.get("point", "attn")),
            index=int(cfg.get("index", -1)),
            apply_final_norm=bool(cfg.get("apply_final_norm", False)),
            name=cfg.get("name"),
        )

    def resolve(self, num_layers: int) -> int:
        """Absolute layer index for a model with ``num_layers`` decoder layers."""
        if self.point == "final_norm":
            return num_layers - 1
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
