"""Stage 2 packed across queries (freeret/rerank/packing.py): forwards within the token budget, each candidate's prompt
once per run in a cache bounded in bytes, every packed path equal to the naive loop, blocks planned for resume."""

from __future__ import annotations

import pytest
import torch

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.backbone import Backbone
from freeret.backbone.shared_prefix import Segment
from freeret.data.retrieval_set import Item
from freeret.errors import ConfigError
from freeret.rerank.packing import CONTEXT_FACTOR, PADDING, SegmentCache, plan
from freeret.rerank.stage import RerankConfig, order_by_overlap, plan_blocks
from helpers import build_scorer, tiny_gemma3

WORDS = ["dog", "bicycle", "an old wooden ship with three tall masts", "barking", "x", "puppy", "cat", "the sea"]
QUERIES = ["a domestic animal that barks", "a vehicle with two wheels", "a large sailing vessel", "young of a dog"]


def _rows(shift: int = 3, k: int = 5) -> list[tuple[Item, list[Item]]]:
    """Queries whose top-K lists overlap (each candidate ranked by several queries)."""
    cands = [Item.make("target", w, None) for w in WORDS]
    return [(Item.make("query", q, None), [cands[(i * shift + j) % len(cands)] for j in range(k)])
            for i, q in enumerate(QUERIES)]


class _Decoder:
    """Counts the token positions the decoder runs (padding included), by a hook."""

    def __init__(self, bb: Backbone) -> None:
        self.tokens = 0
        bb.model.get_decoder().register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
        self.tokens += int(shape[0] * shape[1])


# -- planning -------------------------------------------------------------------------------------------------------
def test_plan_keeps_each_forward_within_the_budget_and_sorted():
    widths = [5, 1, 3, 9, 2, 2, 7, 1, 40]
    contexts = [10] * len(widths)
    batches = plan(widths, contexts, max_tokens=12)
    assert sorted(i for b in batches for i in b) == list(range(len(widths)))  # every row once
    for b in batches:
        positions = len(b) * max(widths[i] for i in b)
        assert len(b) == 1 or positions <= 12  # a lone row over the budget runs alone
        assert positions - sum(widths[i] for i in b) <= PADDING * positions  # padding stays small
    flat = [widths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # length-bucketed: padding stays small
    assert [widths[i] for i in batches[-1]] == [40]
    long_context = plan([1] * 8, [100] * 8, max_tokens=8)  # the context positions a forward reads are bounded too
    assert all(len(b) * 101 <= CONTEXT_FACTOR * 8 for b in long_context)


def _segment(nbytes: int) -> Segment:
    return Segment([torch.zeros(nbytes // 4 - 1)], [None], 1, torch.zeros(1))


def test_segment_cache_is_bounded_in_bytes_and_drops_the_least_recently_used():
    cache = SegmentCache(max_mb=3 * 4096 / 2**20)  # room for three 4 KiB segments
    computed: list[str] = []

    def compute(keys):
        computed.extend(keys)
        return [_segment(4096) for _ in keys]

    cache.get(["a", "b", "a"], compute)
    assert computed == ["a", "b"] and cache.stats.hits == 0  # each unique key once
    cache.get(["c", "a"], compute)
    assert computed == ["a", "b", "c"] and cache.stats.hits == 1
    got = cache.get(["d", "b"], compute)  # "b" was used since "a": "a" goes when "d" comes
    assert len(got) == 2 and computed == ["a", "b", "c", "d"] and cache.stats.hits == 2
    assert list(cache.items) == ["c", "b", "d"] and cache.nbytes == 3 * 4096 and cache.stats.evicted == 1
    assert cache.stats.peak_bytes == 4 * 4096
    cache.get(["a"], compute)  # computed again
    assert computed[-1] == "a" and "c" not in cache.items


def test_order_by_overlap_puts_groups_sharing_candidates_together():
    def group(row: str, keys: list[str]) -> dict:
        return {"row": row, "positions": list(range(len(keys))),
                "candidates": [Item.make("target", k, None) for k in keys], "query": Item.make("query", row, None)}

    groups = [group("g0", ["a", "b"]), group("g1", ["x", "y"]), group("g2", ["a", "c"]), group("g3", ["y", "z"])]
    assert [g["row"] for g in order_by_overlap(groups)] == ["g0", "g2", "g1", "g3"]
    blocks = plan_blocks(groups, 2, {})
    assert [[g["row"] for g in b] for b in blocks] == [["g0", "g2"], ["g1", "g3"]]
    done = {"g2": {"positions": [0, 1]}}  # a resumed run keeps each block's other rows where they were
    assert [[g["row"] for g in b] for b in plan_blocks(groups, 2, done)] == [["g0"], ["g1", "g3"]]


@pytest.mark.parametrize("key, value, message", [
    ("queries_per_step", 0, "pipeline.queries_per_step must be an integer >= 1"),
    ("max_tokens_per_batch", 0, "pipeline.max_tokens_per_batch must be an integer >= 1 or null"),
    ("candidate_cache_mb", -1, "pipeline.candidate_cache_mb must be >= 0"),
])
def test_bad_packing_settings_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        RerankConfig.from_dict({key: value})


# -- exactness on the real SmolLM2 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["candidate_likelihood", "query_likelihood", "bidirectional", "choice", "choice_debiased"])
def test_packed_block_equals_the_naive_loop_on_real_smollm2(name, smollm):
    """Four queries with overlapping top-5s, a 24-token budget (many forwards, rows of several queries in each) and a
    candidate cache smaller than the run's candidates (evictions): every score equals the naive loop within 1e-4."""
    scorer = build_scorer(smollm, name, max_tokens_per_batch=24, candidate_cache_mb=0.5)
    rows = _rows()
    got = scorer.score_block(rows)
    for (query, cands), block in zip(rows, got):
        naive = scorer.naive(query, cands)
        assert block.scores.dtype == torch.float32 and block.scores.shape == (len(cands),)
        assert torch.allclose(block.scores, naive.scores, atol=1e-4), (name, block.scores, naive.scores)
        assert block.extras.keys() == naive.extras.keys() | block.extras.keys()


def test_query_likelihood_runs_each_candidates_prompt_once_per_run(smollm):
    """With room in the cache, each unique candidate's prompt runs once however many queries rank it, across blocks;
    the decoder then runs the candidate prompts once plus each pair's query tokens (and the shared start once)."""
    scorer = build_scorer(smollm, "query_likelihood", max_tokens_per_batch=64)
    rows = _rows()
    unique = {c.text for _, cands in rows for c in cands}
    counter = _Decoder(smollm)
    scorer.score_block(rows[:2])
    scorer.score_block(rows[2:])
    stats = scorer.cache.stats
    assert stats.computed == len(unique) and stats.hits == len({c.text for _, c2 in rows[2:] for c in c2}
                                                                & {c.text for _, c1 in rows[:2] for c in c1})
    tok = smollm.tokenizer
    segment = {t: len(tok(scorer.split.suffix_for(t), add_special_tokens=False)["input_ids"]) for t in unique}
    query = [len(scorer.text.scored_ids(scorer.prompt(c[0]), q.text)) for q, c in rows]
    start = len(smollm.inputs([scorer.split.prefix])["input_ids"][0])
    minimum = start + sum(segment.values()) + sum(n * len(c) for n, (_, c) in zip(query, rows))
    assert minimum <= counter.tokens <= 1.15 * minimum  # padding only (rows sorted by length)


def test_packed_rows_on_a_sliding_window_model_run_alone_when_padding_would_break_the_window(smollm):
    """A Gemma 3 model with an 8-token sliding window: packed rows of unequal contexts longer than the window would
    change which tokens each one sees, so those forwards run row by row; the scores still equal the naive loop."""
    gemma = tiny_gemma3(smollm, sliding_window=8)
    for name in ("candidate_likelihood", "query_likelihood", "choice"):
        scorer = build_scorer(gemma, name, max_tokens_per_batch=64)
        for (query, cands), block in zip(_rows(), scorer.score_block(_rows())):
            assert torch.allclose(block.scores, scorer.naive(query, cands).scores, atol=1e-4), name


# -- a tiny VLM with image candidates -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_qwen():
    return load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))


def test_packed_block_with_image_candidates_on_tiny_qwen2vl(tiny_qwen, tmp_path):
    """Text and image candidates mixed in one block: image pairs take the per-query path (vision cache), text pairs
    the packed one (candidate cache); both equal the naive loop, and the two caches never hold the same tensors."""
    import numpy as np
    from PIL import Image

    paths = []
    for i in range(2):
        path = tmp_path / f"im{i}.png"
        Image.fromarray((np.arange(32 * 32 * 3).reshape(32, 32, 3) * (i + 3) % 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    images = [Item.make("target", "", p) for p in paths]
    rows = [(q, [*images, *cands[:3]]) for q, cands in _rows()]
    for name in ("query_likelihood", "choice"):
        scorer = build_scorer(tiny_qwen, name, dataset="smoke_mm", max_tokens_per_batch=32)
        got = scorer.score_block(rows)
        for (query, cands), block in zip(rows, got):
            assert torch.allclose(block.scores, scorer.naive(query, cands).scores, atol=1e-4), name
        if name == "query_likelihood":
            assert set(scorer.cache.items) == {c.text for _, cands in rows for c in cands if not c.image}
            held = {t.untyped_storage().data_ptr() for seg in scorer.cache.items.values()
                    for t in (*seg.keys, *seg.values, seg.last_hidden) if t is not None}
            vision = {t.untyped_storage().data_ptr() for t in _tensors(scorer.vision)}
            assert vision and held and not held & vision


def _tensors(obj, seen=None) -> list[torch.Tensor]:
    """Every tensor reachable from ``obj``'s attributes, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v, seen)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v, seen)]
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, Backbone)):
        return [t for v in vars(obj).values() for t in _tensors(v, seen)]
    return []
