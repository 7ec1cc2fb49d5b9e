"""Stage-1 post-processing, BM25 and fusion against hand computations; statistics fitted without labels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from freeret.data.retrieval_set import Item, Row
from freeret.errors import ConfigError
from freeret.retrieve.fusion import RetrieverSpec, fuse, minmax, ranks
from freeret.retrieve.lexical import BM25Spec, bm25_scores
from freeret.retrieve.postprocess import PostprocessSpec, Statistics, fit
from freeret.retrieve.ranking import fit_statistics, rank_rows
from freeret.retrieve.shards import ShardStore, write_shard

MEAN = torch.tensor([3.0, -2.0, 5.0])
# centred data with known principal axes: orthogonal mean-zero columns, variances 400/3 > 16/3 > 4/3
C1 = torch.tensor([10.0, -10.0, 10.0, -10.0])
C2 = torch.tensor([1.0, 1.0, -1.0, -1.0])
C3 = torch.tensor([2.0, -2.0, -2.0, 2.0])
X = torch.stack([C1, C2, C3], 1) + MEAN


def spec(**kw) -> PostprocessSpec:
    return PostprocessSpec(**kw)


def test_center_subtracts_the_mean():
    stats = fit(spec(name="center"), {"all": X})
    assert torch.allclose(stats.apply(X, "query"), X - MEAN, atol=1e-5)
    assert torch.allclose(stats.tensors["all.mean"], MEAN)


def test_abtt_removes_the_mean_and_the_top_direction():
    stats = fit(spec(name="abtt", d=1), {"all": X})
    want = torch.stack([torch.zeros(4), C2, C3], 1)  # the e1 coordinate (largest variance) is gone
    assert torch.allclose(stats.apply(X, "target"), want, atol=1e-4)
    two = fit(spec(name="abtt", d=2), {"all": X}).apply(X, "target")  # then e3 (variance 16/3 > 4/3)
    assert torch.allclose(two, torch.stack([torch.zeros(4), C2, torch.zeros(4)], 1), atol=1e-4)
    new = torch.tensor([[1.0, 1.0, 1.0]])  # a vector not in the fit: (x - mean) without its e1 part
    assert torch.allclose(stats.apply(new, "query"), torch.tensor([[0.0, 3.0, -4.0]]), atol=1e-4)


def test_whiten_gives_unit_covariance_and_the_hand_cosines():
    stats = fit(spec(name="whiten"), {"all": X})
    w = stats.apply(X, "query")
    cov = w.T @ w / (w.shape[0] - 1)
    assert torch.allclose(cov, torch.eye(3), atol=1e-4)
    z = (X - MEAN) / (X - MEAN).std(0)  # per-coordinate scaling; cosine is blind to the rotation/sign
    assert torch.allclose(F.normalize(w, dim=-1) @ F.normalize(w, dim=-1).T,
                          F.normalize(z, dim=-1) @ F.normalize(z, dim=-1).T, atol=1e-4)
    assert fit(spec(name="whiten", dim=1), {"all": X}).apply(X, "query").shape == (4, 1)


def test_lmhead_filter_projects_out_the_edge_singular_directions():
    head = torch.tensor([[5.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 0, 0]])  # singular directions e1 > e2 > e3
    x = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.0, 6.0]])
    top = fit(spec(name="lmhead_filter", top=1), {}, head)
    assert torch.allclose(top.apply(x, "query"), torch.tensor([[0.0, 2.0, 3.0], [0.0, 5.0, 6.0]]), atol=1e-5)
    edge = fit(spec(name="lmhead_filter", top=1, bottom=1), {}, head)
    assert torch.allclose(edge.apply(x, "query"), torch.tensor([[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]]), atol=1e-5)
    centred = fit(spec(name="lmhead_filter", top=1, center=True), {"all": X}, head)
    assert torch.allclose(centred.apply(X, "query"), torch.stack([torch.zeros(4), C2, C3], 1), atol=1e-5)
    with pytest.raises(ConfigError, match="LM head"):
        fit(spec(name="lmhead_filter"), {})


def test_statistics_per_role_use_each_roles_own_mean():
    q, t = X[:2], X[2:] + 100.0
    stats = fit(spec(name="center", fit_on="roles"), {"query": q, "target": t})
    assert torch.allclose(stats.apply(q, "query"), q - q.mean(0))
    assert torch.allclose(stats.apply(t, "target"), t - t.mean(0))
    assert stats.fitted_on == {"query": 2, "target": 2}


def test_digest_moves_with_data_and_parameters_and_survives_a_round_trip(tmp_path: Path):
    a = fit(spec(name="abtt", d=1), {"all": X})
    assert a.digest == fit(spec(name="abtt", d=1), {"all": X.clone()}).digest
    assert a.digest != fit(spec(name="abtt", d=2), {"all": X}).digest
    assert a.digest != fit(spec(name="abtt", d=1), {"all": X + 1e-3}).digest
    path = a.save(tmp_path)
    assert path.parent == tmp_path / "postprocess" and a.digest[:16] in path.name
    back = Statistics.load(a.spec, path)
    assert back.digest == a.digest and back.fitted_on == a.fitted_on


def test_bad_postprocess_configs_are_one_line_errors():
    for cfg, match in [({"name": "pca"}, "postprocess.name"), ({"name": "center", "fit_on": "labels"}, "fit_on"),
                       ({"name": "abtt", "d": -1}, "postprocess.d"), ({"name": "center", "fit_on": "corpus"}, "corpus"),
                       ({"name": "center", "bogus": 1}, "unknown postprocess")]:
        with pytest.raises(ConfigError, match=match):
            PostprocessSpec.from_dict(cfg)
    with pytest.raises(ConfigError, match="exceeds"):
        fit(spec(name="abtt", d=9), {"all": X})


def _store(tmp_path: Path, vectors: dict[str, torch.Tensor]) -> ShardStore:
    keys = sorted(vectors)
    write_shard(tmp_path / "s.safetensors", keys, torch.stack([vectors[k] for k in keys]))
    return ShardStore(tmp_path).scan()


def test_statistics_are_fitted_without_labels(tmp_path: Path):
    """The same items under permuted labels (which candidate is a row's positive, row order) give the same
    statistics and the same transformed vectors."""
    gen = torch.Generator().manual_seed(0)
    vectors = {f"q{i}": torch.randn(8, generator=gen) + 3 for i in range(4)}
    vectors.update({f"t{i}": torch.randn(8, generator=gen) - 1 for i in range(6)})
    store = _store(tmp_path, vectors)
    targets = [f"t{i}" for i in range(6)]
    rows = [Row(f"r{i}", f"q{i}", tuple(targets[i:] + targets[:i])) for i in range(4)]
    permuted = [Row(f"r{i}", f"q{(i + 1) % 4}", tuple(reversed(targets[i:] + targets[:i]))) for i in range(4)][::-1]
    for fit_on in ("items", "roles"):
        got = []
        for rs in (rows, permuted):
            keys = {"query": [r.query for r in rs], "target": [k for r in rs for k in r.candidates]}
            stats = fit_statistics(spec(name="abtt", d=2, fit_on=fit_on), store, keys)
            got.append((stats.digest, stats.apply(store.gather(["q0", "t3"]), "target")))
        assert got[0][0] == got[1][0]
        assert torch.equal(got[0][1], got[1][1])


def test_sampled_fit_is_seeded():
    big = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    a = fit(spec(name="center", max_fit_items=10), {"all": big})
    assert a.digest == fit(spec(name="center", max_fit_items=10), {"all": big}).digest
    assert not torch.allclose(a.tensors["all.mean"], big.mean(0).float())


def test_ranks_share_ties_and_fusion_matches_hand_values():
    assert ranks(torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9])).tolist() == [3.0, 1.0, 3.0, 5.0, 1.0]
    dense, lexical = torch.tensor([0.9, 0.5, 0.7]), torch.tensor([0.0, 2.0, 0.0])
    rrf = fuse(dense, lexical, RetrieverSpec(name="hybrid", fusion="rrf", rrf_k=60))
    want = torch.tensor([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62 + 1 / 62])
    assert torch.allclose(rrf, want)
    weighted = fuse(dense, lexical, RetrieverSpec(name="hybrid", fusion="weighted", weight=0.5))
    assert torch.allclose(weighted, torch.tensor([0.5, 0.5, 0.25]))
    assert minmax(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="retriever.weight"):
        RetrieverSpec(name="hybrid", weight=2)
    with pytest.raises(ConfigError, match="unknown retriever"):
        RetrieverSpec.from_dict({"name": "bm25", "k": 3})


def _items(texts: dict[str, tuple[str, str]]) -> dict[str, Item]:
    return {k: Item(k, role, text) for k, (role, text) in texts.items()}


def test_bm25_matches_the_lucene_formula_by_hand():
    items = _items({"q": ("query", "red apple"), "a": ("target", "apple apple pie"), "b": ("target", "red car"),
                    "c": ("target", "blue sky")})
    rows = [Row("r", "q", ("a", "b", "c"))]
    got = bm25_scores(rows, items, BM25Spec(k1=1.5, b=0.75, stemmer=None, stopwords=None))[0]
    n, avgdl, k1, b = 3, 7 / 3, 1.5, 0.75

    def term(tf, df, dl):  # Lucene's BM25 (no (k1 + 1) factor: the same ranking)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))

    want = [term(2, 1, 3), term(1, 1, 2), 0.0]
    assert torch.allclose(got, torch.tensor(want), atol=1e-5)


def test_bm25_stems_and_keeps_each_rows_candidate_order():
    items = _items({"q": ("query", "soldiers of the river"), "a": ("target", "soldier"), "b": ("target", "rivers"),
                    "c": ("target", "the")})
    rows = [Row("r1", "q", ("a", "b", "c")), Row("r2", "q", ("c", "b"))]
    stemmed = bm25_scores(rows, items, BM25Spec())
    assert stemmed[0][0] > 0 and stemmed[0][1] > 0 and stemmed[0][2] == 0  # "the" is a stop word
    assert stemmed[1].tolist() == [stemmed[0][2].item(), stemmed[0][1].item()]
    plain = bm25_scores(rows, items, BM25Spec(stemmer=None))
    assert plain[0][0] == 0  # "soldiers" != "soldier" without a stemmer


def test_rank_rows_dense_bm25_and_hybrid(tmp_path: Path):
    items = _items({"q": ("query", "red apple"), "a": ("target", "apple"), "b": ("target", "car")})
    store = _store(tmp_path, {"q": torch.tensor([1.0, 0.0]), "a": torch.tensor([0.0, 1.0]),
                              "b": torch.tensor([1.0, 0.1])})
    rows = [Row("r", "q", ("a", "b"))]
    dense = rank_rows(rows, items, RetrieverSpec(), store)[0]
    assert dense[1] > dense[0]  # the cosine prefers b
    lexical = rank_rows(rows, items, RetrieverSpec(name="bm25"))[0]
    assert lexical[0] > 0 == lexical[1]
    hybrid = rank_rows(rows, items, RetrieverSpec(name="hybrid", fusion="weighted", weight=0.4), store)[0]
    assert hybrid[0] > hybrid[1]  # 0.6 * BM25 outweighs 0.4 * cosine
    centred = rank_rows(rows, items, RetrieverSpec(), store,
                        statistics=fit(spec(name="center"), {"all": store.gather(["q", "a", "b"])}))[0]
    assert not torch.allclose(centred, dense)


def _result(dataset: str, benchmark: str | None, split: str, score: float, post: str = "none", prior: str = "e5v",
            retriever: str = "dense") -> dict:
    return {"dataset": dataset, "main_score": score, "metrics": {"embed": {"hit@1": score}}, "pipeline": "embed", "prior": prior,
            "model": {"name": "m"},
            "layer": {"label": "attn_last"}, "task": {"benchmark": benchmark, "split": split, "meta_task": "retrieval"},
            "postprocess": {"label": post}, "retriever": {"label": retriever}}


def test_leaderboard_puts_dev_and_test_side_by_side_and_ranks_by_dev():
    from freeret.eval.results import RunResult
    from freeret.eval.tables import build_tables, leaderboard, leaderboard_markdown, to_markdown

    payloads = [_result("wordnet_rd_dev", None, "dev", 0.2), _result("wordnet_rd", None, "test", 0.25),
                _result("a_dev", "meta_dev", "dev", 0.4), _result("b_dev", "meta_dev", "dev", 0.6),
                _result("wordnet_rd_dev", None, "dev", 0.3, post="abtt(d=2)"),
                _result("a_dev", "meta_dev", "dev", 0.1, post="abtt(d=2)"),
                _result("wordnet_rd", None, "test", 0.9, retriever="bm25")]
    payloads = [RunResult.from_dict(p) for p in payloads]
    columns, rows = leaderboard(payloads)
    assert columns == ["wordnet_rd dev", "wordnet_rd test", "meta dev", "meta test"]
    first, second, third = rows
    assert first["setting"]["postprocess"] == "none"  # dev mean (20 + 50) / 2 = 35 beats (30 + 10) / 2 = 20
    assert first["values"] == pytest.approx({"wordnet_rd dev": 20.0, "wordnet_rd test": 25.0, "meta dev": 50.0})
    assert second["setting"]["postprocess"] == "abtt(d=2)"
    assert third["setting"]["retriever"] == "bm25"  # no dev score: last, however good its test score
    md = leaderboard_markdown(columns, rows)
    assert "| m · attn_last + e5v | 20.0 | 25.0 | 50.0 | – |" in md and "m · BM25" in md
    tables = {t.benchmark: t for t in build_tables(payloads)}
    splits = {name: {row["split"] for row in t.rows} for name, t in tables.items()}
    assert splits["meta_dev"] == {"dev"} and splits["wordnet_rd"] == {"test"} and splits["wordnet_rd_dev"] == {"dev"}
    assert "### meta_dev (dev)" in to_markdown(tables["meta_dev"])
