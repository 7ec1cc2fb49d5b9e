"""Device placement on a simulated GPU (tests/devicesim.py): every stage runs with the model on ``cuda:0`` and
returns or stores tensors on the device its contract names, with the CPU run's values.

Contracts: the pair scorer returns option probabilities on the CPU in fp32 (every path: text prefix cache, image
candidates, the naive fallback, calibration); ``Backbone.embed`` returns fp32 vectors on the model's device and the
writer stores CPU tensors; the vision-feature cache keeps its features on the model's device.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from devicesim import SimTensor, on_cpu, simulated_cuda
from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.prefix import PrefixCache
from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import Item
from freeret.embed.layers import LayerSpec
from freeret.lit import EmbeddingWriter, EmbedModule
from freeret.rerank.framing import Framing
from freeret.rerank.scorers.choice import Choice
from freeret.retrieve.shards import read_shards
from helpers import REPO

QUERY = Item.make("query", "a domestic animal that barks", None)
TEXTS = [Item.make("target", t, None) for t in ["dog", "an old wooden ship with three tall masts", "x"]]


@pytest.fixture(scope="module")
def smoke():
    rset = load_dataset({"name": "smoke_mm", "kind": "smoke"})
    image_query = next(it for it in rset.items.values() if it.role == "query" and it.image)
    image_cands = [it for it in rset.items.values() if it.role == "target" and it.image][:2]
    return image_query, image_cands


@pytest.fixture(scope="module")
def qwen():
    """A tiny Qwen2-VL of its own (the tests move it to the simulated GPU and back)."""
    return load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))


def test_simulated_cuda_refuses_mixed_devices():
    with simulated_cuda():
        a = torch.arange(6.0, device="cuda").reshape(2, 3)
        assert a.device.type == "cuda" and a.sum().item() == 15.0
        assert on_cpu(torch.nn.Linear(3, 2).to("cuda")(a)).shape == (2, 2)
        with pytest.raises(RuntimeError, match="same device"):
            a + torch.ones(3)
        with pytest.raises(RuntimeError, match="same device"):
            torch.empty(2, 3)[[0, 1]] = a  # the stage-2 bug of issue 12: a CPU result filled with device values
        assert torch.equal(on_cpu(a + torch.tensor(1.0)), torch.arange(1.0, 7.0).reshape(2, 3))  # CPU scalars mix


def _framing() -> Framing:
    return Framing.from_dict(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "framing" / "mcq.yaml")))


def _is_host_fp32(t: torch.Tensor) -> bool:
    return not isinstance(t, SimTensor) and t.device.type == "cpu" and t.dtype == torch.float32


@pytest.mark.parametrize("calibrate", [False, True], ids=["plain", "calibrated"])
def test_pair_scorer_on_gpu_returns_host_fp32(qwen, smoke, threads, calibrate):
    """Text candidates (prefix cache), image candidates (batched full forwards through the vision cache, and with
    pixels when the cache is off), an image query, and calibration: the CPU's scores, on the CPU in fp32."""
    image_query, image_cands = smoke
    cases = [(QUERY, TEXTS + image_cands), (image_query, TEXTS[:1] + image_cands[:1])]
    scorer = Choice(qwen, _framing(), batch_size=2, calibrate=calibrate)
    expected = [scorer.option_probs(q, c) for q, c in cases]
    expected_uncached = Choice(qwen, _framing(), batch_size=2, vision_cache_mb=0).option_probs(QUERY, image_cands)
    scorer = Choice(qwen, _framing(), batch_size=2, calibrate=calibrate)
    with simulated_cuda():
        qwen.model.to("cuda")
        try:
            rows = [scorer.score(q, c) for q, c in cases]
            got = [torch.tensor(r.extras["probs"]) for r in rows]
            naive = scorer.naive_probs(QUERY, TEXTS[:2], batch_size=2)
            uncached = Choice(qwen, _framing(), batch_size=2, vision_cache_mb=0).option_probs(QUERY, image_cands)
            features = [t for e in scorer.vision.store.values() for t in (e.features if isinstance(e.features, tuple) else [e.features])]
        finally:
            qwen.model.to("cpu")
    for r, g, e in zip(rows, got, expected):
        assert _is_host_fp32(r.scores)
        assert torch.allclose(g, e, atol=1e-5)
    assert _is_host_fp32(naive)
    assert _is_host_fp32(uncached) and torch.allclose(uncached, expected_uncached, atol=1e-5)  # pixels, no cache
    assert features and all(isinstance(t, SimTensor) for t in features)  # the vision cache lives on the device


def test_embed_on_gpu_and_writer_stores_host_tensors(qwen, smoke, threads, tmp_path):
    """Stage 1: text batches through the prefix cache, image batches through the plain forward; vectors come back
    on the model's device in fp32 and the writer's shard holds the CPU values."""
    image_query, _ = smoke
    from freeret.data.visual import load_visual

    texts = [qwen.render(f"Summarize: {t.text}") for t in TEXTS]
    text_inputs = qwen.inputs(texts)
    image_inputs = qwen.inputs([qwen.render("an image", n_images=1)], [load_visual(image_query.image)])
    spec = LayerSpec("attn", -1)
    expected = [qwen.embed(text_inputs, spec), qwen.embed(image_inputs, spec)]
    prefix = PrefixCache(qwen.model, min_prefix=4)
    module = EmbedModule(qwen, spec, prefix)
    with simulated_cuda():
        qwen.model.to("cuda")
        try:
            got = [module.predict_step({"keys": ["a", "b", "c"], "inputs": text_inputs}, 0),
                   module.predict_step({"keys": ["d"], "inputs": image_inputs}, 1)]
            writer = EmbeddingWriter(tmp_path, shard_size=8)
            for i, prediction in enumerate(got):
                writer.write_on_batch_end(None, module, prediction, None, None, i, 0)
            buffered = [p["embeddings"] for p in writer._buffer]
            writer._flush(0)
        finally:
            qwen.model.to("cpu")
    assert prefix.stats.prefix_forwards == 1  # the text batch took the prefix path on the device
    for g, e in zip(got, expected):
        assert isinstance(g["embeddings"], SimTensor) and g["embeddings"].dtype == torch.float32
        assert torch.allclose(on_cpu(g["embeddings"]), e, atol=1e-5)
    assert all(_is_host_fp32(t) for t in buffered)  # the writer holds no device memory between shards
    stored = read_shards(tmp_path)
    assert sorted(stored) == ["a", "b", "c", "d"]
    assert torch.allclose(torch.stack([stored[k] for k in "abcd"]), torch.cat(expected), atol=1e-5)


def test_prefix_cache_host_copies_do_not_grow_with_the_batch(qwen, threads):
    """The prefix search runs on the device: the host reads the row lengths and the prefix ids, not every row."""
    spec = LayerSpec("attn", -1)
    counts = []
    with simulated_cuda() as transfers:
        qwen.model.to("cuda")
        try:
            for n in (2, 6):
                prompts = [qwen.render(f"Summarize the item: {'word ' * (i + 1)}") for i in range(n)]
                inputs = {k: v.to("cuda") for k, v in qwen.inputs(prompts).items()}
                prefix = PrefixCache(qwen.model, min_prefix=4)
                start = (transfers.to_host, transfers.to_device)
                assert prefix.hidden_at_last(inputs, spec) is not None
                counts.append((transfers.to_host - start[0], transfers.to_device - start[1]))
        finally:
            qwen.model.to("cpu")
    assert counts[0] == counts[1], counts
