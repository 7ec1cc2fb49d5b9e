"""scripts/gpu_check.py: its wiring on the CPU (the GPU run itself needs a GPU machine) and its checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402


def test_gpu_check_runs_a_family_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--steps", "env,families",
                           "--families", "tiny_qwen2vl", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dtype"] == "float32" and set(report["steps"]) == {"env", "families"}
    assert report["steps"]["env"]["figures"]["torch"]
    families = report["steps"]["families"]
    assert families["ok"] and families["figures"]["results"] == 1 and families["figures"]["job_dirs"] == ["0"]
    assert (out / "gpu_check.log").read_text().count("=====") == 2


def write_result(folder: Path, device: str, dtype: str, rerank: bool) -> None:
    (folder / "results").mkdir(parents=True)
    payload = {"dataset": "smoke_mm", "main_score": 0.5, "timing": {"wall_seconds": 1.0},
               "model": {"name": "tiny_qwen2vl", "device": device, "dtype": dtype},
               "metrics": {"embed": {"hit@1": 0.5}, **({"rerank": {"hit@1": 0.5}} if rerank else {})}}
    (folder / "results" / "smoke_mm.json").write_text(json.dumps(payload))


def test_checks_refuse_a_run_that_left_the_device_or_skipped_reranking(tmp_path):
    write_result(tmp_path / "a", "cuda", "bfloat16", rerank=True)
    assert gpu_check.check_results(tmp_path / "a", "cuda", "bfloat16", 1, True)["results"] == 1
    write_result(tmp_path / "b", "cpu", "bfloat16", rerank=True)
    with pytest.raises(AssertionError, match="ran on cpu, not cuda"):
        gpu_check.check_results(tmp_path / "b", "cuda", "bfloat16", 1, True)
    write_result(tmp_path / "c", "cuda", "float32", rerank=False)
    with pytest.raises(AssertionError, match="dtype float32, not bfloat16.*no rerank metrics"):
        gpu_check.check_results(tmp_path / "c", "cuda", "bfloat16", 1, True)
    with pytest.raises(AssertionError, match="0 result files, expected 1"):
        gpu_check.check_results(tmp_path / "empty", "cuda", "bfloat16", 1, False)
