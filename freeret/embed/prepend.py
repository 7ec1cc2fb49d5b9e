"""Token prepending (``conf/prepend``; Fu et al. 2024, arXiv 2412.11556): a decoder's early tokens cannot see later
ones, so a placeholder slot is written right before the item's text and, at the input of each decoder layer in
``[start, end)``, the slot's hidden state is replaced by the last token's state there (the previous layer's output at
the last position): every token after the slot sees a summary of the whole prompt. The readout is unchanged.

The slot is the one token that holds ``placeholder`` (its non-blank part) in the rendered prompt; the collator writes
the placeholder right before the item's text (before every copy when a prior writes it twice; the slot is the first).
It must be exactly one token in context that does not reach into the text (checked per prompt, a one-line error
otherwise), located from the prompt's END so that left padding and image tokens expanded before the text leave it in
place. An item without text (an image alone) gets no placeholder: its slot is the last token, a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from freeret.errors import ConfigError, known_keys

PREPENDS = ("none", "tp")


@dataclass(frozen=True)
class PrependSpec:
    """One ``conf/prepend`` entry: ``end`` is exclusive, an int layer or a relative depth in [0, 1] (round(end * L),
    at least ``start + 1`` so a shallow model keeps one layer). ``placeholder`` may end in whitespace, which keeps its
    token from merging with the text (GPT-style and SentencePiece tokenizers split at a space)."""

    name: str = "none"
    start: int = 1
    end: int | float = 0.25
    placeholder: str = "* "

    def __post_init__(self) -> None:
        if self.name not in PREPENDS:
            raise ConfigError(f"prepend.name={self.name!r} is not one of {', '.join(PREPENDS)}")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ConfigError(f"prepend.start={self.start!r} must be a layer index >= 0")
        if isinstance(self.end, bool) or not isinstance(self.end, (int, float)) or \
                (isinstance(self.end, float) and not 0.0 <= self.end <= 1.0) or self.end < 0:
            raise ConfigError(f"prepend.end={self.end!r} must be a layer index >= 0 (exclusive) or a relative depth "
                              f"in [0, 1]")
        if not isinstance(self.placeholder, str) or not self.placeholder.strip():
            raise ConfigError(f"prepend.placeholder={self.placeholder!r} must be a non-blank string")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> PrependSpec:
        """Build from a ``conf/prepend`` mapping (None = none), refusing unknown keys."""
        return cls(**known_keys(cfg, cls, "prepend"))

    @property
    def on(self) -> bool:
        """Whether the slot is written and overwritten."""
        return self.name != "none"

    def layers(self, num_layers: int) -> tuple[int, int]:
        """The absolute [start, end) of layers whose input slot is overwritten; a range outside the model or an empty
        one is a one-line error (checked before weights load against the checkpoint's layer count)."""
        end = max(int(self.end * num_layers + 0.5), self.start + 1) if isinstance(self.end, float) else int(self.end)
        if not self.start < end <= num_layers:
            raise ConfigError(f"prepend: layers [start={self.start}, end={self.end} -> {end}) must be a non-empty range "
                              f"within the model's {num_layers} decoder layers")
        return self.start, end

    def describe(self, num_layers: int) -> dict[str, Any]:
        """What the vector signature and results record (resolved layers)."""
        start, end = self.layers(num_layers)
        return {"name": self.name, "start": start, "end": end, "placeholder": self.placeholder}
