"""Backbones for the benchmarks: the real SmolLM2, or a random-weight Qwen2-VL with the real 2B widths.

Speed does not depend on weight values, so a random model with Qwen2-VL-2B-Instruct's text widths (hidden 1536,
MLP 8960, 12 query heads, 2 KV heads, vocabulary 151,936, tied embeddings) times what the real one would, per
layer. The number of decoder layers (28 in the real model) and of vision blocks (32) are arguments so a CPU run
stays short; the vision tower keeps its real widths (1280 wide, 16 heads, 14 px patches, 2x2 merge). The
tokenizer is SmolLM2's with the Qwen-VL special tokens and the real Qwen2-VL chat template (from
``freeret.toy.models``), so token counts differ a little from Qwen's own tokenizer.

Where SmolLM2's real weights are absent (the offline GPU host: its package is 88.6 MiB), ``weights="auto"`` builds
SmolLM2-135M-Instruct's exact shape with seeded random weights from its saved tokenizer and config
(``.gpu_bundle/smollm2_135m``, written by scripts/gpu_bundle.sh; ``$FREERET_SMOLLM2_CONFIG`` overrides).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from _common import REPO, conf
from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.backbone import Backbone
from freeret.backbone.families import get_family
from freeret.backbone.processors import Qwen2VLImageOnlyProcessor
from freeret.errors import CheckpointNotFoundError
from freeret.toy.models import (
    QWEN2_VL_CHAT_TEMPLATE,
    QWEN_VL_TOKENS,
    special_token_ids,
    toy_tokenizer,
)

QWEN2VL_2B_TEXT: dict[str, Any] = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151_936,
    "max_position_embeddings": 32_768,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
}
QWEN2VL_2B_VISION: dict[str, Any] = {"embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
                                     "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def qwen2vl_2b_dims(layers: int = 28, vision_depth: int = 32, max_pixels: int = 448 * 448, seed: int = 0) -> Backbone:
    """Random-weight Qwen2-VL with Qwen2-VL-2B widths and ``layers`` decoder layers, fp32 on CPU."""
    tokenizer = toy_tokenizer(QWEN2_VL_CHAT_TEMPLATE, QWEN_VL_TOKENS)
    tokenizer.padding_side = "left"
    start, end, image, video = special_token_ids(tokenizer, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    text = {**QWEN2VL_2B_TEXT, "num_hidden_layers": layers, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = Qwen2VLConfig(text_config=text, vision_config={**QWEN2VL_2B_VISION, "depth": vision_depth},
                           image_token_id=image, video_token_id=video, vision_start_token_id=start,
                           vision_end_token_id=end, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14,
                                               temporal_patch_size=2, merge_size=2)
    processor = Qwen2VLImageOnlyProcessor(image_processor, tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE)
    spec = ModelSpec(name=f"qwen2vl_2b_dims_random_{layers}l", family="qwen2_vl", source="hub",
                     hf_id="(random weights, Qwen2-VL-2B widths)", max_pixels=max_pixels)
    return Backbone(spec=spec, family=get_family("qwen2_vl"), model=model, processor=processor, tokenizer=tokenizer)


def smollm2_config_dir() -> Path:
    """Where SmolLM2's saved tokenizer and config are: ``$FREERET_SMOLLM2_CONFIG`` or ``.gpu_bundle/smollm2_135m``."""
    return Path(os.environ.get("FREERET_SMOLLM2_CONFIG") or REPO / ".gpu_bundle" / "smollm2_135m")


def smollm2_random(folder: Path, seed: int = 0) -> Backbone:
    """SmolLM2-135M-Instruct's exact shape with seeded random weights (speed does not depend on the values)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise CheckpointNotFoundError(f"no SmolLM2 config in {folder}: run `bash scripts/gpu_bundle.sh` where the "
                                      "real model is installed")
    spec = ModelSpec.from_dict(conf("model", "smollm2_135m"))
    family = get_family(spec.family)
    processor, tokenizer = family.load_processor(folder)
    config = AutoConfig.from_pretrained(folder)
    config._attn_implementation = spec.attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    random_spec = ModelSpec(name="smollm2_135m_random", family=spec.family, source="hub",
                            hf_id="(random weights, SmolLM2-135M-Instruct shape)")
    return Backbone(spec=random_spec, family=family, model=model, processor=processor, tokenizer=tokenizer)


def load(name: str, layers: int = 28, vision_depth: int = 2) -> Backbone:
    """A ``conf/model`` entry (e.g. smollm2_135m), or ``qwen2vl_2b_dims`` (random, real widths)."""
    return load_weights(name, layers, vision_depth, "real")[0]


def load_weights(name: str, layers: int = 28, vision_depth: int = 2, weights: str = "real") -> tuple[Backbone, str]:
    """(backbone, "real" or "random"): a ``conf/model`` entry (e.g. smollm2_135m), or ``qwen2vl_2b_dims`` (random,
    real widths). ``weights``: ``real``; ``random`` (SmolLM2's shape); ``auto`` = real where present, else random."""
    if name == "qwen2vl_2b_dims":
        return qwen2vl_2b_dims(layers, vision_depth), "random"
    if weights != "real" and name != "smollm2_135m":
        raise ValueError(f"random weights are built for smollm2_135m only, not {name}")
    if weights == "random":
        return smollm2_random(smollm2_config_dir()), "random"
    try:
        return load_backbone(ModelSpec.from_dict(conf("model", name))), "real"
    except CheckpointNotFoundError:
        if weights == "real":
            raise
        return smollm2_random(smollm2_config_dir()), "random"
