"""Echo embeddings (issue 27; Springer et al. 2024, arXiv 2402.15449): ``prior=echo`` writes the item twice and
``pooling=echo`` (mean, ``occurrence: last``) pools over the second copy. The prompts, the content mask of the second
copy on the real SmolLM2 tokenizer, the shared-prefix path against the plain and the one-item forwards, golden vectors
(SmolLM2 and a tiny Qwen2-VL), a run and a ``-m`` sweep through run.py, the unchanged record of ``pooling=mean``, and
the one-line error for a bad occurrence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.backbone import Backbone
from freeret.backbone.prefix import PrefixCache
from freeret.data.datamodule import PromptCollator
from freeret.data.retrieval_set import Item
from freeret.embed.layers import Readout
from freeret.embed.pooling import PoolingSpec
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.signatures import vector_signature
from helpers import QUIET, REPO, check_snapshot, compose, dataset_prompt, golden_mismatches, results, run_py, sweep_jobs

TEXTS = ["a domestic animal that barks and is kept as a pet", "ship", "Rewritten word: a word that is related to the word"]
GOLDEN = REPO / "tests" / "golden"
# The signature's `layer` entry for `pooling=mean` (attn_last) on a 30-layer model, as computed before issue 27
# (commit 852475e): the new `occurrence` key must not appear in it at its default.
MEAN_BEFORE = {"points": [{"apply_final_norm": False, "index": 29, "point": "attn"}],
               "pooling": {"label": "mean", "name": "mean"}}


def _prior(name: str, dataset: str = "wordnet_rd") -> Prior:
    return Prior.from_dict(OmegaConf.to_container(compose([f"prior={name}"]).prior, resolve=True)).for_dataset(
        dataset_prompt(dataset))


def _readout(*overrides: str) -> Readout:
    cfg = OmegaConf.to_container(compose(list(overrides)), resolve=True)
    return Readout.from_config(cfg["layer"], cfg["pooling"])


def _collate(bb: Backbone, prior: str = "echo", occurrence: str = "last", dataset: str = "wordnet_rd") -> PromptCollator:
    return PromptCollator(bb, _prior(prior, dataset), content=True, occurrence=occurrence)


def test_the_echo_priors_write_the_item_twice(smollm):
    """The prompts for one dataset's facts (WordNet RD: a definition is a `sentence`, a candidate a `word`), and the
    full prompt SmolLM2 reads; renew on purpose with FREERET_UPDATE_SNAPSHOTS=1."""
    got = {}
    for name in ("echo", "echo_eol"):
        prior = _prior(name)
        for role, text in (("query", TEXTS[0]), ("target", "dog")):
            prompt = prior.render(role, text, False)
            assert prompt.count(text) == 2, prompt
            got[f"{name}/{role}"] = prompt
        got[f"{name}/query/smollm2_135m"] = _collate(smollm, name).prompt(Item.make("query", TEXTS[0], None))
    assert got["echo/target"] == "Rewrite the word: dog\nRewritten word: dog"
    assert got["echo_eol/target"].endswith('Rewritten word: dog\nThis word means in one word:"')
    check_snapshot(REPO / "tests" / "snapshots" / "echo_prompts.json", got)


def test_the_last_occurrence_mask_is_exactly_the_second_copy(smollm):
    """Decoded, the content tokens are the item's text, the second copy's (nothing of the prompt follows them but the
    chat template's end of turn), even when the text repeats the template's words; the first copy's tokens are the same
    ids, earlier."""
    items = [Item.make("query", t, None) for t in TEXTS] + [Item.make("target", "dog", None)]
    last, first = _collate(smollm)(items), _collate(smollm, occurrence="first")(items)
    ids = last["inputs"]["input_ids"]
    assert torch.equal(ids, first["inputs"]["input_ids"])
    for row, item in enumerate(items):
        at_last, at_first = last["content"][row].nonzero().flatten(), first["content"][row].nonzero().flatten()
        assert smollm.tokenizer.decode(ids[row, at_last]).strip() == item.text
        assert torch.equal(ids[row, at_last], ids[row, at_first]) and int(at_first[-1]) < int(at_last[0])
        assert smollm.tokenizer.decode(ids[row, int(at_last[-1]) + 1:]) == "<|im_end|>\n<|im_start|>assistant\n"
        unit = "word" if item.role == "target" else "sentence"
        assert smollm.tokenizer.decode(ids[row, : int(at_last[0])]).endswith(f"{item.text}\nRewritten {unit}:")


def test_a_prompt_with_one_copy_gives_the_same_vectors_for_first_and_last(smollm, threads):
    items = [Item.make("query", t, None) for t in TEXTS]
    first, last = _collate(smollm, "e5v", "first")(items), _collate(smollm, "e5v", "last")(items)
    assert torch.equal(first["content"], last["content"])
    vec = {occ: smollm.embed(b["inputs"], _readout("pooling=mean", f"pooling.occurrence={occ}"), content=b["content"])
           for occ, b in (("first", first), ("last", last))}
    assert torch.equal(vec["first"], vec["last"])


def test_echo_prefix_cache_equals_the_plain_and_the_one_item_forwards(smollm, threads):
    """fast == naive: the shared-prefix path (embed.prefix_cache, the default) and the plain padded batch give the
    vectors of each item run alone (no padding), within test_pooling's tolerance."""
    readout = _readout("prior=echo", "pooling=echo")
    assert readout.pooling.occurrence == "last"
    collate = _collate(smollm)
    items = [Item.make("query", t, None) for t in TEXTS]
    batch = collate(items)
    cache = PrefixCache(smollm.model, min_prefix=2)
    plain = smollm.embed(batch["inputs"], readout, content=batch["content"])
    cached = smollm.embed(batch["inputs"], readout, cache, batch["content"])
    alone = torch.cat([smollm.embed(b["inputs"], readout, content=b["content"]) for b in (collate([it]) for it in items)])
    assert cache.stats.prefix_forwards == 1 and cache.stats.plain_batches == 0 and cache.stats.tokens_skipped > 0
    assert F.cosine_similarity(plain, alone).min() >= 0.99999
    assert F.cosine_similarity(cached, alone).min() >= 0.99999
    assert F.cosine_similarity(plain, smollm.embed(batch["inputs"], _readout("pooling=mean"), content=_collate(
        smollm, occurrence="first")(items)["content"])).max() < 0.999  # the second copy is not the first


def _png(tmp_path) -> str:
    """test_golden's fixed 56x56 colour pattern, as a lossless file (the collator reads items' images from paths)."""
    y, x = np.mgrid[0:56, 0:56]
    path = tmp_path / "pattern.png"
    Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)).save(path)
    return str(path)


def _echo_vectors(bb: Backbone, dataset: str, image: str | None) -> dict[str, torch.Tensor]:
    """prior=echo pooling=echo vectors of the texts as queries and targets (plain and through the prefix cache) and,
    with ``image``, of an image item with a caption and one without."""
    readout = _readout("prior=echo", "pooling=echo")
    collate = _collate(bb, dataset=dataset)
    out = {}
    for role in ("query", "target"):
        batch = collate([Item.make(role, t, None) for t in TEXTS])
        cache = PrefixCache(bb.model, min_prefix=2, family=bb.family)
        out.update({f"{role}_{i}": v for i, v in enumerate(bb.embed(batch["inputs"], readout, content=batch["content"]))})
        out.update({f"{role}_{i}_prefix_cache": v for i, v in
                    enumerate(bb.embed(batch["inputs"], readout, cache, batch["content"]))})
        assert cache.stats.prefix_forwards == 1
    if image is not None:
        batch = collate([Item.make("query", "What is in the image?", image), Item.make("query", "", image)])
        out.update({f"image_{i}": v for i, v in enumerate(bb.embed(batch["inputs"], readout, content=batch["content"]))})
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


@pytest.mark.parametrize("name", ["smollm2_135m", "tiny_qwen2_vl"])
def test_echo_vectors_are_frozen(name, smollm, tmp_path, threads):
    """Golden vectors as tests/test_golden.py keeps them (same tolerance and renewal; files echo_<model>)."""
    bb = smollm if name == "smollm2_135m" else load_backbone(ModelSpec(name=name, family="qwen2_vl", source="tiny"))
    image = None if name == "smollm2_135m" else _png(tmp_path)
    dataset = "wordnet_rd" if image is None else "smoke_mm"
    got = _echo_vectors(bb, dataset, image)
    meta = {"texts": json.dumps(TEXTS), "prior": "echo", "pooling": "echo", "dataset": dataset}
    bad = golden_mismatches(GOLDEN / f"echo_{name}.safetensors", got, meta)
    assert not bad, f"{name}: echo vectors moved beyond 1e-5 (relative max difference per vector): {bad}"


def test_echo_runs_end_to_end_and_sweeps_with_mean(tmp_path):
    """run.py -m pooling=mean,echo prior=echo on a WordNet slice with SmolLM2: both jobs compose and run; the echo job's
    results record the occurrence, the mean job's are as before the key existed; the two store their own vectors."""
    args = ["-m", "pooling=mean,echo", "prior=echo", "dataset.limit=4", "dataset.pool=positives", "threads=1", *QUIET]
    assert [[o for o in job if o.startswith("pooling")] for job in sweep_jobs(args[1:])] == [["pooling=mean"],
                                                                                               ["pooling=echo"]]
    proc = run_py(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mean, echo = results(tmp_path / "0", "wordnet_rd"), results(tmp_path / "1", "wordnet_rd")
    assert mean.pooling == {"name": "mean", "label": "mean"} and mean.prior == echo.prior == "echo"
    assert echo.pooling == {"name": "mean", "label": "mean(occurrence=last)", "occurrence": "last"}
    assert echo.config["pooling"] == {"name": "mean", "occurrence": "last"}
    assert echo.timing["embed_items_computed"] == mean.timing["embed_items_computed"] == 8
    assert echo.timing["embed_store"] != mean.timing["embed_store"]
    assert "wordnet_rd: embed hit@1=" in proc.stdout


def test_the_record_of_pooling_mean_is_unchanged(smollm):
    """Results and the vector signature name the occurrence only when it is not the default: the `layer` entry of
    `pooling=mean`'s signature is the one from before the key existed (its `code` hash moves with any edit of
    freeret/embed, by design)."""
    mean = _readout("pooling=mean")
    assert mean.pooling == PoolingSpec("mean") and mean.pooling.describe() == {"name": "mean", "label": "mean"}
    assert vector_signature(smollm, mean)["layer"] == MEAN_BEFORE
    echo = vector_signature(smollm, _readout("pooling=echo"))["layer"]
    assert echo["pooling"] == {"name": "mean", "label": "mean(occurrence=last)", "occurrence": "last"}


def test_a_bad_occurrence_is_a_one_line_error_before_weights_load(tmp_path, monkeypatch):
    import freeret.run.inputs

    monkeypatch.setattr(freeret.run.inputs, "load_backbone", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=r"pooling.occurrence='second' is not one of first, last"):
        PoolingSpec.from_dict({"name": "mean", "occurrence": "second"})
    with pytest.raises(ConfigError, match="applies to pooling=mean only"):
        PoolingSpec.from_dict({"name": "last", "occurrence": "last"})
    proc = run_py(["pooling=echo", "pooling.occurrence=second", "dataset.limit=2", *QUIET], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "pooling.occurrence='second' is not one of first, last" in proc.stderr
