"""Stage-1 readouts: pooling (last, last_k, mean over the item's own tokens) and several points averaged, on the plain
and the shared-prefix paths; relative-depth layer indices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.prefix import PrefixCache
from freeret.data.datamodule import PromptCollator
from freeret.data.retrieval_set import Item
from freeret.embed.layers import LayerSpec, Readout
from freeret.embed.pooling import PoolingSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from helpers import compose, dataset_prompt

TEXTS = ["dog", "a domestic animal that barks and is kept as a pet", "the act of running quickly", "ship"]


def _prior(name: str = "freeret") -> Prior:
    return Prior.from_dict(compose([f"prior={name}"])["prior"])


def test_relative_depth_and_point_parsing():
    assert LayerSpec.parse("attn@0.75").resolve(30) == 22 and LayerSpec.parse("attn@0.75").resolve(18) == 13
    assert LayerSpec.parse("attn@1.0").resolve(30) == 29 and LayerSpec.parse("attn@1").resolve(30) == 1
    assert LayerSpec.parse("mlp@-2").resolve(30) == 28 and LayerSpec.parse("final_norm").point == "final_norm"
    assert LayerSpec.from_dict({"point": "attn", "index": 0.0}).resolve(30) == 0
    for bad, match in [("attn", "needs an index"), ("attn@x", "not an integer"), ("attn@1.5", "relative depth"),
                       ("resid@-1", "layer.point")]:
        with pytest.raises(ConfigError, match=match):
            LayerSpec.parse(bad)
    readout = Readout.from_config(compose(["layer=attn_late_avg"])["layer"])
    assert readout.resolve(30) == [15, 22, 29] and readout.label == "attn_late_avg"
    with pytest.raises(ConfigError, match="pooling.name"):
        PoolingSpec.from_dict({"name": "max"})


def test_pooling_weights_by_hand():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    content = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    assert PoolingSpec("last").weights(mask).tolist() == [[0, 0, 0, 0, 1.0], [0, 0, 0, 0, 1.0]]
    assert PoolingSpec("last_k", k=4).weights(mask).tolist() == [[0, 0, pytest.approx(1 / 3), pytest.approx(1 / 3),
                                                                  pytest.approx(1 / 3)], [0, 0.25, 0.25, 0.25, 0.25]]
    assert PoolingSpec("mean").weights(mask, content).tolist() == [[0, 0, 0.5, 0.5, 0], [0, 1.0, 0, 0, 0]]
    with pytest.raises(ValueError, match="no content"):
        PoolingSpec("mean").weights(mask, torch.zeros_like(content))


def _content_tokens(bb, batch, row: int) -> str:
    ids = batch["inputs"]["input_ids"][row][batch["content"][row]]
    return bb.tokenizer.decode(ids)


@pytest.mark.parametrize("prior", ["freeret", "fewshot", "e5v"])
def test_mean_pooling_covers_exactly_the_items_text(smollm, prior):
    """The content mask is the item's text, wherever the prior puts it (even when the template repeats its words)."""
    collate = PromptCollator(smollm, _prior(prior).for_dataset(dataset_prompt("wordnet_rd")), content=True)
    items = [Item.make("query", t, None) for t in ["a word that is related to the word", "dog"]]
    batch = collate(items)
    assert _content_tokens(smollm, batch, 0).strip() == "a word that is related to the word"
    assert _content_tokens(smollm, batch, 1).strip() == "dog"


def test_mean_last_k_and_points_equal_a_hand_pooling_on_the_plain_path(smollm):
    """Pooled vectors equal the same pooling of the captured states; several points average their unit vectors."""
    collate = PromptCollator(smollm, _prior().for_dataset(dataset_prompt("wordnet_rd")), content=True)
    batch = collate([Item.make("query", t, None) for t in TEXTS])
    inputs, content = batch["inputs"], batch["content"]
    a, b = LayerSpec("attn", -1), LayerSpec.parse("attn@0.5")
    states = smollm.hidden_states(inputs, [a, b], stop=False)
    for pooling, weights in [("mean", content.float()), ("last_k", None)]:
        if weights is None:
            weights = torch.zeros(content.shape)
            weights[:, -4:] = 1.0
        weights = weights / weights.sum(1, keepdim=True)
        want_a = torch.einsum("bt,btd->bd", weights, states[a])
        got = smollm.embed(inputs, Readout((a,), PoolingSpec(pooling)), content=content)
        assert torch.allclose(got, want_a, atol=1e-5)
        want_b = torch.einsum("bt,btd->bd", weights, states[b])
        both = smollm.embed(inputs, Readout((a, b), PoolingSpec(pooling)), content=content)
        assert torch.allclose(both, (F.normalize(want_a, dim=-1) + F.normalize(want_b, dim=-1)) / 2, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last_k", "last"])
def test_prefix_path_equals_plain_path_for_every_pooling(smollm, pooling):
    """The shared prefix stops before the first pooled token, so pooled states come from the suffixes; the vectors
    equal the plain forward's, also with several points."""
    collate = PromptCollator(smollm, _prior("fewshot").for_dataset(dataset_prompt("wordnet_rd")), content=True)
    batch = collate([Item.make("query", t, None) for t in TEXTS])
    readout = Readout((LayerSpec("attn", -1), LayerSpec.parse("mlp@0.5")), PoolingSpec(pooling, k=3))
    cache = PrefixCache(smollm.model)
    plain = smollm.embed(batch["inputs"], readout, content=batch["content"])
    cached = smollm.embed(batch["inputs"], readout, cache, batch["content"])
    assert F.cosine_similarity(plain, cached).min() >= 0.99999
    assert cache.stats.prefix_forwards == 1 and cache.stats.plain_batches == 0
    assert cache.stats.tokens_skipped >= 30 * (len(TEXTS) - 1)  # the demonstration is shared


@pytest.mark.parametrize("name", ["tiny_qwen2vl", "tiny_idefics3", "tiny_llava_ov"])
def test_mean_pooling_covers_image_tokens_and_text_in_tiny_vlms(name):
    bb = load_backbone(ModelSpec.from_dict(compose([f"model={name}"])["model"]))
    collate = PromptCollator(bb, _prior().for_dataset(dataset_prompt("smoke_mm")), content=True)
    image_path = "/tmp/freeret_pool_test.png"
    Image.fromarray(skdata.astronaut()).resize((64, 64)).save(image_path)
    batch = collate([Item.make("query", "an astronaut in a suit", image_path),
                     Item.make("query", "", image_path)])
    ids, content = batch["inputs"]["input_ids"], batch["content"]
    from freeret.embed.pooling import image_token_id

    image_id = image_token_id(bb.processor)
    assert image_id is not None
    for row in range(2):
        n_image = int((ids[row] == image_id).sum())
        assert n_image > 0 and bool(content[row][ids[row] == image_id].all())
        text_ids = ids[row][content[row] & (ids[row] != image_id)]
        assert bb.tokenizer.decode(text_ids).strip() == ("an astronaut in a suit" if row == 0 else "")
    vectors = bb.embed(batch["inputs"], Readout((LayerSpec("attn", -1),), PoolingSpec("mean")), content=content)
    assert vectors.shape[0] == 2 and torch.isfinite(vectors).all()
