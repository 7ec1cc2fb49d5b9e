"""Load a backbone from a local dir or what ``model.source`` names (``spec.MODEL_SOURCES``: the HF hub, an embedded
package, a toy model)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from freeret.backbone.backbone import Backbone
from freeret.backbone.families import get_family
from freeret.backbone.spec import DTYPES, MODEL_SOURCES, ModelSpec
from freeret.errors import CheckpointNotFoundError
from freeret.paths import hub_offline

log = logging.getLogger(__name__)


def resolve_checkpoint(spec: ModelSpec) -> tuple[str, str | None]:
    """(where to load from, revision); fails fast with one line when weights are missing.

    A hub id found in the local HF cache resolves to the commit of its ``snapshots/<commit>/`` folder, which pins
    every later load of the run (config, tokenizer, weights) to that one snapshot.
    """
    if spec.path:
        path = Path(spec.path).expanduser()
        if not (path / "config.json").exists():
            raise CheckpointNotFoundError(
                f"model.path={spec.path} has no config.json: point it at a downloaded checkpoint folder of {spec.hf_id or spec.name}"
            )
        return str(path), spec.revision
    return MODEL_SOURCES[spec.source](spec)


def hub_source(spec: ModelSpec) -> tuple[str, str | None]:
    """``model.source=hub``: the HF id, pinned to its cached snapshot; CheckpointNotFoundError when neither the cache
    nor the hub has it."""
    assert spec.hf_id
    snapshot = hub_snapshot(spec.hf_id, spec.revision)
    if snapshot is not None:
        return spec.hf_id, snapshot.name
    if not _hub_answers(spec.hf_id, spec.revision):
        raise CheckpointNotFoundError(
            f"checkpoint {spec.hf_id} (model={spec.name}) is not in the local HF cache and the hub cannot be reached: "
            f"download it where there is a network (`hf download {spec.hf_id}`) and copy the HF cache here, "
            f"or pass model.path=/path/to/checkpoint"
        )
    return spec.hf_id, spec.revision  # downloaded by the load; load_backbone records the snapshot it landed in


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local HF cache folder ``snapshots/<commit>/`` that ``revision`` (None: main) of ``repo_id`` resolves
    to, or None when it is not cached."""
    import huggingface_hub as hub

    found = hub.try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def _hub_answers(repo_id: str, revision: str | None) -> bool:
    """True when the hub can be reached and serves the checkpoint (fast, no retries)."""
    import huggingface_hub as hub

    if hub_offline():
        return False
    try:
        hub.HfApi().model_info(repo_id, revision=revision, timeout=10)
    except Exception:  # noqa: BLE001 - any failure means the hub cannot serve it
        return False
    return True


def _load_kwargs(spec: ModelSpec, revision: str | None) -> dict[str, Any]:
    """from_pretrained kwargs: a hub revision only for hub ids; remote code only if the user asked."""
    kwargs: dict[str, Any] = {"revision": revision} if spec.from_hub else {}
    kwargs["trust_remote_code"] = spec.trust_remote_code is True  # always explicit; true only when the config says so
    return kwargs


def count_layers(spec: ModelSpec, checkpoint: tuple[str, str | None]) -> int:
    """Number of text decoder layers, read from the checkpoint's config alone (no weights)."""
    from transformers import AutoConfig

    where, revision = checkpoint
    config = AutoConfig.from_pretrained(where, **_load_kwargs(spec, revision))
    return int(config.get_text_config().num_hidden_layers)


def load_backbone(
    spec: ModelSpec, checkpoint: tuple[str, str | None] | None = None, device: str | torch.device = "cpu"
) -> Backbone:
    """Load model + processor for ``spec`` (from ``checkpoint`` if already resolved) as a :class:`Backbone`.

    The weights load straight onto ``device`` (no full copy in host memory first), or over several GPUs with
    ``spec.device_map`` (accelerate); nothing moves them afterwards.
    """
    family = get_family(spec.family)
    where, revision = checkpoint or resolve_checkpoint(spec)
    kwargs = _load_kwargs(spec, revision)
    try:
        processor, tokenizer = family.load_processor(
            where, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels, image_processor=spec.image_processor,
            **kwargs
        )
        model = family.model_class().from_pretrained(
            where, dtype=DTYPES[spec.dtype], attn_implementation=spec.attn_implementation,
            device_map=spec.device_map or torch.device(device), **kwargs
        )
    except OSError as exc:
        raise CheckpointNotFoundError(f"could not load {spec.name} from {where}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    folder = where
    if spec.from_hub:  # record the snapshot the files came from (a download lands in one too)
        snapshot = hub_snapshot(where, revision)
        folder, revision = (str(snapshot), snapshot.name) if snapshot else (None, revision)
    return Backbone(spec=spec, family=family, model=model, processor=processor, tokenizer=tokenizer,
                    revision=revision, checkpoint_dir=folder)
