"""Two stage-1 readouts (issue 27): token prepending (``prepend=tp``; Fu et al. 2024, arXiv 2412.11556) and PromptReps'
lexical vectors from the same forward (``retriever=promptreps|hybrid_promptreps``; Zhuang et al. 2024, arXiv
2404.18424). TP: a padded batch against one-item forwards and a hand-written loop over the layers, the layer range,
the untouched default; PromptReps: the stored top-k against a full forward's logits, the shared-prefix path against
the plain one, the sparse dot product and the fusion by hand, post-processing on the dense part only; golden vectors
(SmolLM2, a tiny Qwen2-VL with images); a ``-m`` sweep through run.py; one-line errors before weights load."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.backbone import Backbone
from freeret.backbone.prefix import PrefixCache
from freeret.data.datamodule import PromptCollator
from freeret.data.retrieval_set import Item, RetrievalSet, Row
from freeret.embed.layers import LayerSpec, Readout
from freeret.embed.prepend import PrependSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.retrieve.fusion import RetrieverSpec, fuse
from freeret.retrieve.postprocess import PostprocessSpec
from freeret.retrieve.promptreps import promptreps_scores, sparse_dot
from freeret.retrieve.ranking import Stage1Scoring
from freeret.retrieve.scoring import score_store
from freeret.retrieve.shards import ShardStore, write_shard
from freeret.signatures import vector_signature
from helpers import QUIET, REPO, compose, dataset_prompt, golden_mismatches, results, run_py, sweep_jobs

TEXTS = ["a domestic animal that barks and is kept as a pet", "ship", "Rewritten word: a word that is related to the word"]
GOLDEN = REPO / "tests" / "golden"
TP = PrependSpec("tp", 1, 0.25)
# The signature's `layer` entry of the default readout (attn_last) on a 30-layer model, as before issue 27's TP and
# PromptReps: prepend=none and retriever=dense must leave it as it was.
ATTN_LAST_BEFORE = {"points": [{"apply_final_norm": False, "index": 29, "point": "attn"}]}


def _prior(dataset: str = "wordnet_rd") -> Prior:
    return Prior.from_dict(OmegaConf.to_container(compose([]).prior, resolve=True)).for_dataset(dataset_prompt(dataset))


def _collate(bb: Backbone, prepend: PrependSpec | None = TP, dataset: str = "wordnet_rd") -> PromptCollator:
    return PromptCollator(bb, _prior(dataset), prepend=prepend)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest per-vector max difference relative to the vector's largest component."""
    return float(((a - b).abs().amax(-1) / b.abs().amax(-1)).max())


def test_tp_batch_equals_one_item_forwards_and_the_slot_holds_the_placeholder(smollm, threads):
    collate = _collate(smollm)
    items = [Item.make("query", t, None) for t in TEXTS]
    batch = collate(items)
    ids = batch["inputs"]["input_ids"]
    for row, item in enumerate(items):  # the slot is the one token right before the text, counted from the end
        slot = int(batch["slot"][row])
        assert smollm.tokenizer.decode(ids[row, slot]).endswith("*")
        assert smollm.tokenizer.decode(ids[row, slot + 1:]).lstrip().startswith(item.text.split()[0])
    readout = Readout((LayerSpec("attn", -1),), prepend=TP)
    got = smollm.embed(batch["inputs"], readout, slot=batch["slot"])
    alone = torch.cat([smollm.embed(b["inputs"], readout, slot=b["slot"]) for b in (collate([it]) for it in items)])
    assert _rel(got, alone) <= 1e-5
    assert _rel(got, smollm.embed(batch["inputs"], dataclasses.replace(readout, prepend=None))) > 1e-3  # it acts


def _naive_tp(bb: Backbone, ids: torch.Tensor, slot: int, start: int, end: int, upto: int) -> torch.Tensor:
    """Token prepending by hand for one unpadded prompt (Llama layers): the embeddings, then each layer with its
    input slot overwritten by the last position's state inside [start, end); the last state after layer ``upto``."""
    base = bb.model.model
    h = base.embed_tokens(ids)
    n = ids.shape[1]
    pos = torch.arange(n)[None]
    mask = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None]
    rope = base.rotary_emb(h, pos)
    for layer in range(upto + 1):
        if start <= layer < end:
            h = h.clone()
            h[0, n + slot] = h[0, -1]
        out = bb.layers[layer](h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
        h = out[0] if isinstance(out, tuple) else out
    return h[0, -1]


@torch.no_grad()
def test_tp_equals_a_hand_written_loop_and_starts_at_start(smollm, threads):
    """A left-padded 2-item batch read at mlp@10 (the output of layer 10) equals the hand loop per item; with
    start=5, the output of layer 3 is exactly the plain forward's (no hook before start) and that of layer 5 is not."""
    collate = _collate(smollm)
    items = [Item.make("query", t, None) for t in TEXTS[:2]]
    batch = collate(items)
    got = smollm.embed(batch["inputs"], Readout((LayerSpec("mlp", 10),), prepend=TP), slot=batch["slot"])
    start, end = TP.layers(smollm.num_layers)
    assert (start, end) == (1, 8)
    for row, item in enumerate(items):
        one = collate([item])
        want = _naive_tp(smollm, one["inputs"]["input_ids"], int(one["slot"][0]), start, end, 10)
        assert _rel(got[row:row + 1], want[None].float()) <= 1e-5
    late = PrependSpec("tp", 5, 8)
    for index, same in ((3, True), (5, False)):
        tp = smollm.embed(batch["inputs"], Readout((LayerSpec("mlp", index),), prepend=late), slot=batch["slot"])
        plain = smollm.embed(batch["inputs"], LayerSpec("mlp", index))
        assert torch.equal(tp, plain) == same


def test_prepend_none_leaves_the_readout_the_prompts_and_the_signature_untouched(smollm):
    cfg = OmegaConf.to_container(compose([]), resolve=True)
    assert cfg["prepend"] == {"name": "none"}
    readout = Readout.from_config(cfg["layer"], cfg["pooling"], cfg["prepend"])
    assert readout == Readout.from_config(cfg["layer"], cfg["pooling"]) and readout.prepend is None
    assert vector_signature(smollm, readout)["layer"] == ATTN_LAST_BEFORE
    item = Item.make("query", TEXTS[0], None)
    plain, none = PromptCollator(smollm, _prior()), _collate(smollm, PrependSpec())
    assert none.prompt(item) == plain.prompt(item) and "slot" not in none([item])
    tp = vector_signature(smollm, Readout.from_config(cfg["layer"], cfg["pooling"], {"name": "tp"}))["layer"]
    assert tp["prepend"] == {"name": "tp", "start": 1, "end": 8, "placeholder": "* "}
    assert vector_signature(smollm, dataclasses.replace(readout, lexical_k=16))["layer"]["lexical"] == {
        "name": "promptreps", "k": 16}


@torch.no_grad()
def test_promptreps_top_k_is_the_full_forwards_and_the_prefix_path_equals_the_plain(smollm, threads):
    """The stored row is [dense, top-k ids, weights]: the dense part is the plain readout's, the lexical part the top k
    of log1p(relu(logits)) of a full forward's last position; the shared-prefix path gives the same (1e-4)."""
    k = 16
    batch = PromptCollator(smollm, _prior())([Item.make("query", t, None) for t in TEXTS])
    readout = Readout((LayerSpec("attn", -1),), lexical_k=k)
    plain = smollm.embed(batch["inputs"], readout)
    hidden = plain.shape[1] - 2 * k
    assert hidden == 576 and torch.equal(plain[:, :hidden], smollm.embed(batch["inputs"], LayerSpec("attn", -1)))
    logits = smollm.model(**batch["inputs"]).logits[:, -1].float()
    values, ids = torch.log1p(torch.relu(logits)).topk(k)
    assert torch.equal(plain[:, hidden:hidden + k].long(), ids)
    assert torch.allclose(plain[:, hidden + k:], values, atol=1e-5)
    cache = PrefixCache(smollm.model, min_prefix=2)
    fast = smollm.embed(batch["inputs"], readout, cache)
    assert cache.stats.prefix_forwards == 1 and cache.stats.plain_batches == 0
    assert _rel(fast[:, :hidden], plain[:, :hidden]) <= 1e-4
    assert torch.equal(fast[:, hidden:hidden + k], plain[:, hidden:hidden + k])
    assert torch.allclose(fast[:, hidden + k:], plain[:, hidden + k:], atol=1e-4)


def _lexical(pairs: dict[int, float]) -> list[float]:
    """A stored lexical part: the ids (as floats), then their weights, largest first."""
    ids, weights = zip(*sorted(pairs.items(), key=lambda p: -p[1]))
    return [float(i) for i in ids] + list(weights)


def test_lexical_scores_fusion_and_post_processing_by_hand(tmp_path):
    """Sparse dot products by hand; hybrid fusion = fuse(dense cosine, lexical); post-processing (center) is fitted
    on and applied to the dense part only."""
    k, dense = 3, {"q": [1.0, 0.0], "a": [1.0, 1.0], "b": [0.0, 1.0], "c": [-1.0, 2.0]}
    lexical = {"q": {5: 2.0, 7: 1.0, 9: 0.5}, "a": {7: 3.0, 5: 1.0, 1: 0.2}, "b": {2: 4.0, 3: 1.0, 4: 0.1},
               "c": {9: 2.0, 100: 1.5, 5: 0.5}}
    keys = sorted(dense)
    rows_t = torch.tensor([dense[key] + _lexical(lexical[key]) for key in keys])
    write_shard(tmp_path / "s.safetensors", keys, rows_t)
    store = ShardStore(tmp_path).scan()
    rows = [Row("r0", "q", ("a", "b", "c"))]
    by_hand = [sum(w * lexical[c].get(i, 0.0) for i, w in lexical["q"].items()) for c in ("a", "b", "c")]
    assert by_hand == [2.0 * 1.0 + 1.0 * 3.0, 0.0, 2.0 * 0.5 + 0.5 * 2.0]
    lex_store = store.view(slice(-2 * k, None))
    got = promptreps_scores(rows, lex_store, k)[0]
    assert torch.allclose(got, torch.tensor(by_hand))
    assert torch.allclose(sparse_dot(lex_store.gather(["q"]), lex_store.gather(["a", "b", "c"]), k)[0], got)
    assert torch.allclose(promptreps_scores(rows, lex_store, k, budget=4)[0], got)  # tiny chunks: same scores
    items = {key: Item(key, "query" if key == "q" else "target", key, None) for key in keys}
    rset = RetrievalSet("toy", rows, items)
    fit_keys = {"query": ["q"], "target": ["a", "b", "c"]}
    for retriever in ({"name": "promptreps", "promptreps": {"k": k}},
                      {"name": "hybrid_promptreps", "fusion": "rrf", "promptreps": {"k": k}},
                      {"name": "hybrid_promptreps", "fusion": "weighted", "weight": 0.3, "promptreps": {"k": k}}):
        spec = RetrieverSpec.from_dict(retriever)
        for post in ("none", "center"):
            scoring = Stage1Scoring(spec, PostprocessSpec.from_dict({"name": post}))
            (scores,), info = scoring.score(rset, store, {key: key for key in keys}, fit_keys, None, None)
            assert info["retriever"]["promptreps"] == {"k": k}
            if spec.name == "promptreps":
                assert torch.allclose(scores, got) and info["postprocess"] is None
                continue
            dense_store = store.view(slice(None, -2 * k))
            stats = None
            if post == "center":
                mean = torch.tensor([dense[key] for key in keys]).mean(0)
                assert info["postprocess"]["label"].startswith("center")

                def stats(x: torch.Tensor, role: str, mean: torch.Tensor = mean) -> torch.Tensor:
                    return x - mean
            cos = score_store(rows, dense_store, transform=stats)[0]
            assert torch.allclose(scores, fuse(cos, got, spec))


def _png(tmp_path) -> str:
    y, x = np.mgrid[0:56, 0:56]
    path = tmp_path / "pattern.png"
    Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)).save(path)
    return str(path)


def _vectors(bb: Backbone, dataset: str, image: str | None, readout: Readout) -> dict[str, torch.Tensor]:
    collate = _collate(bb, readout.prepend, dataset)
    out = {}
    for role in ("query", "target"):
        batch = collate([Item.make(role, t, None) for t in TEXTS])
        out.update({f"{role}_{i}": v for i, v in enumerate(bb.embed(batch["inputs"], readout, slot=batch.get("slot")))})
        if readout.prefix_cache_ok:
            cache = PrefixCache(bb.model, min_prefix=2, family=bb.family)
            out.update({f"{role}_{i}_prefix_cache": v for i, v in
                        enumerate(bb.embed(batch["inputs"], readout, cache, slot=batch.get("slot")))})
            assert cache.stats.prefix_forwards == 1
    if image is not None:  # with a caption (the slot after the image tokens) and without (no slot: -1, a no-op)
        batch = collate([Item.make("query", "What is in the image?", image), Item.make("query", "", image)])
        if readout.prepend is not None:
            assert int(batch["slot"][1]) == -1
        out.update({f"image_{i}": v for i, v in enumerate(bb.embed(batch["inputs"], readout, slot=batch.get("slot")))})
    return {key: v.detach().float().cpu().contiguous() for key, v in out.items()}


@pytest.mark.parametrize("name", ["smollm2_135m", "tiny_qwen2_vl"])
def test_tp_and_promptreps_vectors_are_frozen(name, smollm, tmp_path, threads):
    """Golden vectors as tests/test_golden.py keeps them (files tp_<model>, promptreps_<model>; the PromptReps rows
    hold the top-16 ids and weights after the dense part)."""
    bb = smollm if name == "smollm2_135m" else load_backbone(ModelSpec(name=name, family="qwen2_vl", source="tiny"))
    image = None if name == "smollm2_135m" else _png(tmp_path)
    dataset = "wordnet_rd" if image is None else "smoke_mm"
    for tech, readout in (("tp", Readout((LayerSpec("attn", -1),), prepend=TP)),
                          ("promptreps", Readout((LayerSpec("attn", -1),), lexical_k=16))):
        got = _vectors(bb, dataset, image, readout)
        meta = {"texts": json.dumps(TEXTS), "readout": json.dumps(readout.describe(bb.num_layers)), "dataset": dataset}
        bad = golden_mismatches(GOLDEN / f"{tech}_{name}.safetensors", got, meta)
        assert not bad, f"{name}: {tech} vectors moved beyond 1e-5 (relative max difference per vector): {bad}"


def test_a_sweep_over_retriever_and_prepend_runs_and_records_them(tmp_path):
    """run.py -m retriever=dense,hybrid_promptreps prepend=none,tp on a WordNet slice with SmolLM2: four jobs, four
    stores; the results record the retriever (label, promptreps k) and the prepend setting."""
    args = ["-m", "retriever=dense,hybrid_promptreps", "prepend=none,tp", "dataset.limit=3", "dataset.pool=positives",
            "threads=1", f"embed.cache_dir={tmp_path / 'cache'}", *QUIET]
    jobs = sweep_jobs(args[1:])  # its own cache: the computed counts below must not depend on earlier tests
    assert [[o for o in job if o.startswith(("retriever", "prepend"))] for job in jobs] == [
        ["retriever=dense", "prepend=none"], ["retriever=dense", "prepend=tp"],
        ["retriever=hybrid_promptreps", "prepend=none"], ["retriever=hybrid_promptreps", "prepend=tp"]]
    proc = run_py(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [results(tmp_path / str(i), "wordnet_rd") for i in range(4)]
    assert [r.retriever["label"] for r in runs] == ["dense", "dense", "hybrid_promptreps(rrf, k=60)",
                                                   "hybrid_promptreps(rrf, k=60)"]
    assert runs[2].retriever["promptreps"] == {"k": 128} and "promptreps" not in runs[0].retriever
    assert [r.config["prepend"]["name"] for r in runs] == ["none", "tp", "none", "tp"]
    assert runs[1].config["prepend"] == {"name": "tp", "start": 1, "end": 0.25, "placeholder": "* "}
    assert len({r.timing["embed_store"] for r in runs}) == 4
    assert all(r.timing["embed_items_computed"] == 6 for r in runs)
    assert "retriever=hybrid_promptreps(rrf, k=60)" in proc.stdout


def test_bad_values_are_one_line_errors_before_weights_load(smollm, tmp_path, monkeypatch):
    import freeret.run.inputs

    for cfg, match in [({"name": "tpp"}, "prepend.name='tpp' is not one of none, tp"),
                       ({"name": "tp", "stat": 1}, "unknown prepend key"), ({"name": "tp", "end": 1.5}, "prepend.end"),
                       ({"name": "tp", "start": -1}, "prepend.start"), ({"name": "tp", "placeholder": " "}, "placeholder")]:
        with pytest.raises(ConfigError, match=match):
            PrependSpec.from_dict(cfg)
    with pytest.raises(ConfigError, match="within the model's 30 decoder layers"):
        PrependSpec("tp", 1, 31).layers(30)
    with pytest.raises(ConfigError, match="prepend=tp takes pooling=last or last_k"):
        Readout.from_config({"point": "attn", "index": -1}, {"name": "mean"}, {"name": "tp"})
    for cfg, match in [({"name": "promptreps", "promptreps": {"k": 0}}, "promptreps.k=0"),
                       ({"name": "promptreps", "promptreps": {"top": 3}}, "unknown retriever.promptreps key")]:
        with pytest.raises(ConfigError, match=match):
            RetrieverSpec.from_dict(cfg)
    with pytest.raises(ConfigError, match="placeholder='<PST>' is not exactly one token"):
        _collate(smollm, PrependSpec("tp", placeholder="<PST>"))([Item.make("query", "dog", None)])
    monkeypatch.setattr(freeret.run.inputs, "load_backbone", lambda *a, **k: pytest.fail("weights loaded"))
    for override, message in (("prepend.end=99", "within the model's 30 decoder layers"),
                              ("retriever.promptreps.k=-2", "retriever.promptreps.k=-2 must be")):
        extra = ["retriever=promptreps"] if "retriever" in override else ["prepend=tp"]
        proc = run_py([*extra, override, "dataset.limit=2", *QUIET], tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert message in proc.stderr
