"""Toy models: tiny random-weight vision-language checkpoints of the real architectures, built in code.

``model.source=tiny`` (``conf/model/tiny_*.yaml``) loads them like any checkpoint (:func:`tiny_source`), so the
whole pipeline runs offline with the real model classes, processors and chat templates; their scores are noise.

Each family gets its real model class with a 4-layer, 64-wide text decoder and a
2-layer vision tower, the SmolLM2 tokenizer plus the family's special tokens and
its real chat template, and the family's PIL image processor sized for 32-112 px
inputs. Weights come from ``torch.manual_seed(seed)``, so a build is reproducible.
A build is saved once under ``cache_dir()/"tiny"`` and reused afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoTokenizer,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from freeret.backbone.embedded import embedded_checkpoint
from freeret.backbone.families import get_family, vision_families
from freeret.errors import CheckpointNotFoundError
from freeret.paths import cache_dir
from freeret.registry import Registry

if TYPE_CHECKING:
    from freeret.backbone.spec import ModelSpec

log = logging.getLogger(__name__)

TINY_FAMILIES: tuple[str, ...] = vision_families()  # every vision family of the registry has a builder below
TINY_VERSION = "v1"
TINY_REVISION = "tiny-random-seed0"  # the revision a run records for a toy model (seed 0, the only one configs use)

# Chat templates as the real checkpoints ship them (Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct,
# HuggingFaceTB/SmolVLM-256M-Instruct, llava-hf/llava-onevision-qwen2-7b-ov-hf, OpenGVLab/InternVL3-2B-hf).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

QWEN_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
IDEFICS3_TOKENS = (
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)
LLAVA_ONEVISION_TOKENS = ("<image>", "<video>")
INTERNVL_NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]}
SIGLIP_SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
LLAVA_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class TinyParts:
    """Everything a tiny checkpoint is made of, before saving."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    processor_kwargs: dict[str, Any]


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer's folder: the embedded checkpoint, or where its package is not installed (the offline
    GPU host) the saved copy at ``$FREERET_SMOLLM2_CONFIG`` (``.gpu_bundle/smollm2_135m``, scripts/gpu_bundle.sh)."""
    try:
        return embedded_checkpoint("smollm2_135m")[0]
    except CheckpointNotFoundError:
        saved = os.environ.get("FREERET_SMOLLM2_CONFIG")
        if saved and (Path(saved) / "tokenizer.json").is_file():
            return Path(saved)
        raise


def _base_tokenizer(**kwargs: Any) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (see :func:`smollm2_tokenizer_dir`)."""
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(), **kwargs)


def toy_tokenizer(
    chat_template: str, tokens: tuple[str, ...] = (), named: dict[str, str] | None = None
) -> PreTrainedTokenizerBase:
    """SmolLM2 tokenizer with ``tokens`` (or ``named`` attribute tokens) added as special tokens and a chat template."""
    tokenizer = _base_tokenizer(extra_special_tokens=named) if named else _base_tokenizer()
    if tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
    tokenizer.chat_template = chat_template
    return tokenizer


def _text_config(tokenizer: PreTrainedTokenizerBase, **extra: Any) -> dict[str, Any]:
    """Text decoder sizes with the tokenizer's vocabulary and special-token ids."""
    return {
        **TEXT_SIZES,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **extra,
    }


def special_token_ids(tokenizer: PreTrainedTokenizerBase, *tokens: str) -> list[int]:
    """Token ids of special tokens that must exist in the tokenizer."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if tokenizer.unk_token_id in ids:
        raise RuntimeError(f"special tokens {tokens} are not all in the tokenizer")
    return ids


def _init_model(model_class: type[PreTrainedModel], config: PreTrainedConfig, seed: int) -> PreTrainedModel:
    """Instantiate ``model_class`` with weights drawn after ``torch.manual_seed(seed)``; the global RNG is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).to(torch.float32).eval()


def _qwen_parts(family: str, seed: int) -> TinyParts:
    """Qwen2-VL or Qwen2.5-VL: ChatML tokenizer, M-RoPE text model, 2-block vision tower with 14 px patches."""
    tokenizer = toy_tokenizer(QWEN2_VL_CHAT_TEMPLATE, QWEN_VL_TOKENS)
    start, end, image, video = special_token_ids(tokenizer, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    token_ids = {
        "image_token_id": image,
        "video_token_id": video,
        "vision_start_token_id": start,
        "vision_end_token_id": end,
    }
    text_config = _text_config(tokenizer, rope_parameters=dict(QWEN_ROPE))
    vision_common = {"depth": 2, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    config: PreTrainedConfig
    if family == "qwen2_vl":
        vision = {**vision_common, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}
        config = Qwen2VLConfig(text_config=text_config, vision_config=vision, **token_ids)
        model = _init_model(Qwen2VLForConditionalGeneration, config, seed)
    else:
        vision = {
            **vision_common,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        }
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision, **token_ids)
        model = _init_model(Qwen2_5_VLForConditionalGeneration, config, seed)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return TinyParts(model, tokenizer, image_processor, {})


def _idefics3_parts(seed: int) -> TinyParts:
    """Idefics3 (SmolVLM): SigLIP-style tower on 32 px tiles, pixel shuffle by 2 so 4 tokens per tile."""
    tokenizer = toy_tokenizer(IDEFICS3_CHAT_TEMPLATE, IDEFICS3_TOKENS)
    (image,) = special_token_ids(tokenizer, "<image>")
    config = Idefics3Config(
        text_config=_text_config(tokenizer), vision_config=dict(SIGLIP_SIZES), scale_factor=2, image_token_id=image
    )
    model = _init_model(Idefics3ForConditionalGeneration, config, seed)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 32},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image_seq_len = (SIGLIP_SIZES["image_size"] // SIGLIP_SIZES["patch_size"]) ** 2 // 2**2
    return TinyParts(model, tokenizer, image_processor, {"image_seq_len": image_seq_len})


def _llava_onevision_parts(seed: int) -> TinyParts:
    """LLaVA-OneVision: SigLIP tower on 32 px crops with any-resolution pinpoints up to 64 px."""
    tokenizer = toy_tokenizer(LLAVA_ONEVISION_CHAT_TEMPLATE, LLAVA_ONEVISION_TOKENS)
    image, video = special_token_ids(tokenizer, "<image>", "<video>")
    config = LlavaOnevisionConfig(
        text_config={**_text_config(tokenizer), "model_type": "qwen2"},
        vision_config={**SIGLIP_SIZES, "model_type": "siglip_vision_model"},
        image_token_index=image,
        video_token_index=video,
        image_grid_pinpoints=LLAVA_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    model = _init_model(LlavaOnevisionForConditionalGeneration, config, seed)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32},
        image_grid_pinpoints=LLAVA_PINPOINTS,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    num_image_tokens = (SIGLIP_SIZES["image_size"] // SIGLIP_SIZES["patch_size"]) ** 2
    processor_kwargs = {
        "num_image_tokens": num_image_tokens,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
        "image_token": "<image>",
        "video_token": "<video>",
    }
    return TinyParts(model, tokenizer, image_processor, processor_kwargs)


def _internvl_parts(seed: int) -> TinyParts:
    """InternVL (3-hf layout): InternViT-style tower on 32 px tiles, pixel shuffle 0.5 so 4 tokens per tile."""
    tokenizer = toy_tokenizer(INTERNVL_CHAT_TEMPLATE, named=INTERNVL_NAMED_TOKENS)
    (image,) = special_token_ids(tokenizer, INTERNVL_NAMED_TOKENS["context_image_token"])
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    image_seq_length = int((vision["image_size"] // vision["patch_size"]) ** 2 * 0.5**2)
    config = InternVLConfig(
        text_config={**_text_config(tokenizer), "model_type": "qwen2"},
        vision_config=vision,
        image_token_id=image,
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = _init_model(InternVLForConditionalGeneration, config, seed)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32},
        crop_to_patches=False,
        min_patches=1,
        max_patches=4,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    return TinyParts(model, tokenizer, image_processor, {"image_seq_length": image_seq_length})


BUILDERS: Registry[Callable[[int], TinyParts]] = Registry("tiny model family",
                                                          message="no tiny model for family {name!r}; known: {known}")
"""Each vision family's toy builder (seed -> parts); an unknown family is the registries' UnknownNameError."""
BUILDERS.add("qwen2_vl", lambda seed: _qwen_parts("qwen2_vl", seed))
BUILDERS.add("qwen2_5_vl", lambda seed: _qwen_parts("qwen2_5_vl", seed))
BUILDERS.add("idefics3", _idefics3_parts)
BUILDERS.add("llava_onevision", _llava_onevision_parts)
BUILDERS.add("internvl", _internvl_parts)


def build_tiny(family: str, seed: int = 0) -> TinyParts:
    """Build (without saving) the tiny model, tokenizer and image processor of ``family``."""
    return BUILDERS[family](seed)


def _save(family: str, parts: TinyParts, out: Path) -> None:
    """Write model, tokenizer, image processor, processor options and chat template like a hub checkpoint."""
    spec = get_family(family).processor
    processor = spec.processor_class(
        parts.image_processor, parts.tokenizer, chat_template=parts.tokenizer.chat_template, **parts.processor_kwargs
    )
    parts.model.save_pretrained(out)
    processor.save_pretrained(out)
    parts.image_processor.save_pretrained(out)
    # Name the stock processor class (as hub checkpoints do), not the video-less subclass used to build it.
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = out / name
        if path.exists():
            data = json.loads(path.read_text())
            if "processor_class" in data:
                data["processor_class"] = spec.real_processor_name
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def tiny_checkpoint(family: str, seed: int = 0) -> Path:
    """Folder of ``family``'s tiny checkpoint, built on first use (atomically) and reused afterwards."""
    BUILDERS.check(family)
    name = f"{family}-{TINY_VERSION}" if seed == 0 else f"{family}-{TINY_VERSION}-seed{seed}"
    out = cache_dir() / "tiny" / name
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("building tiny %s checkpoint in %s", family, out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out.parent))
    try:
        _save(family, build_tiny(family, seed), tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_source(spec: ModelSpec) -> tuple[str, str | None]:
    """``model.source=tiny``: (the toy checkpoint of ``spec.family``, built on first use, its revision)."""
    return str(tiny_checkpoint(spec.family)), TINY_REVISION
