"""Stage 2: framings as data, option tokens in context, the fast path equal to the naive path, fusion rules."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from freeret.backbone import ModelSpec, load_backbone
from freeret.data.retrieval_set import Item
from freeret.errors import ConfigError
from freeret.rerank.framing import Framing
from freeret.rerank.scorers.choice import Choice, option_row
from freeret.rerank.stage import RerankConfig, fused_ranking
from helpers import REPO, check_snapshot, compose, dataset_prompt

FRAMINGS = sorted(p.stem for p in (REPO / "conf" / "framing").glob("*.yaml"))
QUERY = Item.make("query", "a domestic animal that barks", None)
CANDS = [Item.make("target", t, None) for t in
         ["dog", "cat", "bicycle", "an old wooden ship with three tall masts and many sails", "tree", "x", "barking", "fish", "a"]]


def load_framing(name: str) -> Framing:
    return Framing.from_dict(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "framing" / f"{name}.yaml")))


@pytest.fixture(scope="module")
def tiny_qwen():
    return load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))


def test_framings_are_data_and_checked():
    for name in FRAMINGS:
        load_framing(name)
    with pytest.raises(ConfigError, match="match='C' is not one of the options"):
        Framing.from_dict({"name": "x", "template": "{query} {candidate}", "options": ["A", "B"], "match": "C"})
    with pytest.raises(ConfigError, match="must come before"):
        Framing.from_dict({"name": "x", "template": "{candidate} {query}", "options": ["A", "B"], "match": "A"})
    with pytest.raises(ConfigError, match="distinct"):
        Framing.from_dict({"name": "x", "template": "{query} {candidate}", "options": ["A", "A"], "match": "A"})


def test_multi_token_option_is_refused(smollm):
    bad = Framing.from_dict({"name": "wrong_bare", "template": "Q: {query}\nC: {candidate}\nRight or Wrong?",
                             "options": ["Right", "Wrong"], "match": "Right"})
    with pytest.raises(ConfigError, match="'Wrong' is not a single token"):
        Choice(smollm, bad)


TINY = [("tiny_qwen2vl", "qwen2_vl"), ("tiny_qwen25vl", "qwen2_5_vl"), ("tiny_idefics3", "idefics3"),
        ("tiny_llava_ov", "llava_onevision"), ("tiny_internvl", "internvl")]


@pytest.fixture(scope="module")
def tiny_backbones():
    return [load_backbone(ModelSpec(name=m, family=f, source="tiny")) for m, f in TINY]


@pytest.mark.parametrize("name", FRAMINGS)
def test_option_tokens_resolve_in_context(name, smollm, tiny_backbones):
    """Each family's chat template puts a different context before the answer; the ids must decode to the labels."""
    framing = load_framing(name)
    for bb in (smollm, *tiny_backbones):
        scorer = Choice(bb, framing)
        decoded = [bb.tokenizer.decode([i]).strip() for i in scorer.option_ids]
        assert decoded == list(framing.options), bb.spec.family


def test_framing_prompt_snapshots(smollm):
    got = {name: Choice(smollm, load_framing(name)).prompt(QUERY, CANDS[0]) for name in FRAMINGS}
    check_snapshot(REPO / "tests" / "snapshots" / "framing_prompts.json", got)


@pytest.mark.parametrize("name", ["mcq", "yes_no"])
def test_fast_equals_naive_on_real_smollm2(name, smollm):
    scorer = Choice(smollm, load_framing(name), batch_size=4)
    split = scorer.split(QUERY)
    tok = smollm.tokenizer
    for cand in CANDS:  # prefix and suffix tokenised apart give the whole prompt's ids
        whole = tok(scorer.prompt(QUERY, cand), add_special_tokens=False)["input_ids"]
        parts = (tok(split.prefix, add_special_tokens=False)["input_ids"]
                 + tok(split.suffix_for(cand.text), add_special_tokens=False)["input_ids"])
        assert parts == whole
    naive, fast = scorer.naive_probs(QUERY, CANDS), scorer.fast_probs(QUERY, CANDS)
    assert torch.allclose(naive, fast, atol=1e-4)
    assert torch.allclose(fast.sum(-1), torch.ones(len(CANDS)))
    row, reference = scorer.score(QUERY, CANDS), scorer.naive(QUERY, CANDS)  # the protocol: P(match), probs, entropy
    assert torch.allclose(row.scores, fast[:, scorer.framing.match_index]) and row.extras["probs"] == fast.tolist()
    assert torch.allclose(reference.scores, naive[:, scorer.framing.match_index])


def test_fast_equals_naive_tiny_qwen2vl_with_query_image(tiny_qwen):
    """An image in the shared prefix shifts M-RoPE positions: the suffix needs explicit 3D positions."""
    from freeret.data.datasets import load_dataset

    smoke = load_dataset({"name": "smoke_mm", "kind": "smoke"})
    image_query = next(it for it in smoke.items.values() if it.role == "query" and it.image)
    image_cands = [it for it in smoke.items.values() if it.role == "target" and it.image][:2]
    scorer = Choice(tiny_qwen, load_framing("mcq"), batch_size=3)
    cands = CANDS[:5] + image_cands
    naive, fast = scorer.naive_probs(image_query, cands), scorer.fast_probs(image_query, cands)
    assert torch.allclose(naive, fast, atol=1e-4)
    text_only = scorer.fast_probs(QUERY, CANDS[:3])  # a later text-only query is not shifted by stale deltas
    assert torch.allclose(text_only, scorer.naive_probs(QUERY, CANDS[:3]), atol=1e-4)


def test_calibration_divides_out_the_empty_candidate_prior(smollm):
    plain = Choice(smollm, load_framing("mcq"), batch_size=4)
    calibrated = Choice(smollm, load_framing("mcq"), batch_size=4, calibrate=True)
    prior = plain.fast_probs(QUERY, [Item.make("target", "", None)])[0]
    expected = plain.fast_probs(QUERY, CANDS) / prior
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(calibrated.option_probs(QUERY, CANDS), expected, atol=1e-5)
    assert torch.allclose(calibrated.score(QUERY, CANDS).scores, expected[:, 0], atol=1e-5)


def test_fused_ranking_rules():
    embed = torch.tensor([0.5, 0.9, 0.8, 0.1, 0.7])  # positive (index 0) is 4th by cosine
    positions = [1, 2, 4]  # top-3 by cosine, positive not among them
    probs = torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.9, 0.1]])
    ranked = fused_ranking(embed, positions, option_row(probs, 0).scores, RerankConfig(top_k=3))
    order = torch.argsort(-ranked).tolist()
    assert order == [2, 4, 1, 0, 3]  # tie 0.9/0.9 broken by cosine (0.8 > 0.7); the rest keep stage-1 order
    tied = option_row(torch.tensor([[0.6, 0.4], [0.6, 0.4]]), 0)
    ent = fused_ranking(embed, [0, 1], tied.scores, RerankConfig(top_k=2, tie_break="entropy"),
                        torch.tensor(tied.extras["entropy"]))
    assert torch.argsort(-ent).tolist()[:2] == [1, 0]  # equal scores and entropies: the positive loses the tie
    weighted = fused_ranking(embed, [1, 0], option_row(torch.tensor([[0.0, 1.0], [0.5, 0.5]]), 0).scores,
                             RerankConfig(top_k=2, fusion="weighted", fusion_weight=0.5))
    assert torch.argsort(-weighted).tolist()[:2] == [0, 1]  # 0.5*0.5+0.5*0.5=0.5 beats 0.5*0+0.5*0.9=0.45


@pytest.mark.parametrize("model, family", TINY)
def test_vision_features_computed_once_per_image(model, family):
    """Cached vision features give the same scores as running the tower in every prompt."""
    from freeret.data.datasets import load_dataset

    bb = load_backbone(ModelSpec(name=model, family=family, source="tiny"))
    smoke = load_dataset({"name": "smoke_mm", "kind": "smoke"})
    image_cands = [it for it in smoke.items.values() if it.role == "target" and it.image][:3]
    image_query = next(it for it in smoke.items.values() if it.role == "query" and it.image)
    cached = Choice(bb, load_framing("mcq"), batch_size=2)
    plain = Choice(bb, load_framing("mcq"), batch_size=2, vision_cache_mb=0)
    for query in (QUERY, image_query, QUERY):
        got = cached.fast_probs(query, image_cands + CANDS[:2])
        assert torch.allclose(got, plain.fast_probs(query, image_cands + CANDS[:2]), atol=1e-5)
    unique = {it.image for it in image_cands} | {image_query.image}
    # each image file through the tower once (LLaVA-OV: once per images-per-prompt count: 1 alone, 2 beside the query's)
    expected = len(image_cands) + len(unique) if bb.family.image_count_dependent else len(unique)
    assert cached.vision.misses == expected
    assert cached.vision.hits >= 3 * len(image_cands) - len(unique)


def test_dataset_specific_framing_variant(smollm):
    scorer = Choice(smollm, load_framing("mcq").for_dataset(dataset_prompt("mmeb/ImageNet-1K")))
    prompt = scorer.prompt(QUERY, CANDS[0])
    assert "Object: dog\nA. Yes, the object is present" in prompt
    assert "Candidate:" not in prompt


def test_imagenet_1k_gets_the_presence_question_in_table_1():
    """Issue 13's bug: mcq's variant was keyed `imagenet_1k`, the dataset is named `ImageNet-1K`, and the exact
    lookup never matched, so experiment=mmeb_table1 asked ImageNet-1K the generic question. The dataset config now
    names the variant (prompt.framing_variant) and the runner binds it; the other 35 datasets keep the main one."""
    from omegaconf import OmegaConf

    from freeret.benchmark import dataset_configs
    from freeret.run.plan import check

    cfg = OmegaConf.to_container(compose(["experiment=mmeb_table1"]), resolve=True)
    framings = {d["name"]: check({**cfg, "dataset": d}).framing for d in dataset_configs(cfg)}
    assert len(framings) == 36
    imagenet = framings.pop("ImageNet-1K")
    assert imagenet.variant == "presence"
    assert imagenet.split()[1] == "\nObject: " and imagenet.template.startswith("Task: Determine whether the object appears")
    assert {(f.variant, f.template) for f in framings.values()} == {(None, load_framing("mcq").template)}


def test_prompt_facts_and_variants_are_checked():
    """An unknown prompt key, a variant the framing lacks and the old per-dataset keys are one-line errors."""
    from freeret.prompts import DatasetPrompt

    with pytest.raises(ConfigError, match=r"^dataset d: prompt.query_knd is not a prompt fact; the keys are query_kind"):
        DatasetPrompt.from_config({"name": "d", "prompt": {"query_knd": "image"}})
    with pytest.raises(ConfigError, match=r"prompt.pipeline_variant is not a prompt fact"):  # owners: prior, framing, scorer
        DatasetPrompt.from_config({"name": "d", "prompt": {"pipeline_variant": "x"}})
    assert DatasetPrompt.from_config({"name": "d", "prompt": {"scorer_variant": "x"}}).variants == {"scorer": "x"}
    typo = DatasetPrompt.from_config({"name": "d", "prompt": {"framing_variant": "presense"}})
    with pytest.raises(ConfigError, match=r"^dataset d asks for framing variant 'presense' \(prompt.framing_variant\), "
                                          r"which framing 'mcq' does not define \(its variants: presence\); add "
                                          r"variants.presense"):
        load_framing("mcq").for_dataset(typo)
    mine = Framing.from_dict({"name": "mine", "template": "Q: {query}\nC: {candidate}\nOK?", "options": ["A", "B"],
                              "match": "A"})
    with pytest.raises(ConfigError, match=r"dataset ImageNet-1K asks for framing variant 'presence'.*'mine' does not "
                                          r"define \(its variants: none\)"):
        mine.for_dataset(dataset_prompt("mmeb/ImageNet-1K"))
    assert mine.for_dataset(dataset_prompt("wordnet_rd")).template == mine.template  # no variant asked: main one
    with pytest.raises(ConfigError, match=r"framing 'old': per-dataset templates \(datasets:\) are no longer read"):
        Framing.from_dict({"name": "old", "template": "{query} {candidate}", "options": ["A", "B"], "match": "A",
                           "datasets": {"imagenet_1k": "{query} {candidate}"}})
    with pytest.raises(ConfigError) as info:
        load_framing("yes_no").for_dataset(typo)
    assert "\n" not in str(info.value)


def test_choice_row_record_keeps_the_shard_fields():
    """The choice scorer's row (a RowScores since issue 24) writes the fields PairScores.record() wrote, in order."""
    probs = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    record = option_row(probs, 0).record()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    assert record == {"scores": probs[:, 0].tolist(), "probs": probs.tolist(), "entropy": entropy.tolist()}
    assert list(record) == ["scores", "probs", "entropy"]
