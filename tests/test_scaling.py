"""Scaling study (issue 17): the grid driver (real SmolLM2, tiny slice), its plan, the table and the notebook on
committed result files (trimmed from the study's own runs)."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "experiments"))
import scaling
import scaling_table

from freeret.eval.scaling import ADDITIONS, FINDINGS, ModelResults, load_study, smallest_holding

FIXTURE = REPO / "tests" / "fixtures" / "scaling"


def test_smallest_holding_needs_every_larger_size():
    assert smallest_holding([False, True, True]) == 1
    assert smallest_holding([True, False, True]) == 2
    assert smallest_holding([True, True, False]) is None  # fails at the largest size: it has not emerged
    assert smallest_holding([True, None, True, None]) == 0  # sizes that did not run are not evidence either way
    assert smallest_holding([None, None]) is None


def test_plan_applies_the_configs_reductions():
    spec = scaling.study()
    big = "qwen25coder_15b"
    names = [r["name"] for r in scaling.plan(spec, big, None)]
    assert names[0] == "layer_attn_last" and not set(spec["skip"][big]) & set(names)
    limits = scaling.limits_for(spec, big)
    assert limits == {**spec["limits"], **spec["per_model"][big]}
    rerank = next(r for r in spec["runs"] if r["name"] == "rerank_yes_no")
    config = scaling.compose_run(rerank, scaling.overrides_for(spec, rerank, big, limits))
    assert (config["model"]["name"], config["framing"]["name"], config["pipeline"]["name"]) == (big, "yes_no", "two_stage")
    assert config["dataset"]["limit"] == limits["rerank_queries"] and config["pipeline"]["top_k"] == limits["top_k"]
    assert config["dataset"]["split"] == "test" and config["threads"] == 1


def test_driver_records_and_resumes(tmp_path):
    """Two runs on a tiny random VLM (3 RD queries, a 4-item probe): each result file holds the payload and the
    run's record; a second call finds nothing pending and rewrites nothing."""
    spec = scaling.study()
    spec["limits"] = {**spec["limits"], "rd_queries": 3, "anisotropy_items": 4}
    spec["runs"] = [r for r in spec["runs"] if r["name"] in ("method_e5v", "probe_anisotropy")]
    out = tmp_path / "results"
    done = scaling.run_model(spec, "tiny_qwen2vl", out, scratch=tmp_path / "scratch")
    assert done == ["method_e5v", "probe_anisotropy"]
    e5v = json.loads((out / "tiny_qwen2vl" / "method_e5v.json").read_text())
    record, payload = e5v["scaling"], e5v["results"][0]
    assert record["limits"]["rd_queries"] == 3 and record["split"] == "test" and record["wall_seconds"] > 0
    assert not record["code_tuned"] and record["num_parameters"] > 0
    assert (payload["layer"]["label"], payload["prior"], payload["counts"]["num_queries"]) == ("mlp_last_normed", "e5v", 3)
    probe = json.loads((out / "tiny_qwen2vl" / "probe_anisotropy.json").read_text())["probe"]
    assert probe["n_items"] == 4 and probe["probe"] == "anisotropy"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert scaling.run_model(spec, "tiny_qwen2vl", out, scratch=tmp_path / "scratch") == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps
    table = scaling_table.markdown(load_study(out))
    assert f"{payload['metrics']['embed']['hit@1']:.2f} (n=3)" in table


def test_table_reads_the_committed_results():
    models = load_study(FIXTURE)
    assert len(models) >= 2 and all(m.size for m in models)
    assert [m.size for m in models] == sorted(m.size for m in models)
    table = scaling_table.markdown(models)
    for m in models:
        for run in ("layer_attn_last", "layer_mlp_last", "method_e5v"):
            if m.runs.get(run):
                score = m.runs[run]["results"][0]["metrics"]["embed"]["hit@1"]
                assert f"{score:.2f} (n={m.queries(run)})" in table
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    for claim, test in (*FINDINGS, *ADDITIONS):
        verdicts = [test(m) for m in models]
        assert lines[claim].count(" yes ") == verdicts.count(True), claim


def test_findings_read_the_right_stages():
    def run(embed: float, rerank: float | None = None) -> dict:
        metrics = {"embed": {"hit@1": embed}, **({"rerank": {"hit@1": rerank}} if rerank is not None else {})}
        result = {"dataset": "wordnet_rd", "main_score": embed if rerank is None else rerank, "metrics": metrics,
                  "counts": {"num_queries": 10}}
        return {"scaling": {"num_parameters": 1}, "results": [result]}

    m = ModelResults("m", {"layer_attn_last": run(0.5), "layer_mlp_last": run(0.4), "method_e5v": run(0.6),
                           "prior_e5v": run(0.3), "prior_grounding": run(0.3), "prior_grounding_noise": run(0.45),
                           "rerank_mcq": run(0.5, 0.55), "rerank_yes_no": run(0.5, 0.6),
                           "method_freeret_plus": run(0.55), "rerank_query_likelihood": run(0.5, 0.45)})
    verdict = {claim: test(m) for claim, test in FINDINGS}
    assert verdict["h^Attn_L beats h^MLP_L (stage-1 hit@1, FreeRet prior)"] is True
    assert verdict["FreeRet stage 1 beats E5-V (normed last layer + E5-V prompt)"] is False
    assert verdict["priors add up: E5-V base <= +grounding <= +noise <= +task, last > base"] is True
    assert verdict["MCQ rerank of the top-K beats stage 1"] is True
    assert verdict["MCQ is the best framing after reranking (ties count)"] is False
    assert verdict["alpha collapses at the final MLP"] is None  # the probe did not run
    ours = {claim: test(m) for claim, test in ADDITIONS}
    assert ours["freeret_plus beats FreeRet's stage 1 (RD)"] is True
    assert ours["freeret_plus beats E5-V (RD)"] is False
    assert ours["query likelihood (UPR) rerank beats stage 1 (RD)"] is False
    assert ours["BLiM (bidirectional) rerank beats stage 1 (RD)"] is None  # not run


def test_notebook_executes_on_committed_results(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("FREERET_RESULTS", str(FIXTURE))
    monkeypatch.setenv("FREERET_FIGURES", str(tmp_path))
    nb = nbformat.read(REPO / "notebooks" / "scaling.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    shown = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.get("output_type") == "display_data"]
    assert shown and all("image/png" in o["data"] for o in shown)
    printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "smallest size:" in printed


@pytest.mark.parametrize("argv", [["/nonexistent/scaling"]])
def test_table_script_error_is_one_line(argv, capsys):
    assert scaling_table.main(argv) == 2
    assert capsys.readouterr().err.strip().startswith("error: no scaling results at")
