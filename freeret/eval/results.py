"""Result files: one JSON per dataset with the main score and everything that shaped it."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from freeret.storage import remove_abandoned, temporaries_of, write_bytes_atomic

PACKAGES = ("freeret", "torch", "transformers", "lightning", "tokenizers", "safetensors", "torchmetrics", "pillow", "numpy")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change results."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


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


def write_text_atomic(path: Path, text: str, setting: str | None = None) -> Path:
    """Write a text file atomically under a temporary named by its writer (:mod:`freeret.storage`): readers never
    see half a file, two writers of one file never collide, and a full or read-only disk is a one-line error
    naming ``setting`` (the config key that moves the folder). Abandoned temporaries of the file are removed."""
    write_bytes_atomic(path, text.encode(), setting)
    remove_abandoned(path.parent, temporaries_of(path))
    return path


def write_json(path: Path, payload: dict[str, Any], setting: str | None = None) -> Path:
    """Write JSON atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", setting)
