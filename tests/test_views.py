"""Views (issue 27): prompt ensembles (``prior=metaeol``, MetaEOL) and query-side generation (``expand=hyde``), one
mechanism (``freeret/views.py``, ``freeret/generate.py``). The combined vector against the naive reference (one-item
forwards, normalised, weighted by hand), the shared cache keys of the PromptEOL member, the frozen prompts, real
SmolLM2 generations (deterministic, cached, beside / alone / weight, the empty fallback), a ``-m`` sweep through
run.py, the unchanged default run, and the one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from freeret.data.datamodule import PromptCollator
from freeret.data.retrieval_set import Item, RetrievalSet, Row
from freeret.embed.layers import Readout
from freeret.embed.priors import Prior
from freeret.errors import ConfigError
from freeret.generate import clean
from freeret.retrieve.shards import ShardStore
from freeret.run.plan import check
from freeret.run.stages import embed_stage
from freeret.signatures import item_cache_key
from freeret.views import Views, combine, combined_key
from helpers import QUIET, REPO, check_snapshot, compose, dataset_prompt, results, run_py, sweep_jobs

QUERIES = ["a domestic animal that barks and is kept as a pet", "the fruit of an apple tree"]
TARGETS = ["dog", "apple"]


def _cfg(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)


def _views(cfg: dict, dataset: str = "wordnet_rd") -> tuple[Prior, Views]:
    prompt = dataset_prompt(dataset)
    prior = Prior.from_dict(cfg["prior"]).for_dataset(prompt)
    return prior, Views.from_config(cfg["prior"], cfg.get("expand"), prompt, prior)


def _rset() -> RetrievalSet:
    items = [Item.make("query", q, None) for q in QUERIES] + [Item.make("target", t, None) for t in TARGETS]
    rows = [Row(str(i), items[i].key, (items[2 + i].key, items[3 - i].key)) for i in range(2)]
    return RetrievalSet("tiny", rows, {it.key: it for it in items})


def _run(bb, tmp_path, *overrides: str) -> tuple[dict, dict, Views, Readout]:
    """embed_stage on the tiny set with ``overrides``; returns (timing stats, the record, the views, the readout)."""
    cfg = _cfg("prior=metaeol", *overrides, f"embed.cache_dir={tmp_path / 'cache'}", "embed.batch_size=8")
    prior, views = _views(cfg)
    views = dataclasses.replace(views, members=views.members[:2])  # two members: the mechanism, at half the forwards
    readout = Readout.from_config(cfg["layer"], cfg["pooling"])
    stats, record = {}, {}
    embed_stage(cfg, bb, readout, prior, _rset(), tmp_path / "run", stats, record, views)
    return stats, record, views, readout


def _naive(bb, readout: Readout, views: Views, item: Item, generated: str | None) -> torch.Tensor:
    """The reference: each view alone (one-item forward, no padding, no prefix cache), normalised, weighted by hand."""
    total, acc = 0.0, None
    for view in views.of(item, generated):
        batch = PromptCollator(bb, views.members[view.member])([view.item])
        vec = F.normalize(bb.embed(batch["inputs"], readout)[0].float(), dim=-1) * view.weight
        acc, total = (vec if acc is None else acc + vec), total + view.weight
    return acc / total


def _combined(bb, views: Views, store_folder: str, item: Item, generated: str | None) -> torch.Tensor:
    """The stored combined vector of ``item`` (its key recomputed from its views' rendered prompts)."""
    collates = [PromptCollator(bb, m) for m in views.members]
    parts = [(item_cache_key(v.item, collates[v.member].prompt(v.item)), v.weight) for v in views.of(item, generated)]
    return ShardStore(store_folder).scan().gather([combined_key(parts)])[0]


def test_combined_vectors_equal_the_naive_mean_and_a_rerun_reuses_everything(smollm, tmp_path, threads):
    """2 MetaEOL members + a HyDE view per query (beside, weight 0.5): every item's stored vector is the weighted mean
    of its views' normalised one-item vectors (1e-5); a rerun generates and embeds nothing and reads the same vectors;
    mode=alone (from the same cache) is the mean of the generated views only."""
    stats, record, views, readout = _run(smollm, tmp_path, "expand=hyde")
    assert record["views"]["ensemble"] == ["prompteol", "category"]
    gen = record["views"]["expand"]
    assert gen["generated"] == 2 and gen["reused"] == 0 and len(gen["examples"]) == 2 and gen["mode"] == "beside"
    lines = (tmp_path / "run" / "generations" / "tiny.jsonl").read_text().splitlines()
    made = {json.loads(line)["query"]: json.loads(line)["target"] for line in lines}
    assert set(made) == set(QUERIES) and all(made.values()), made
    # members x (queries + the targets and generated targets: a generated "dog" is the candidate "dog"'s vector)
    assert stats["embed_items_computed"] == 2 * (2 + len({*TARGETS, *made.values()}))
    rset = _rset()
    first = {}
    for item in rset.items.values():
        generated = made.get(item.text) if item.role == "query" else None
        assert len(views.of(item, generated)) == (4 if item.role == "query" else 2)
        first[item.key] = _combined(smollm, views, stats["embed_views_store"], item, generated)
        ref = _naive(smollm, readout, views, item, generated)
        assert (first[item.key] - ref).abs().max() < 1e-5, item
    again, record2, _, _ = _run(smollm, tmp_path, "expand=hyde")
    assert record2["views"]["expand"]["generated"] == 0 and record2["views"]["expand"]["reused"] == 2
    assert again["embed_items_computed"] == 0 and again["embed_views_combined"] == 0
    assert again["embed_views_store"] == stats["embed_views_store"]
    alone, record3, views3, _ = _run(smollm, tmp_path, "expand=hyde", "expand.mode=alone")
    assert alone["embed_items_computed"] == 0 and record3["views"]["expand"]["generated"] == 0
    assert alone["embed_views_store"] != stats["embed_views_store"]
    q = rset.items[rset.rows[0].query]
    got = _combined(smollm, views3, alone["embed_views_store"], q, made[q.text])
    ref = _naive(smollm, readout, views3, q, made[q.text])
    assert (got - ref).abs().max() < 1e-5 and (got - first[q.key]).abs().max() > 1e-3


def test_views_weights_and_the_empty_fallback():
    """beside: the generated views hold `weight` of the mean; alone: only they; an empty generation (cut to nothing)
    falls back to the query's own views; candidates are untouched; no ensemble, no expansion: no views."""
    q, t = Item.make("query", QUERIES[0], None), Item.make("target", "dog", None)
    for mode, weight in (("beside", 0.25), ("beside", 0.5), ("alone", 0.5)):
        _, views = _views(_cfg("prior=metaeol", "expand=hyde", f"expand.mode={mode}", f"expand.weight={weight}"))
        got = views.of(q, "dog")
        share = sum(v.weight for v in got if v.item.role == "target") / sum(v.weight for v in got)
        assert share == pytest.approx(1.0 if mode == "alone" else weight)
        assert {v.item.text for v in got if v.item.role == "target"} == {"dog"}
        assert len({v.member for v in got}) == 4 and views.of(t, "cat") == views.of(t)
        assert views.of(q, clean('"')) == views.of(q) and all(v.item is q for v in views.of(q, ""))
    assert clean('dog" which barks\nmore') == "dog" and clean("  Dog.\n") == "Dog"
    _, plain = _views(_cfg())
    assert not plain.active and check(_cfg()).views is None
    assert torch.allclose(combine(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), [1, 3]), torch.tensor([0.25, 0.75]))


def test_the_prompteol_member_shares_the_baselines_cache_and_the_prompts_are_frozen(smollm):
    """metaeol's first member renders (hence keys) exactly as `prior=fewshot prior.demos.k=0` on a WordNet and a
    general dataset; every member's prompts and the HyDE prompt, frozen (renew: FREERET_UPDATE_SNAPSHOTS=1)."""
    got = {}
    for dataset in ("wordnet_rd", "general/gcide", "general/vera"):
        prior, views = _views(_cfg("prior=metaeol", "expand=hyde"), dataset)
        base, _ = _views(_cfg("prior=fewshot", "prior.demos.k=0"), dataset)
        for role, text in (("query", QUERIES[0]), ("target", "dog")):
            item = Item.make(role, text, None)
            key = item_cache_key(item, PromptCollator(smollm, views.members[0]).prompt(item))
            assert key == item_cache_key(item, PromptCollator(smollm, base).prompt(item))
            for member in views.members:
                got[f"{dataset}/{member.name}/{role}"] = member.render(role, text, False)
        assert prior.name == "metaeol" and prior.render("query", "x", False) == views.members[0].render("query", "x", False)
        got[f"{dataset}/hyde"] = views.expand.user_text(QUERIES[0]) + " || " + views.expand.answer_prefix()
    check_snapshot(REPO / "tests" / "snapshots" / "views_prompts.json", got)


def test_a_sweep_of_priors_and_expansions_records_its_settings(tmp_path):
    """run.py -m prior=freeret,metaeol expand=none,hyde on a WordNet slice: each job records its views (the plain
    job's record has no views key); the second expansion job reuses the first's generations."""
    args = ["-m", "prior=freeret,metaeol", "expand=none,hyde", "dataset.limit=2",
            "dataset.pool=positives", "threads=1", f"embed.cache_dir={tmp_path / 'cache'}", *QUIET]
    jobs = sweep_jobs(args[1:])  # its own cache: what the counts below say must not depend on earlier tests
    assert [[o for o in job if o.split("=")[0] in ("prior", "expand")] for job in jobs] == [
        ["prior=freeret", "expand=none"], ["prior=freeret", "expand=hyde"], ["prior=metaeol", "expand=none"],
        ["prior=metaeol", "expand=hyde"]]
    proc = run_py(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain, hyde, meta, both = (results(tmp_path / str(i), "wordnet_rd") for i in range(4))
    assert plain.views is None and "views" not in plain.to_dict() and plain.prior == "freeret"
    assert hyde.views["expand"]["name"] == "hyde" and hyde.views["expand"]["generated"] == 2 and "ensemble" not in hyde.views
    assert meta.views["ensemble"] == ["prompteol", "category", "keyword", "summary"] and "expand" not in meta.views
    assert both.views["expand"]["reused"] == 2 and both.views["expand"]["generated"] == 0
    assert meta.timing["embed_items_computed"] == 4 * 4 and plain.timing["embed_items_computed"] == 4
    assert (tmp_path / "1" / "generations" / "wordnet_rd.jsonl").is_file()
    assert "wordnet_rd: embed hit@1=" in proc.stdout


@pytest.mark.parametrize(("overrides", "message"), [
    (["expand=hyde", "expand.mode=instead"], "expand.mode='instead' is not one of beside, alone"),
    (["expand=hyde", "expand.weight=1.5"], "expand.weight=1.5 must be a number in [0, 1]"),
    (["expand=hyde", "expand.max_new_tokens=0"], "expand.max_new_tokens=0 must be a positive integer"),
    (["expand=hyde", "+expand.temperature=1"], "unknown expand key(s) temperature"),
    (["expand=hyde", "expand.template.template=no slot"], "expand.template: the template must hold {text}"),
    (["expand=hyde", "retriever=hybrid_promptreps"], "retriever=hybrid_promptreps (PromptReps lexical vectors) cannot "
                                                     "combine with a prompt ensemble or a query expansion"),
    (["prior=metaeol", "retriever=promptreps"], "retriever=promptreps (PromptReps lexical vectors) cannot combine"),
])
def test_bad_view_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check(_cfg(*overrides))
    prior = _cfg("prior=metaeol")["prior"]
    for bad, says in (([], "ensemble must be a non-empty list"), ([{"name": "x"}], r"ensemble\[0\] must be a prior"),
                      ([prior["ensemble"][0]] * 2, "ensemble member names repeat")):
        with pytest.raises(ConfigError, match=says):
            Views.from_config({**prior, "ensemble": bad}, None, None, Prior.from_dict(prior))


def test_image_queries_are_refused_before_weights_load(tmp_path, monkeypatch):
    import freeret.run.inputs

    monkeypatch.setattr(freeret.run.inputs, "load_backbone", lambda *a, **k: pytest.fail("weights loaded"))
    proc = run_py(["expand=hyde", "dataset=smoke_mm", "dataset.limit=2", *QUIET], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "expand=hyde generates from text; dataset" in proc.stderr and "has image queries" in proc.stderr
