"""Shared-prefix KV cache for embedding: same vectors as the plain padded forward, fewer tokens run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.backbone import Backbone
from freeret.backbone.families import get_family
from freeret.backbone.prefix import PrefixCache
from freeret.embed.layers import LayerSpec
from freeret.embed.priors import Prior
from freeret.prompts import DatasetPrompt
from helpers import compose

TEXTS = ["dog", "a domestic animal that barks and is kept as a pet", "the act of running quickly", "ship", "x"]
SPECS = [LayerSpec("attn", -1), LayerSpec("mlp", -2), LayerSpec("final_norm")]


def _prior() -> Prior:
    cfg = compose()
    return Prior.from_dict(cfg["prior"]).for_dataset(DatasetPrompt.from_config(cfg["dataset"]))  # wordnet_rd


def _inputs(bb: Backbone, texts: list[str], role: str = "query"):
    return bb.inputs([bb.render(_prior().render(role, t, False)) for t in texts])


def _same(plain: torch.Tensor, cached: torch.Tensor) -> None:
    assert plain.shape == cached.shape
    assert F.cosine_similarity(plain, cached).min() >= 0.99999


def test_shared_prefix_found_on_left_padded_rows(smollm):
    """Rows are aligned at their first real token; a row that is the others' prefix keeps its last token as a
    suffix; a mask that is not left padding takes the plain path."""
    cache = PrefixCache(smollm.model, min_prefix=2)
    cache.stats.record = True
    inp = smollm.inputs(["a dog that barks loudly at night", "a dog that barks", "a dog that barks loudly"])
    lengths = inp["attention_mask"].sum(1).tolist()
    _same(smollm.embed(inp, SPECS[0]), smollm.embed(inp, SPECS[0], cache))
    shared = min(lengths) - 1
    assert cache.stats.segments == [(0, shared)] + [(shared, k - shared) for k in lengths]
    holes = {**inp, "attention_mask": inp["attention_mask"].clone()}
    holes["attention_mask"][0, -3] = 0  # a hole inside a row: no common alignment
    assert cache.hidden_at_last(holes, SPECS[0]) is None and cache.stats.plain_batches == 1


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_smollm_prefix_equals_plain(smollm, spec):
    cache = PrefixCache(smollm.model)
    inp = _inputs(smollm, TEXTS)
    _same(smollm.embed(inp, spec), smollm.embed(inp, spec, cache))
    rows = inp["attention_mask"].sum(1)
    assert cache.stats.prefix_forwards == 1 and cache.stats.plain_batches == 0
    # every token is run exactly once: the prefix once, each suffix once, the prefix's copies skipped
    assert cache.stats.prefix_tokens_run + cache.stats.suffix_tokens_run == int(rows.sum()) - cache.stats.tokens_skipped
    assert cache.stats.tokens_skipped >= 30 * (len(TEXTS) - 1)  # the system turn and the prior's instruction


def test_prefix_is_reused_and_stops_early(smollm):
    cache = PrefixCache(smollm.model)
    spec = LayerSpec("attn", -1)
    calls = []
    mods = [smollm.layers[-1].mlp, smollm.final_norm, smollm.model.lm_head]
    handles = [m.register_forward_hook(lambda m, a, o, n=n: calls.append(n)) for n, m in enumerate(mods)]
    try:
        for chunk in (TEXTS[:3], TEXTS[3:]):
            smollm.embed(_inputs(smollm, chunk), spec, cache)
    finally:
        for h in handles:
            h.remove()
    assert calls == []  # neither the prefix nor the suffix forward runs past h^Attn_L
    assert cache.stats.prefix_forwards == 1  # the second batch reused the first one's prefix


def test_short_shared_prefix_takes_plain_path(smollm):
    cache = PrefixCache(smollm.model)
    inp = smollm.inputs(["dog", "a cat sat"])  # raw texts: nothing shared
    _same(smollm.embed(inp, SPECS[0]), smollm.embed(inp, SPECS[0], cache))
    assert cache.stats.plain_batches == 1 and cache.stats.prefix_forwards == 0


@pytest.mark.parametrize("name", ["tiny_qwen2vl", "tiny_qwen25vl", "tiny_idefics3", "tiny_llava_ov", "tiny_internvl"])
def test_tiny_vlms_text_batches(name):
    bb = load_backbone(ModelSpec.from_dict(compose([f"model={name}"])["model"]))
    cache = PrefixCache(bb.model)
    for spec in SPECS:
        inp = _inputs(bb, TEXTS, role="target")
        _same(bb.embed(inp, spec), bb.embed(inp, spec, cache))
    assert cache.stats.prefix_forwards == len(SPECS) and cache.stats.plain_batches == 0


def test_image_batches_take_plain_path():
    bb = load_backbone(ModelSpec.from_dict(compose(["model=tiny_qwen2vl"])["model"]))
    cache = PrefixCache(bb.model)
    image = Image.fromarray(skdata.astronaut()).resize((56, 56))
    inp = bb.inputs([bb.render("an astronaut", n_images=1), bb.render("a photo", n_images=1)], [[image], [image]])
    assert not cache.applies(inp)
    assert torch.equal(bb.embed(inp, SPECS[0]), bb.embed(inp, SPECS[0], cache))
    assert cache.stats.prefix_forwards == 0


def test_gemma_sliding_window_shorter_than_prefix(smollm):
    """Gemma 3's sliding-window layers keep only the last window of the cached prefix; the vectors still match."""
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(smollm.tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                           sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2)
    cfg._attn_implementation = "sdpa"
    model = Gemma3ForCausalLM(cfg).eval()
    bb = Backbone(spec=smollm.spec, family=get_family("text"), model=model, processor=smollm.processor,
                  tokenizer=smollm.tokenizer)
    cache = PrefixCache(model)
    for spec in SPECS:
        inp = _inputs(bb, TEXTS)
        _same(bb.embed(inp, spec), bb.embed(inp, spec, cache))
    assert cache.stats.prefix_forwards == len(SPECS)
