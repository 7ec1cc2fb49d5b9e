"""Two-stage and RAG pipelines end to end through run.py (tiny VLM on images, real SmolLM2 on WordNet slices)."""

from __future__ import annotations

import json

import pytest

from freeret.eval.results import RunResult
from freeret.rag import exact_match, normalize_answer
from helpers import QUIET, results, run_py

SLICE = ["dataset.pool=positives", *QUIET]


@pytest.mark.parametrize("model", ["tiny_qwen2vl", "tiny_qwen25vl", "tiny_idefics3", "tiny_llava_ov", "tiny_internvl"])
def test_two_stage_tiny_vlm_on_images(model, tmp_path):
    proc = run_py([f"model={model}", "dataset=smoke_mm", "pipeline=two_stage", "pipeline.top_k=3", *QUIET], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path, "smoke_mm")
    assert set(res.metrics) == {"embed", "rerank"} and res.framing == "mcq"
    assert res.rerank.top_k == 3 and res.rerank.options == ["A", "B"]
    assert res.main_score == res.metrics["rerank"]["hit@1"]
    assert len(list((tmp_path / "rerank" / "smoke_mm").glob("*/*.jsonl"))) == 1


def test_two_stage_real_smollm2_keeps_the_top_k_set(tmp_path):
    proc = run_py(["pipeline=two_stage", "pipeline.top_k=5", "dataset.limit=12", *SLICE], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path, "wordnet_rd")
    embed, rerank = res.metrics["embed"], res.metrics["rerank"]
    assert rerank["hit@5"] == embed["hit@5"]  # reranking reorders the top-5, it cannot change its membership
    assert rerank["hit@10"] == embed["hit@10"]
    assert "embed hit@1=" in proc.stdout and "-> rerank hit@1=" in proc.stdout


def test_baseline_and_framing_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_py(["-m", "pipeline=two_stage", "framing=mcq,yes_no,true_false,right_wrong", "model=tiny_qwen2vl",
                   "dataset=smoke_mm", "pipeline.top_k=2", *QUIET], sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    framings = {RunResult.read(p).framing for p in sweep.glob("*/results/smoke_mm.json")}
    assert framings == {"mcq", "yes_no", "true_false", "right_wrong"}
    proc = run_py(["model=tiny_qwen2vl", "dataset=smoke_mm", "pipeline=two_stage", "rerank=retllm", *QUIET], tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path / "r", "smoke_mm")
    assert res.framing == "retllm" and res.rerank.top_k == 5 and res.rerank.settings["tie_break"] == "entropy"


def test_rag_end_to_end_real_smollm2(tmp_path):
    proc = run_py(["pipeline=rag", "dataset.limit=4", "pipeline.top_k=3", "pipeline.n_docs=2",
                   "pipeline.max_new_tokens=3", *SLICE], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(tmp_path, "wordnet_qa")
    rag = res.rag
    assert 0 <= rag["exact_match_with_retrieval"] <= 1 and 0 <= rag["exact_match_closed_book"] <= 1
    lines = [json.loads(x) for x in (tmp_path / "rag" / "wordnet_qa.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(len(r["retrieved"]) == 2 and "generated_closed_book" in r for r in lines)
    assert "RAG EM=" in proc.stdout


def test_rag_needs_answers(tmp_path):
    proc = run_py(["pipeline=rag", "dataset=smoke_mm", "model=tiny_qwen2vl", "pipeline.top_k=2", *QUIET], tmp_path)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "error: pipeline=rag needs rows with an 'answer' field; dataset 'smoke_mm' has none (try dataset=wordnet_qa)"]


@pytest.mark.parametrize("pred, answer, ok", [("Dog.", "dog", True), (" the dog\nmore", "dog", True),
                                              ("hot dog", "dog", False), ("", "dog", False)])
def test_exact_match(pred, answer, ok):
    assert exact_match(pred, answer) is ok
    assert normalize_answer("The  Dog!") == "dog"
