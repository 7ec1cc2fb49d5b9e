"""The shared-prefix routine (freeret/backbone/shared_prefix.py) and the family registry it reads.

Its state and last-token modes are covered through their callers (tests/test_prefix.py, tests/test_rerank.py);
here: every-token log-probabilities against a plain full forward, a prefix that is never written, states and logits
on another device than the inputs (``device_map`` over several GPUs), and the one list of families.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from devicesim import on_cpu, simulated_cuda
from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.backbone import Backbone
from freeret.backbone.families import (
    FAMILIES,
    IMAGE,
    family_of,
    get_family,
    vision_families,
)
from freeret.backbone.prefix import PrefixCache
from freeret.backbone.shared_prefix import SharedPrefix
from freeret.embed.layers import LayerSpec

TEXTS = ["dog", "an old wooden ship with three tall masts and many sails", "x", "the act of running quickly"]
ATTN_LAST = LayerSpec("attn", -1)


@pytest.fixture(scope="module")
def qwen() -> Backbone:
    """A tiny Qwen2-VL of this module's own (a test moves it to the simulated GPU and back)."""
    return load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))


def _image() -> Image.Image:
    """A fixed 56x56 colour pattern (no file, no resampling)."""
    y, x = np.mgrid[0:56, 0:56]
    return Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8))


def _suffixes(bb: Backbone, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = bb.tokenizer(texts, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _plain_logprobs(bb: Backbone, prefix: dict[str, torch.Tensor], suffix: list[int]) -> torch.Tensor:
    """log P(suffix token | everything before it) from one plain forward of prefix + suffix (the model picks its own
    positions, M-RoPE included)."""
    n = prefix["input_ids"].shape[1]
    extra = torch.tensor([suffix])
    inputs = {k: v for k, v in prefix.items() if k != "position_ids"}
    inputs["input_ids"] = torch.cat([prefix["input_ids"], extra], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([prefix["mm_token_type_ids"], torch.zeros_like(extra)], 1)
    logits = bb.model(**inputs).logits[0, n - 1 : n - 1 + len(suffix)].float()
    return logits.log_softmax(-1).gather(-1, extra[0][:, None])[:, 0]


def _check_logprobs(bb: Backbone, prefix_inputs: dict[str, torch.Tensor]) -> None:
    shared = SharedPrefix(bb.model, bb.family)
    prefix = shared.run_prefix(prefix_inputs)
    ids, mask = _suffixes(bb, TEXTS)
    logp, real = shared.token_logprobs(prefix, ids, mask)
    assert logp.dtype == torch.float32 and torch.equal(real, mask.bool())
    assert torch.all(logp[~real] == 0) and torch.all(logp[real] < 0)
    for row, text in enumerate(TEXTS):
        want = _plain_logprobs(bb, prefix_inputs, ids[row][mask[row].bool()].tolist())
        assert torch.allclose(logp[row][real[row]], want, atol=1e-4), text
    # the prefix is read, never written: a second pass over it gives the same numbers
    assert torch.equal(shared.token_logprobs(prefix, ids, mask)[0], logp)
    # a scored-token mask (query likelihood: the last tokens only) reads the same numbers there and nothing else
    scored = mask.bool() & (torch.arange(ids.shape[1]) >= 1)
    part, read = shared.token_logprobs(prefix, ids, mask, scored)
    assert torch.equal(read, scored) and torch.all(part[~scored] == 0)
    assert torch.allclose(part[scored], logp[scored], atol=1e-5)


def test_token_logprobs_equal_a_plain_forward_on_smollm2(smollm):
    _check_logprobs(smollm, smollm.inputs([smollm.render("Name a thing that floats.")]))


def test_token_logprobs_after_an_image_query_on_tiny_qwen2vl(qwen):
    """The image in the prefix shifts the M-RoPE positions of every suffix token (the family's position rule)."""
    prompt = qwen.render_parts([IMAGE, "What is in the picture?"])
    inputs = qwen.inputs([prompt], [[_image()]])
    assert "pixel_values" in inputs
    _check_logprobs(qwen, inputs)
    prefix = SharedPrefix(qwen.model).run_prefix(inputs)
    assert prefix.positions.axes == 3 and prefix.positions.next < prefix.length  # merged patches: fewer positions


def test_a_stopped_prefix_refuses_what_needs_the_rest(smollm):
    shared = SharedPrefix(smollm.model)
    prefix = shared.run_prefix(smollm.inputs([smollm.render("Name a thing that floats.")]), stop_at=LayerSpec("mlp", 2))
    ids, mask = _suffixes(smollm, TEXTS[:2])
    with pytest.raises(ValueError, match="stopped at mlp@2"):
        shared.token_logprobs(prefix, ids, mask)
    with pytest.raises(ValueError, match="before attn@-1"):
        shared.states(prefix, ids, mask, ATTN_LAST)
    assert shared.states(prefix, ids, mask, LayerSpec("attn", 2)).shape == (2, smollm.model.config.hidden_size)


def _split(modules: list[torch.nn.Module], device: str):
    """Put ``modules`` on ``device`` with accelerate's hook that moves their inputs there (what ``device_map`` does)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    for module in modules:
        module.to(device)
        add_hook_to_module(module, AlignDevicesHook(execution_device=device, skip_keys="past_key_values"))


def _unsplit(modules: list[torch.nn.Module]) -> None:
    from accelerate.hooks import remove_hook_from_module

    for module in modules:
        remove_hook_from_module(module)


def test_states_and_logits_on_another_device_than_the_inputs(qwen, threads):
    """``model.device_map=auto`` over several GPUs: the embeddings on one device, the last layer (whose state is
    read), the final norm and the LM head on another. Simulated: inputs on cuda:0, the tail on the CPU (where the
    old stage-1 cache indexed the CPU state with cuda indices and failed)."""
    prompts = [qwen.render(f"Summarize the item: {t}") for t in TEXTS]
    inputs = qwen.inputs(prompts)
    ids, mask = _suffixes(qwen, TEXTS)
    prefix_inputs = qwen.inputs([qwen.render("Summarize the item:")])
    expected_states = PrefixCache(qwen.model, min_prefix=4).hidden_at_last(inputs, ATTN_LAST)
    shared = SharedPrefix(qwen.model)
    prefix = shared.run_prefix(prefix_inputs)
    expected_logits = shared.last_logits(prefix, ids, mask, torch.tensor([5, 7]))
    expected_logp = shared.token_logprobs(prefix, ids, mask)[0]
    tail = [qwen.layers[-1], qwen.final_norm, qwen.model.lm_head]
    with simulated_cuda():
        qwen.model.to("cuda")
        _split(tail, "cpu")
        try:
            cache = PrefixCache(qwen.model, min_prefix=4)
            states = cache.hidden_at_last({k: v.to("cuda") for k, v in inputs.items()}, ATTN_LAST)
            shared = SharedPrefix(qwen.model)
            assert shared.input_device.type == "cuda"
            prefix = shared.run_prefix(prefix_inputs)
            logits = shared.last_logits(prefix, ids.to("cuda"), mask.to("cuda"), torch.tensor([5, 7]))
            logp, _ = shared.token_logprobs(prefix, ids.to("cuda"), mask.to("cuda"))
        finally:
            _unsplit(tail)
            qwen.model.to("cpu")
    assert cache.stats.prefix_forwards == 1
    assert states.device.type == "cpu" and torch.allclose(states, expected_states, atol=1e-5)  # the last layer's device
    assert logits.device.type == "cpu" and torch.allclose(logits, expected_logits, atol=1e-5)  # the head's device
    assert torch.allclose(on_cpu(logp), expected_logp, atol=1e-5)


def test_the_registry_is_the_one_list_of_families(smollm):
    """The processor recipes and the toy models take their families from families.py; a loaded model finds its
    adapter; each adapter finds its decoder, base model and image encoder."""
    from freeret.backbone.families import processor_recipes
    from freeret.toy import models as toy_models

    assert vision_families() == tuple(processor_recipes()) == toy_models.TINY_FAMILIES
    assert set(toy_models.BUILDERS) == set(vision_families())  # every vision family has a tiny model to test it on
    assert family_of(smollm.model) is get_family("text")
    for name in vision_families():
        bb = load_backbone(ModelSpec(name=f"tiny_{name}", family=name, source="tiny"))
        family = FAMILIES[name]
        assert family_of(bb.model) is family
        _, layers, norm = family.decoder_parts(bb.model)
        assert len(layers) == 4 and layers is bb.layers and norm is bb.final_norm
        assert family.base_model(bb.model).get_input_embeddings() is bb.model.get_input_embeddings()
        assert family.image_encoder(bb.model) == bb.model.model.get_image_features


@pytest.mark.slow
def test_bench_prefix_cache_small(tmp_path):
    """The benchmark of the three Cache APIs runs and counts what it claims: the same logits, and the views allocate
    less than copying the prefix per batch (bytes counted op by op, not timed)."""
    import json

    from helpers import run_main

    out = tmp_path / "p.json"
    ran = run_main("experiments/bench_prefix_cache.py", ["--model", "tiny_qwen2vl", "--k", "6", "--queries", "1",
                                                         "--batch-size", "6", "--repeats", "1", "--out", str(out)])
    assert ran.returncode == 0, ran.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["pairs"] == 6 and row["deepcopy_max_diff"] == row["ddp_expand_max_diff"] == 0
    assert row["views_peak_mib"] < row["deepcopy_peak_mib"] and row["views_peak_mib"] < row["ddp_expand_peak_mib"]
    assert out.with_suffix(".png").exists()
