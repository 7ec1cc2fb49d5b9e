"""Bad input, one-line errors and safety: a generated bad corpus runs to the end with every failure accounted
for; config mistakes stop before any weights load with one line; nothing reaches the network or loads pickles."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freeret.backbone.loading import _load_kwargs
from freeret.backbone.spec import ModelSpec
from freeret.data.images import ImageProblem, open_image
from freeret.data.retrieval_set import load_mmeb
from freeret.data.validate import check_set, fold_misses, usable_rows
from freeret.embed.priors import Prior
from freeret.errors import ConfigError, DataError, FreeRetError
from helpers import CONF, QUIET, REPO, compose, results, run_py, run_py_process

BAD_IMAGES = {  # file -> words the recorded reason must contain
    "missing.png": "not found",
    "zero.png": "0 bytes",
    "truncated.png": "cannot be decoded",
    "random.jpg": "cannot be decoded",
    "bomb.png": "decompression-bomb",
}
ODD_IMAGES = ["cmyk.jpg", "palette.png", "la.png", "i16.png", "anim.gif", "big.png"]  # usable after conversion


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but holds almost no data (a decompression bomb stand-in)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_images(root: Path) -> None:
    """The good, bad and odd images of the test corpus."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "good.png")
    (root / "zero.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "random.jpg").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    (root / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(root / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert("P").save(root / "palette.png")
    Image.new("LA", (40, 30), (120, 60)).save(root / "la.png")
    Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)).save(root / "i16.png")
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    Image.fromarray(rng.integers(0, 255, (300, 900, 3), dtype=np.uint8)).save(root / "big.png")


def make_corpus(root: Path) -> Path:
    """An MMEB-format JSONL with every kind of bad row and item; returns its path."""
    make_images(root / "img")
    negs = ["cat", "dog", "tree", "house"]
    rows = [{"id": "good", "qry_img_path": "img/good.png", "qry_text": "photo", "tgt_text": ["noise", *negs, ""],
             "tgt_img_path": ["", "", "", "", "", "img/truncated.png"]}]  # a broken negative: dropped from the row
    rows += [{"id": f"img-{name}", "qry_img_path": f"img/{name}", "qry_text": "photo", "tgt_text": ["noise", *negs]}
             for name in [*BAD_IMAGES, *ODD_IMAGES]]
    rows += [
        {"id": "empty", "qry_text": "", "tgt_text": ["cat", *negs[1:]]},
        {"id": "long", "qry_text": "word " * 20000, "tgt_text": ["dog", "cat", "tree"]},  # 100,000 characters
        {"id": "dup", "qry_text": "a pet", "tgt_text": ["cat", "dog"]},
        {"id": "dup", "qry_text": "a plant", "tgt_text": ["tree", "dog"]},
    ]
    lines = [json.dumps(r).encode() for r in rows]
    lines.insert(2, b'{"id": "utf8", "qry_text": "caf\xe9 \xff", "tgt_text": ["x"]}')  # invalid UTF-8
    lines.insert(4, b'{"id": "json", "qry_text": "unterminated')
    lines.append(json.dumps({"id": "nocand", "qry_text": "no candidates"}).encode())
    lines.append(json.dumps({"id": "noquery", "tgt_text": ["cat"]}).encode())
    path = root / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


BAD_ROWS = {"utf8": "UTF-8", "json": "JSON", "nocand": "missing field", "noquery": "missing field"}
N_ROWS = 1 + len(BAD_IMAGES) + len(ODD_IMAGES) + 4 + len(BAD_ROWS)  # every line of the corpus
MISSED = len(BAD_IMAGES) + 1 + len(BAD_ROWS)  # failed image queries, the empty query, unreadable rows


# -- the bad corpus, without a model ----------------------------------------------------------------


def test_odd_images_become_rgb_and_big_ones_shrink(tmp_path):
    make_images(tmp_path)
    for name in ODD_IMAGES:
        notes: list[str] = []
        img = open_image(str(tmp_path / name), max_pixels=100_000, notes=notes)
        assert img.mode == "RGB" and img.width * img.height <= 100_000, name
    notes = []
    img = open_image(str(tmp_path / "big.png"), max_pixels=100_000, notes=notes)
    assert abs(img.width / img.height - 3.0) < 0.05 and "resized" in notes[0]  # aspect kept
    notes = []
    assert open_image(str(tmp_path / "anim.gif"), notes=notes).getpixel((0, 0)) == (255, 0, 0)
    assert "first frame" in notes[0]
    assert open_image(str(tmp_path / "la.png")).getpixel((0, 0)) == (223, 223, 223)  # 120 at alpha 60, on white
    i16 = np.asarray(open_image(str(tmp_path / "i16.png")))
    assert i16.max() > 200 and i16.min() < 50  # 16-bit scaled to 8-bit, not clipped to white


def test_bad_images_give_a_reason(tmp_path):
    make_images(tmp_path)
    for name, words in BAD_IMAGES.items():
        with pytest.raises(ImageProblem, match=words):
            open_image(str(tmp_path / name))


def test_bad_rows_are_recorded_not_fatal(tmp_path):
    rset = load_mmeb("bad", make_corpus(tmp_path))
    problems = {p["row"]: p for p in rset.problems}
    for rid, words in BAD_ROWS.items():
        assert words in problems[rid]["reason"] and problems[rid]["where"].startswith(str(tmp_path))
    assert problems["dup"]["level"] == "warning"
    assert [r.id for r in rset.rows if r.id.startswith("dup")] == ["dup", "dup~dup2"]
    assert len(rset.rows) + 4 == N_ROWS


def test_check_set_accounts_for_every_bad_item(tmp_path):
    rset = load_mmeb("bad", make_corpus(tmp_path))
    report = check_set(rset, count_tokens=lambda t: len(t.split()), cut_tokens=lambda t, n: " ".join(t.split()[:n]),
                       max_text_tokens=1000, max_pixels=100_000)
    items = [e for e in report.errors if e["kind"] == "item"]
    reasons = {Path(e["image"]).name if e["image"] else e["rows"][0]: e["reason"] for e in items}
    assert set(reasons) == {*BAD_IMAGES, "empty"}  # truncated.png fails as the query and as a negative: one per item
    assert len(items) == len(BAD_IMAGES) + 2
    for name, words in BAD_IMAGES.items():
        assert words in reasons[name]
    assert all(e["rows"] for e in items)
    notes = " | ".join(w["reason"] for w in report.warnings)
    assert "truncated to 1000 tokens" in notes and "first frame" in notes and "resized" in notes and "duplicate" in notes
    assert [len(it.text.split()) for it in rset.items.values() if it.text.startswith("word")] == [1000]
    kept, missed = usable_rows(rset, report.failed_items)
    assert len(missed) + report.bad_rows == MISSED
    good = next(r for r in kept.rows if r.id == "good")
    assert len(good.candidates) == 5  # the broken negative was dropped


def test_strict_stops_at_the_first_bad_input(tmp_path):
    rset = load_mmeb("bad", make_corpus(tmp_path))
    with pytest.raises(DataError, match=r"bad.jsonl:3: not valid UTF-8.*strict=true"):
        check_set(rset, strict=True)
    rset.problems.clear()
    with pytest.raises(DataError, match="strict=true"):
        check_set(rset, strict=True)


def test_failed_queries_count_as_misses():
    assert fold_misses({"hit@1": 1.0, "mrr": 0.5}, scored=3, missed=1) == {"hit@1": 0.75, "mrr": 0.375}


def test_bad_corpus_end_to_end(tmp_path):
    """The whole bad corpus through run.py with a tiny VLM: the run finishes and accounts for every failure."""
    data = make_corpus(tmp_path / "data")
    run_dir = tmp_path / "run"
    proc = run_py(["model=tiny_qwen2vl", "dataset=local", f"dataset.path={data}", "dataset.name=bad",
                   "images.max_pixels=100000", *QUIET], run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(run_dir, "bad")
    counts = res.counts
    assert counts.num_queries == N_ROWS and counts.failed_queries == MISSED
    assert counts.scored_queries == N_ROWS - MISSED
    assert counts.failed_items == len(BAD_IMAGES) + 2 and counts.bad_rows == len(BAD_ROWS)
    errors = [json.loads(line) for line in (run_dir / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == counts.failed_items + counts.bad_rows and all(e["reason"] for e in errors)
    warnings = (run_dir / "warnings.jsonl").read_text()
    assert "to fit the model's context" in warnings and "first frame" in warnings and "resized" in warnings
    assert res.metrics["embed"]["hit@1"] <= counts.scored_queries / counts.num_queries
    assert f"{MISSED} failed queries counted as misses" in proc.stdout


def test_bad_corpus_strict_stops_before_weights(tmp_path, monkeypatch):
    data = make_corpus(tmp_path / "data")
    with pytest.raises(DataError, match=r"bad.jsonl:3: not valid UTF-8 .*strict=true"):
        run_in_process(["model=tiny_qwen2vl", "dataset=local", f"dataset.path={data}", "strict=true"], tmp_path, monkeypatch)


# -- one-line errors before any weights load ----------------------------------------------------------


def run_in_process(overrides: list[str], tmp_path: Path, monkeypatch) -> dict:
    """freeret.run.pipeline.run on the composed config, with weight loading turned into a test failure."""
    from omegaconf import OmegaConf

    from freeret.run import inputs, pipeline

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the error")

    monkeypatch.setattr(inputs, "load_backbone", no_weights)
    cfg = OmegaConf.to_container(compose([*overrides, *QUIET]), resolve=True)
    return pipeline.run({**cfg, "run_dir": str(tmp_path)})


@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=tiny_qwen2vl", "model.family=nope"], "unknown model family 'nope'"),
        (["model=tiny_qwen2vl", "dataset=smoke_mm", "layer.index=40"], "layer.index=40 is out of range"),
        (["model=tiny_qwen2vl", "prior.query=no item here"], "has no {text} placeholder"),
        (["model=tiny_qwen2vl", "prior.query='{text} {nope}'"], "undefined placeholder(s) nope"),
        (["model=tiny_qwen2vl", "dataset=smoke_mm", "pipeline=two_stage", "framing.options=[Maybe,Maybe]"],
         "two distinct labels"),
        (["model=tiny_qwen2vl", "dataset=smoke_mm", "pipeline=two_stage", "framing.options=[xyzzyq,B]",
          "framing.match=xyzzyq"], "is not a single token"),
        (["model=qwen2vl_7b", "dataset=smoke_mm"], "is not in the local HF cache"),
        (["model=tiny_qwen2vl", "dataset=local", "dataset.path=/nonexistent.jsonl"], "does not exist"),
        (["model=tiny_qwen2vl", "dataset=smoke_mm", "pipeline=two_stage", "pipeline.vision_cache_items=512"],
         "pipeline.vision_cache_items was replaced by pipeline.vision_cache_mb"),
        (["model=tiny_qwen2vl", "embed.lock=maybe"], "embed.lock='maybe' must be true, false or auto"),
        (["model=tiny_qwen2vl", "embed.stale_temp_hours=0"], "embed.stale_temp_hours=0 must be a positive number"),
        (["model=tiny_qwen2vl", "+dataset.prompt.query_knd=image"], "dataset wordnet_rd: prompt.query_knd is not a prompt fact"),
        (["model=tiny_qwen2vl", "dataset=mmeb/ImageNet-1K", "pipeline=two_stage", "dataset.prompt.framing_variant=presense"],
         "which framing 'mcq' does not define (its variants: presence)"),
        (["model=tiny_qwen2vl", "+prior.datasets.wordnet_rd.query_kind=definition"], "per-dataset entries (datasets:)"),
        (["model=tiny_qwen2vl", "dataset.split=validation"], "split='validation' must be one of dev, test"),
    ],
)
def test_config_errors_come_before_weights(args, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FreeRetError) as info:
        run_in_process(args, tmp_path, monkeypatch)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_bad_prompt_fact_in_a_suite_stops_before_the_first_dataset(tmp_path, monkeypatch):
    """benchmark.run_all binds every dataset's prompt facts before the first dataset runs (and loads the model)."""
    from omegaconf import OmegaConf

    from freeret import benchmark

    monkeypatch.setattr(benchmark, "run", lambda *a, **k: pytest.fail("a dataset ran before the suite's prompts were checked"))
    cfg = OmegaConf.to_container(compose(["suite=wordnet_meta", "pipeline=two_stage", *QUIET,
                                          "+benchmark.datasets.qa_blank.prompt.framing_variant=fill"]), resolve=True)
    with pytest.raises(ConfigError, match=r"^dataset wordnet_qa_blank asks for framing variant 'fill'"):
        benchmark.run_all({**cfg, "run_dir": str(tmp_path)})


def test_a_shared_base_is_not_offered_as_a_choice():
    """conf/dataset/_base/mmeb.yaml is what the 36 MMEB files extend; picking it alone is refused before Hydra."""
    from freeret.cli import unknown_choice

    assert (CONF / "dataset/_base/mmeb.yaml").is_file()
    problem = unknown_choice(["dataset=_base/mmeb"], CONF)
    assert problem and problem.startswith("dataset=_base/mmeb is a base that other dataset configs extend")
    assert unknown_choice(["dataset=mmeb/ImageNet-1K", "dataset=wordnet_dev/qa_blank"], CONF) is None
    nested = unknown_choice(["dataset=mmeb/Nope"], CONF)  # a choice in a sub-folder is checked too
    assert nested and "no conf/dataset/mmeb/Nope.yaml" in nested and "mmeb/ImageNet-1K," in nested


@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=nope"], "model=nope is not a known model"),
        (["-m", "dataset=smoke_mm,nope"], "dataset=nope is not a known dataset"),
    ],  # errors raised inside run() are printed as one line by run.py: test_run.py::test_errors_are_one_line
)
def test_errors_are_one_line_without_traceback(args, expected, tmp_path):
    proc = run_py_process([*args, *QUIET], tmp_path)  # the unknown-choice check runs before Hydra, in the process
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_a_stop_signal_in_a_loop_lets_the_batch_finish_elsewhere_it_stops_at_once():
    """SIGINT/SIGTERM (freeret.stop, installed by one_line_errors): inside a prediction loop the first signal only
    asks for a stop (checked after the loop's work is saved), a second one or one outside a loop raises at once."""
    from freeret import stop
    from freeret.errors import Interrupted

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop.handle_signals():
        with stop.finishing_batch():
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested()  # no exception: the batch in flight goes on
            with pytest.raises(Interrupted):
                os.kill(os.getpid(), signal.SIGINT)  # a second signal does not wait
                time.sleep(5)
        with pytest.raises(Interrupted) as info:
            stop.check()
        assert info.value.exit_code == 130 and str(info.value).startswith("stopped by SIGINT;")
    with stop.handle_signals():
        assert not stop.requested()
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)  # outside a loop: at once
            time.sleep(5)
        assert info.value.exit_code == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_debug_shows_the_traceback(tmp_path):
    proc = run_py(["model=tiny_qwen2vl", "dataset=smoke_mm", "prior.query=no item here", "debug=true", *QUIET], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_prior_without_text_placeholder_is_refused():
    with pytest.raises(ConfigError, match="target template has no"):
        Prior.from_dict({"name": "p", "query": "{text}", "target": "Describe it."})


# -- security -----------------------------------------------------------------------------------------


def _sources() -> list[Path]:
    return [p for d in ("freeret", "experiments", "probes", "scripts") for p in (REPO / d).rglob("*.py")] + [REPO / "run.py"]


def test_nothing_loads_pickles():
    for path in _sources():
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "allow_pickle=True" not in text, path
        assert not re.search(r"\.from_pretrained\([^)]*use_safetensors=False", text), path


def test_remote_code_is_off_unless_asked():
    spec = ModelSpec(name="m", hf_id="org/m")
    assert spec.trust_remote_code is False and _load_kwargs(spec, None)["trust_remote_code"] is False
    assert _load_kwargs(ModelSpec(name="m", hf_id="org/m", trust_remote_code=True), None)["trust_remote_code"] is True
    for path in (REPO / "conf" / "model").glob("*.yaml"):
        assert not re.search(r"trust_remote_code:\s*true", path.read_text(), re.I), path


def test_wandb_is_offline_unless_turned_on(tmp_path, monkeypatch):
    import yaml

    from freeret.eval import loggers

    assert yaml.safe_load((REPO / "conf" / "logger" / "wandb.yaml").read_text())["mode"] == "offline"
    seen = {}

    class FakeWandb:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr("lightning.pytorch.loggers.WandbLogger", FakeWandb)
    loggers.make_logger({"kind": "wandb"}, tmp_path)
    assert seen["offline"] is True and seen["mode"] == "offline"


def test_the_network_is_blocked_in_tests_and_their_subprocesses():
    with pytest.raises(RuntimeError, match="network"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(RuntimeError, match="network"):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(RuntimeError, match="network"):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53))
    code = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "test tried to reach the network" in proc.stderr


def test_summary_line_reports_failed_queries_with_rag():
    from freeret.eval.results import RunResult
    from freeret.run.report import summary_line

    payload = {"dataset": "d", "main_score": 0.5, "metrics": {"embed": {"hit@1": 0.5}}, "layer": {"label": "attn_last"},
               "prior": "p", "framing": None, "model": {"name": "m"}, "counts": {"num_queries": 4,
               "candidates_per_query": 2, "failed_queries": 3}, "timing": {"wall_seconds": 1.0},
               "rag": {"exact_match_with_retrieval": 0.1, "exact_match_closed_book": 0.0}}
    line = summary_line(RunResult.from_dict(payload))
    assert "RAG EM=0.100" in line and "3 failed queries counted as misses" in line
