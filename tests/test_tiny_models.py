"""Tiny random vision-language checkpoints: build, reload, processor batches and forwards, offline."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data as skdata
from transformers import AutoModelForImageTextToText

from freeret.backbone.embedded import embedded_checkpoint
from freeret.backbone.families import get_family
from freeret.backbone.processors import (
    IMAGE_TOKEN_CONTENT,
    load_processor,
    processor_inputs,
)
from freeret.errors import CheckpointNotFoundError, UnknownNameError
from freeret.paths import cache_dir
from freeret.toy import models as toy_models
from freeret.toy.chat import render_chat
from freeret.toy.models import QWEN2_VL_CHAT_TEMPLATE, TINY_FAMILIES, tiny_checkpoint


def recipe(family: str):
    """The processor recipe the family adapter hands to ``load_processor`` / ``processor_inputs``."""
    return get_family(family).processor


TEXTS = ["Hi.", "A much longer sentence about an astronaut who drinks a cup of coffee in space."]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The SmolLM2 checkpoint (from the normal cache) that the tiny tokenizers build on."""
    try:
        ckpt_dir, _ = embedded_checkpoint("smollm2_135m")
    except CheckpointNotFoundError as err:
        pytest.skip(str(err))
    return ckpt_dir


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Iterator[Path]:
    """A fresh FREERET_CACHE for the whole session, reusing the already converted SmolLM2 tokenizer."""
    root = tmp_path_factory.mktemp("freeret-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREERET_CACHE", str(root))
        mp.setattr(toy_models, "embedded_checkpoint", lambda name: (smollm2_dir, "test"))
        yield root


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Two real photos of different sizes and aspect ratios."""
    astronaut = Image.fromarray(skdata.astronaut()).resize((64, 64))
    coffee = Image.fromarray(skdata.coffee()).resize((80, 60))
    return [astronaut, coffee]


def _check_batch(model: torch.nn.Module, batch, vocab_size: int) -> None:
    """Left padding puts a real token last, the shorter prompt is padded, and the forward gives full logits."""
    mask = batch["attention_mask"]
    assert bool(mask[:, -1].all())
    assert bool((mask[:, 0] == 0).any()), "the shorter prompt should be left padded"
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, vocab_size)
    assert bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_model_forward(family: str, tiny_cache: Path, images: list[Image.Image]) -> None:
    path = tiny_checkpoint(family)
    assert path == cache_dir() / "tiny" / f"{family}-v1"
    assert path.is_relative_to(tiny_cache)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = load_processor(recipe(family), path)
    assert processor.tokenizer.padding_side == "left"
    vocab_size = len(processor.tokenizer)
    assert model.config.text_config.vocab_size == vocab_size

    decoder = model.get_decoder()
    assert len(decoder.layers) == 4
    assert "RMSNorm" in type(decoder.norm).__name__
    assert decoder.layers[-1].post_attention_layernorm is not None

    image_id = processor.image_token_id
    text_prompts = [render_chat(processor, text, 0) for text in TEXTS]
    text_batch = processor_inputs(recipe(family), processor, text_prompts, None)
    assert "pixel_values" not in text_batch
    assert not bool((text_batch["input_ids"] == image_id).any())
    _check_batch(model, text_batch, vocab_size)

    image_prompts = [render_chat(processor, text, 1) for text in TEXTS]
    image_batch = processor_inputs(recipe(family), processor, image_prompts, [[images[0]], [images[1]]])
    assert "pixel_values" in image_batch
    assert bool(((image_batch["input_ids"] == image_id).sum(dim=1) > 0).all())
    _check_batch(model, image_batch, vocab_size)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_render_chat_matches_plain_apply_chat_template(family: str, tiny_cache: Path) -> None:
    processor = load_processor(recipe(family), tiny_checkpoint(family))
    content = [dict(IMAGE_TOKEN_CONTENT), {"type": "text", "text": "caption"}]
    plain = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    assert render_chat(processor, "caption", 1) == plain
    assert "caption" in render_chat(processor, "caption", 0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_build_is_deterministic(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_dir: Path
) -> None:
    monkeypatch.setattr(toy_models, "embedded_checkpoint", lambda name: (smollm2_dir, "test"))
    weights = []
    for name in ("a", "b"):
        monkeypatch.setenv("FREERET_CACHE", str(tmp_path / name))
        path = tiny_checkpoint(family)
        assert path.is_relative_to(tmp_path / name)
        weights.append(load_file(path / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key

    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_checkpoint(family) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp, "second call should reuse the build"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary build folder left behind"


def test_tiny_seed_changes_weights(tiny_cache: Path) -> None:
    seeded = tiny_checkpoint("qwen2_vl", seed=1)
    assert seeded != tiny_checkpoint("qwen2_vl")
    a = load_file(tiny_checkpoint("qwen2_vl") / "model.safetensors")
    b = load_file(seeded / "model.safetensors")
    assert any(not torch.equal(a[key], b[key]) for key in a)


def test_load_processor_legacy_qwen_layout(tiny_cache: Path, tmp_path: Path) -> None:
    """A folder laid out like Qwen/Qwen2-VL-7B-Instruct: chat_template.json and a min/max_pixels preprocessor config."""
    src = tiny_checkpoint("qwen2_vl")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}))
    preprocessor = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))

    processor = load_processor(recipe("qwen2_vl"), tmp_path)
    assert processor.chat_template == QWEN2_VL_CHAT_TEMPLATE
    assert (processor.image_processor.size.shortest_edge, processor.image_processor.size.longest_edge) == (
        3136,
        12845056,
    )
    limited = load_processor(recipe("qwen2_vl"), tmp_path, min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)
    assert (limited.image_processor.size.shortest_edge, limited.image_processor.size.longest_edge) == (
        4 * 28 * 28,
        16 * 28 * 28,
    )
    batch = processor_inputs(
        recipe("qwen2_vl"), limited, [render_chat(limited, "x", 1)], [[Image.new("RGB", (400, 400))]]
    )
    assert int((batch["input_ids"] == limited.image_token_id).sum()) == 16


def test_load_processor_errors(tiny_cache: Path) -> None:
    with pytest.raises(UnknownNameError, match="unknown model family 'blip'"):  # the family registry's one error
        load_processor(get_family("blip").processor, tiny_checkpoint("qwen2_vl"))
    with pytest.raises(ValueError, match="Qwen families only"):
        load_processor(recipe("idefics3"), tiny_checkpoint("idefics3"), max_pixels=1000)
    with pytest.raises(OSError):
        load_processor(recipe("qwen2_vl"), tiny_cache / "missing", local_files_only=True)
