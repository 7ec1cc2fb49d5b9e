"""Which weights run and how: :class:`ModelSpec`, a ``conf/model`` entry checked before anything loads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from freeret.backbone.families import get_family
from freeret.errors import ConfigError
from freeret.registry import Registry

MODEL_SOURCES: Registry[Callable[[ModelSpec], tuple[str, str | None]]] = Registry("model.source", {
    "hub": "freeret.backbone.loading:hub_source",              # model.hf_id from the HF cache or hub
    "embedded": "freeret.backbone.embedded:embedded_source",   # a GGUF shipped in a pip package (SmolLM2, Gemma 3)
    "tiny": "freeret.toy.models:tiny_source",                  # a random-weight toy VLM built in code (tiny_*)
})
"""Where ``model.source`` finds a checkpoint: each entry takes the :class:`ModelSpec` and returns (where, revision)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate: one model over several GPUs


@dataclass(frozen=True)
class ModelSpec:
    """Everything that says which weights run and how (a ``conf/model`` entry)."""

    name: str
    family: str = "text"
    source: str = "hub"
    hf_id: str | None = None
    path: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    min_pixels: int | None = None
    max_pixels: int | None = None
    chat_template: bool = True
    system_prompt: str | None = None
    trust_remote_code: bool = False
    device_map: str | None = None
    image_processor: str = "auto"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> ModelSpec:
        """Build from a ``conf/model`` mapping, rejecting unknown keys and values before any load."""
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(sorted(unknown))}")
        spec = cls(**dict(cfg))
        get_family(spec.family)
        MODEL_SOURCES.check(spec.source)
        if spec.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={spec.dtype!r} is not one of {', '.join(DTYPES)}")
        if spec.source == "hub" and not (spec.hf_id or spec.path):
            raise ConfigError(f"model '{spec.name}' needs model.hf_id or model.path")
        if spec.device_map is not None and spec.device_map not in DEVICE_MAPS:
            raise ConfigError(f"model.device_map={spec.device_map!r} is not one of null, {', '.join(DEVICE_MAPS)}")
        from freeret.backbone.processors import image_backend

        image_backend(spec.image_processor)  # a bad value, or torchvision asked for where it does not import
        return spec

    @property
    def from_hub(self) -> bool:
        """Whether the weights come from the HF hub (cache) by id rather than from a folder."""
        return self.source == "hub" and not self.path
