"""Stage-2 scorers (conf/scorer): configs are data and checked, prompts are frozen, every fast path equals its naive
reference, the math matches hand computations, unsupported modalities stop before weights, runs resume per scorer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from freeret.backbone import ModelSpec, load_backbone
from freeret.data.retrieval_set import Item
from freeret.errors import ConfigError, FreeRetError
from freeret.rerank.framing import Framing
from freeret.rerank.scorers import scorer_spec, specs
from freeret.rerank.scorers.base import BuildContext
from freeret.rerank.scorers.choice import Choice
from freeret.rerank.scorers.listwise import sliding_starts
from helpers import REPO, check_snapshot, compose, spec_of
from helpers import build_scorer as build

SCORERS = sorted(p.stem for p in (REPO / "conf" / "scorer").glob("*.yaml"))
QUERY = Item.make("query", "a domestic animal that barks", None)
CANDS = [Item.make("target", t, None) for t in ["dog", "bicycle", "an old wooden ship with three tall masts", "barking", "x"]]


@pytest.fixture(scope="module")
def tiny_qwen():
    return load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))


@pytest.fixture(scope="module")
def smoke():
    from freeret.data.datasets import load_dataset

    return load_dataset({"name": "smoke_mm", "kind": "smoke"})


# -- configs -------------------------------------------------------------------------------------------------------
def test_every_scorer_config_is_data_and_registered():
    assert set(SCORERS) == set(specs()) == {"choice", "choice_debiased", "candidate_likelihood", "query_likelihood",
                                          "bidirectional", "listwise"}
    for name in SCORERS:
        assert spec_of(name).name == name
    assert compose([]).scorer.name == "choice"  # today's behaviour is the default
    assert compose(["method=freeret"]).scorer.name == "choice"
    blim = compose(["method=freeret", "rerank=blim"])
    assert blim.scorer.name == "bidirectional" and blim.scorer.candidate.name == "candidate_likelihood"


@pytest.mark.parametrize("name, overrides, expected", [
    ("candidate_likelihood", ["scorer.reduce=median"], "reduce='median' is not one of mean, sum"),
    ("candidate_likelihood", ["scorer.cpn_lambda=-1"], "cpn_lambda must be a number >= 0"),
    ("candidate_likelihood", ["+scorer.cpn_lamda=1"], "unknown key(s) cpn_lamda"),
    ("candidate_likelihood", ["scorer.prompt.template=no slot"], "must hold {query} once each"),
    ("candidate_likelihood", ["scorer.prompt.template='{query} {nope}'"], "undefined placeholder(s) nope"),
    ("query_likelihood", ["scorer.prompt.template='{query}'"], "must hold {candidate} once each"),
    ("bidirectional", ["scorer.weight=1.5"], "weight must be a number in [0, 1]"),
    ("bidirectional", ["scorer.candidate.reduce=max"], "reduce='max' is not one of mean, sum"),
    ("listwise", ["scorer.window=30"], "window must be between 2 and the number of labels (20)"),
    ("listwise", ["scorer.stride=10"], "stride (10) must be smaller than window (10)"),
    ("listwise", ["scorer.labels=[A,A]", "scorer.window=2", "scorer.stride=1"], "labels must be distinct"),
    ("listwise", ["scorer.compact=tiles"], "compact='tiles' is not one of null, caption"),
    ("listwise", ["scorer.line='{label}'"], "line must hold {label} and {candidate} once each"),
    ("listwise", ["scorer.prompt.template='{candidates} {query}'"], "slots must come in the order {query}, {candidates}"),
])
def test_bad_scorer_configs_are_one_line_errors(name, overrides, expected):
    with pytest.raises(ConfigError) as info:
        spec_of(name, *overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_dataset_prompt_facts_fill_the_scorer_prompts():
    """The dataset owns its wording facts: wordnet_rd's query_kind/target_kind replace the YAML's defaults."""
    from freeret.prompts import DatasetPrompt

    prompt = DatasetPrompt.from_config(OmegaConf.to_container(compose(["dataset=wordnet_rd"]).dataset))
    spec = spec_of("candidate_likelihood")
    assert spec.prompt.pieces()[0][0] == "Here is a query: "
    assert spec.prompt.pieces(prompt.vars)[0] == ["Here is a definition: ", "\nWhich word matches it?\n"]
    assert spec.prompt.bind(prompt, "scorer", spec.name).pieces() == spec.prompt.pieces(prompt.vars)


def test_unknown_scorer_is_refused():
    with pytest.raises(ConfigError, match="scorer='nope' is not available; choose one of bidirectional, "):
        scorer_spec({"name": "nope"})


# -- prompts -------------------------------------------------------------------------------------------------------
def test_scorer_prompt_snapshots(smollm):
    """The exact prompt text of every scorer (and what is scored after it) on SmolLM2's chat template."""
    query, cand = QUERY, CANDS[0]
    got = {}
    for name in SCORERS:
        scorer = build(smollm, name)
        if name == "choice":
            got[name] = scorer.prompt(query, cand)
        elif name == "choice_debiased":
            got[name] = [scorer.first.prompt(query, cand), scorer.second.prompt(query, cand)]
        elif name == "candidate_likelihood":
            got[name] = {"prompt": scorer.prompt(query), "prior_prompt": scorer.prior_prompt(),
                         "scored": smollm.tokenizer.convert_ids_to_tokens(scorer.text.scored_ids(scorer.prompt(query), cand.text))}
        elif name == "query_likelihood":
            got[name] = {"prompt": scorer.prompt(cand),
                         "scored": smollm.tokenizer.convert_ids_to_tokens(scorer.text.scored_ids(scorer.prompt(cand), query.text))}
        elif name == "bidirectional":
            got[name] = [scorer.cl.prompt(query), scorer.ql.prompt(cand)]
        else:
            got[name] = scorer.prompt(query, CANDS[:3])
    check_snapshot(REPO / "tests" / "snapshots" / "scorer_prompts.json", got)


# -- fast == naive -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides", [
    ("choice_debiased", []), ("candidate_likelihood", []), ("candidate_likelihood", ["scorer.reduce=sum"]),
    ("query_likelihood", []), ("bidirectional", []), ("listwise", []),
    ("listwise", ["scorer.window=3", "scorer.stride=1", "scorer.permutations=2"]),
])
def test_fast_equals_naive_on_real_smollm2(name, overrides, smollm):
    scorer = build(smollm, name, *overrides)
    fast, naive = scorer.score(QUERY, CANDS), scorer.naive(QUERY, CANDS)
    assert fast.scores.shape == (len(CANDS),) and fast.scores.dtype == torch.float32
    assert torch.allclose(fast.scores, naive.scores, atol=1e-4), (fast.scores, naive.scores)
    assert json.loads(json.dumps(fast.record()))  # a shard line


def test_candidate_likelihood_equals_a_textbook_forward(smollm):
    """log P(candidate | prompt) from ``model(ids).logits`` over the whole sequence, by hand."""
    scorer = build(smollm, "candidate_likelihood", "scorer.cpn_lambda=0", "scorer.reduce=sum")
    prompt = scorer.prompt(QUERY)
    expected = []
    for cand in CANDS:
        ids = smollm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scored = smollm.tokenizer(" " + cand.text, add_special_tokens=False)["input_ids"]  # after "Answer:", a space
        with torch.no_grad():
            logits = smollm.model(torch.tensor([ids + scored])).logits[0].float()
        logprobs = logits[len(ids) - 1 : -1].log_softmax(-1)
        expected.append(sum(float(logprobs[i, t]) for i, t in enumerate(scored)))
    assert torch.allclose(scorer.score(QUERY, CANDS).scores, torch.tensor(expected), atol=1e-4)


def test_fast_equals_naive_tiny_qwen2vl_with_images(tiny_qwen, smoke):
    """Candidate likelihood with an image query (the image in the shared prefix shifts M-RoPE positions), query
    likelihood with image candidates, listwise with images in the list and with compact captions."""
    image_query = next(it for it in smoke.items.values() if it.role == "query" and it.image)
    image_cands = [it for it in smoke.items.values() if it.role == "target" and it.image][:3]
    text_query = next(it for it in smoke.items.values() if it.role == "query" and not it.image)
    cl = build(tiny_qwen, "candidate_likelihood", dataset="smoke_mm")
    assert torch.allclose(cl.score(image_query, CANDS).scores, cl.naive(image_query, CANDS).scores, atol=1e-4)
    assert torch.allclose(cl.score(QUERY, CANDS[:2]).scores, cl.naive(QUERY, CANDS[:2]).scores, atol=1e-4)  # no stale shift
    ql = build(tiny_qwen, "query_likelihood", dataset="smoke_mm")
    mixed = image_cands + CANDS[:2]
    assert torch.allclose(ql.score(text_query, mixed).scores, ql.naive(text_query, mixed).scores, atol=1e-4)
    lw = build(tiny_qwen, "listwise", "scorer.window=2", "scorer.stride=1", dataset="smoke_mm")
    assert torch.allclose(lw.score(image_query, mixed).scores, lw.naive(image_query, mixed).scores, atol=1e-4)
    compact = build(tiny_qwen, "listwise", "scorer.window=2", "scorer.stride=1", "scorer.compact=caption",
                    "scorer.caption_tokens=3", dataset="smoke_mm")
    got = compact.score(text_query, mixed)
    assert torch.allclose(got.scores, compact.naive(text_query, mixed).scores, atol=1e-4)
    assert compact.captions_written == 3 and len(compact.captions) == 3  # once per image per run
    assert len(got.extras["captions"]) == len(mixed) and got.extras["captions"][3:] == ["", ""]
    assert compact.windows_run > 0 and not compact.prompt(text_query, image_cands).count("<|image_pad|>")


# -- the math, by hand ---------------------------------------------------------------------------------------------
def test_cpn_with_lambda_one_is_raw_minus_prior(smollm):
    raw = build(smollm, "candidate_likelihood", "scorer.cpn_lambda=0").score(QUERY, CANDS)
    pmi = build(smollm, "candidate_likelihood", "scorer.cpn_lambda=1")
    prior = torch.tensor(pmi.naive(Item.make("query", pmi.spec.prior_query, None), CANDS).extras["cond"])
    got = pmi.score(QUERY, CANDS)
    assert torch.allclose(got.scores, raw.scores - prior, atol=1e-4)
    half = build(smollm, "candidate_likelihood", "scorer.cpn_lambda=0.5").score(QUERY, CANDS)
    assert torch.allclose(half.scores, raw.scores - 0.5 * prior, atol=1e-4)
    assert "prior" not in raw.extras and got.extras["prior"] == pytest.approx(prior.tolist(), abs=1e-4)
    assert pmi.priors_computed == len(CANDS)
    pmi.score(QUERY, CANDS)
    assert pmi.priors_computed == len(CANDS)  # each unique candidate's prior once per run


def test_bidirectional_is_blims_weighted_sum(smollm):
    bi = build(smollm, "bidirectional", "scorer.weight=0.3", "scorer.candidate.cpn_lambda=0.8")
    got = bi.score(QUERY, CANDS)
    cl = build(smollm, "candidate_likelihood", "scorer.cpn_lambda=0.8").score(QUERY, CANDS)
    ql = build(smollm, "query_likelihood").score(QUERY, CANDS)
    assert torch.allclose(got.scores, 0.3 * ql.scores + 0.7 * cl.scores, atol=1e-5)
    assert set(got.extras) == {"cond", "prior", "ql"}


def test_debiasing_against_a_hand_computation(smollm):
    """Both orders by hand: the swapped MCQ written out in full, P(match) averaged, a flip where the calls differ."""
    mcq = Framing.from_dict(OmegaConf.to_container(compose([]).framing))
    swapped = Framing.from_dict({
        "name": "mcq_by_hand", "options": ["A", "B"], "match": "B", "answer_prefix": "Answer:",
        "template": "Task: Determine whether the candidate matches the query.\nQuery: {query}\nCandidate: {candidate}\n"
                    "A. No, the candidate does not match or only partially matches.\nB. Yes, the candidate fully matches the query."})
    first, second = Choice(smollm, mcq).naive_probs(QUERY, CANDS), Choice(smollm, swapped).naive_probs(QUERY, CANDS)
    got = build(smollm, "choice_debiased").score(QUERY, CANDS)
    assert torch.allclose(got.scores, (first[:, 0] + second[:, 1]) / 2, atol=1e-5)
    calls = [(bool(a[0] > a[1]), bool(b[1] > b[0])) for a, b in zip(first, second)]
    assert got.extras["flips"] == [x != y for x, y in calls]
    p = got.scores
    assert torch.allclose(torch.tensor(got.extras["entropy"]), -(p * p.log() + (1 - p) * (1 - p).log()), atol=1e-5)


def test_flip_rate_is_read_from_the_records():
    from freeret.rerank.scorers.choice import DebiasedChoice

    records = [{"flips": [True, False, False]}, {"flips": [True]}]
    assert DebiasedChoice.summary(None, records) == {"flip_rate": 0.5, "pairs": 4}


def test_sliding_windows_and_borda_scores_by_hand():
    assert sliding_starts(5, 10, 5) == [0]
    assert sliding_starts(10, 4, 2) == [6, 4, 2, 0]
    assert sliding_starts(9, 4, 3) == [5, 2, 0]
    from freeret.rerank.scorers.listwise import Listwise

    lw = Listwise.__new__(Listwise)
    lw.spec = spec_of("listwise", "scorer.window=3", "scorer.stride=2")
    lw.captions = {}
    cands = [Item.make("target", str(v), None) for v in [1, 5, 2, 4, 3]]  # stage-1 order; the model prefers big numbers
    seen = []

    def probs(windows):
        seen.append([[c.text for c in w] for w in windows])
        return [torch.tensor([float(c.text) for c in w]).softmax(-1) for w in windows]

    got = lw.rank(QUERY, cands, probs)
    # windows from the bottom: [2,4,3] -> [4,3,2]; then the top three [1,5,4] -> [5,4,1]; final order 5 4 1 3 2
    assert seen == [[["2", "4", "3"]], [["1", "5", "4"]]]
    assert got.scores.tolist() == [3.0, 5.0, 1.0, 4.0, 2.0]  # Borda: K - position
    lw.spec = spec_of("listwise", "scorer.window=10", "scorer.permutations=3")
    one = lw.rank(QUERY, cands, probs)  # one window: the label probability, averaged over 3 orders
    expected = torch.tensor([1.0, 5, 2, 4, 3]).softmax(-1)
    assert torch.allclose(one.scores, expected, atol=1e-6) and len(one.extras["passes"][0]) == 3
    orders = lw.orders(QUERY, 5)
    assert orders[0] == [0, 1, 2, 3, 4] and sorted(orders[1]) == list(range(5)) and orders == lw.orders(QUERY, 5)


# -- runs: modalities, resume, results -----------------------------------------------------------------------------
@pytest.mark.parametrize("scorer, expected", [
    ("candidate_likelihood", "scorer=candidate_likelihood takes text candidates, but smoke_mm has 8 image candidates"),
    ("query_likelihood", "scorer=query_likelihood takes text queries, but smoke_mm has 8 image queries"),
    ("bidirectional", "scorer=bidirectional takes text queries, but smoke_mm has 8 image queries"),
])
def test_unsupported_modalities_stop_before_weights(scorer, expected, tmp_path, monkeypatch):
    from test_errors import run_in_process

    with pytest.raises(FreeRetError) as info:
        run_in_process(["model=tiny_qwen2vl", "dataset=smoke_mm", "pipeline=two_stage", f"scorer={scorer}"], tmp_path,
                       monkeypatch)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args, expected", [
    (["scorer=query_likelihood", "pipeline.calibrate=true"], "scorer=query_likelihood has no options"),
    (["scorer=listwise", "pipeline.tie_break=entropy"], "scorer=listwise does not: use tie_break=embed"),
    (["scorer=choice_debiased", "framing.options=[A,B,C]", "framing.match=A"], "the order swap needs exactly two options"),
])
def test_scorer_and_pipeline_mismatches_stop_before_weights(args, expected, tmp_path, monkeypatch):
    from test_errors import run_in_process

    with pytest.raises(FreeRetError) as info:
        run_in_process(["model=tiny_qwen2vl", "dataset=smoke_mm", "pipeline=two_stage", *args], tmp_path, monkeypatch)
    assert expected in str(info.value) and "\n" not in str(info.value)


TEXT_RUN = ["model=tiny_qwen2vl", "dataset=wordnet_rd", "dataset.limit=6", "dataset.pool=positives", "pipeline=two_stage",
            "pipeline.top_k=4", "pipeline.shard_size=2", "pipeline.queries_per_step=2", "embed.cache=false", "logger=none",
            "trainer.enable_progress_bar=false"]


def _run(run_dir, overrides):
    from freeret.run.pipeline import run

    cfg = OmegaConf.to_container(compose([*TEXT_RUN, *overrides]), resolve=True)
    cfg["run_dir"] = str(run_dir)
    run(cfg)
    return json.loads((run_dir / "results" / "wordnet_rd.json").read_text())


@pytest.mark.parametrize("name", ["choice", "choice_debiased", "candidate_likelihood", "query_likelihood", "bidirectional",
                                  "listwise"])
def test_every_scorer_resumes_from_its_own_shards(name, tmp_path):
    """A run stopped after some rerank shards were written (here: the others deleted, as a kill leaves them) scores
    only the missing rows, in the folder named by its scorer's signature, and ends with the same results."""
    overrides = [f"scorer={name}", *(["scorer.window=3", "scorer.stride=1"] if name == "listwise" else [])]
    first = _run(tmp_path, overrides)
    assert first["rerank"]["scorer"] == name and first["timing"]["rerank_rows_computed"] == 6
    folders = list((tmp_path / "rerank" / "wordnet_rd").iterdir())
    shards = sorted(folders[0].glob("*.jsonl"))
    assert len(folders) == 1 and len(shards) == 3
    for shard in shards[1:]:
        shard.unlink()
    again = _run(tmp_path, overrides)
    assert again["timing"]["rerank_rows_reused"] == 2 and again["timing"]["rerank_rows_computed"] == 4
    if name in ("candidate_likelihood", "bidirectional"):  # priors of the finished rows were read back, not recomputed
        assert again["timing"]["rerank_candidate_priors_computed"] < first["timing"]["rerank_candidate_priors_computed"]
    for payload in (first, again):
        payload.pop("timing"), payload["config"].pop("run_dir", None)
    assert again == first
    other = _run(tmp_path, ["scorer=candidate_likelihood", "scorer.cpn_lambda=0.5"] if name != "candidate_likelihood"
                 else ["scorer=candidate_likelihood", "scorer.reduce=sum"])
    assert other["timing"]["rerank_rows_computed"] == 6  # another scorer setting: its own folder, nothing reused
    assert len(list((tmp_path / "rerank" / "wordnet_rd").iterdir())) == 2


def test_results_record_the_scorer_and_the_flip_rate(tmp_path):
    res = _run(tmp_path, ["scorer=choice_debiased"])
    rerank = res["rerank"]
    assert rerank["scorer"] == "choice_debiased" and rerank["options"] == ["A", "B"] and res["framing"] == "mcq"
    assert 0 <= rerank["scorer_summary"]["flip_rate"] <= 1 and rerank["scorer_summary"]["pairs"] == 24
    records = [json.loads(line) for p in tmp_path.glob("rerank/*/*/*.jsonl") for line in p.read_text().splitlines()]
    flips = [f for rec in records for f in rec["flips"]]
    assert math.isclose(rerank["scorer_summary"]["flip_rate"], sum(flips) / len(flips))
    cl = _run(tmp_path / "cl", ["scorer=candidate_likelihood"])
    assert cl["framing"] is None and cl["rerank"]["scorer_config"]["cpn_lambda"] == 1.0
    assert "{query}" in cl["rerank"]["prompt"] and cl["rerank"]["scorer_summary"] == {}


def test_a_dataset_picks_a_scorer_variant(smollm):
    """``prompt.scorer_variant`` in a dataset's config picks the scorer's named wording (null: its main one); the
    dataset's vars fill it as they fill the main one."""
    import dataclasses

    from freeret.prompts import DatasetPrompt
    from freeret.rerank.stage import rerank_signature
    from freeret.templates import Template

    base = spec_of("query_likelihood")
    prompt = Template(template=base.prompt.template, slots=("candidate",), answer_prefix=base.prompt.answer_prefix,
                      vars=base.prompt.vars, variants={"terse": "Entry: {candidate}\nA {query_kind} of it:", "plain": None})
    spec = dataclasses.replace(base, prompt=prompt)
    cand = Item.make("target", "dog", None)

    def scorer(variant, query_kind="definition"):
        dataset = DatasetPrompt("wordnet_rd", {"query_kind": query_kind}, {"scorer": variant} if variant else {})
        return spec.build(BuildContext(smollm, None, dataset, 3))

    assert "Entry: dog\nA definition of it:" in scorer("terse").prompt(cand)
    assert scorer("plain").prompt(cand) == scorer(None).prompt(cand) and "Entry:" not in scorer(None).prompt(cand)
    # the resume folder is named by the bound wording: another variant or another var is another folder
    signature = {(v, k): rerank_signature(scorer(v, k), "wordnet_rd") for v in ("terse", "plain", None)
                 for k in ("definition", "gloss")}
    assert signature["plain", "definition"] == signature[None, "definition"]
    assert len({signature["terse", "definition"], signature[None, "definition"], signature["terse", "gloss"]}) == 3


def test_an_undefined_scorer_variant_stops_before_weights(tmp_path, monkeypatch):
    from test_errors import run_in_process

    from freeret.run.plan import check

    args = ["model=tiny_qwen2vl", "dataset=wordnet_rd", "pipeline=two_stage", "++dataset.prompt.scorer_variant=nope"]
    with pytest.raises(FreeRetError) as info:
        run_in_process([*args, "scorer=query_likelihood"], tmp_path, monkeypatch)
    assert "dataset wordnet_rd asks for scorer variant 'nope' (prompt.scorer_variant), which scorer " \
           "'query_likelihood' does not define" in str(info.value) and "\n" not in str(info.value)
    # the choice scorers have no prompt of their own (the framing's wording): a scorer variant does not concern them
    check(OmegaConf.to_container(compose([*args, "scorer=choice"]), resolve=True))
