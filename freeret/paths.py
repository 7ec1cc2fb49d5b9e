"""Where FreeRet keeps converted checkpoints and built test models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root cache folder: ``$FREERET_CACHE`` or ``~/.cache/freeret``."""
    root = Path(os.environ.get("FREERET_CACHE", Path.home() / ".cache" / "freeret"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def repo_root() -> Path:
    """The source checkout (holds ``conf/`` and ``data/``)."""
    return Path(__file__).resolve().parent.parent


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids reaching the Hugging Face hub."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
