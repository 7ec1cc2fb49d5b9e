"""What a result and a cached vector record about the weights and the image processing that made them: the HF
cache snapshot a hub id resolved to (its commit and a fingerprint of its files), and the image processor class
(PIL or torchvision; ``model.image_processor``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from omegaconf import OmegaConf

from freeret.run.pipeline import run
from freeret.toy.models import tiny_checkpoint
from helpers import compose

REPO_ID = "freeret-test/tiny-qwen2vl"
COMMITS = {"a" * 40: 0, "b" * 40: 1}  # commit -> seed of the tiny weights it holds


def add_snapshot(repo: Path, commit: str, source: Path) -> None:
    """Lay ``source``'s files out as the HF cache does: content-named blobs, symlinked from snapshots/<commit>/."""
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in source.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / digest)
        (repo / "snapshots" / commit / f.name).symlink_to(Path("..", "..", "blobs", digest))


def point_main(repo: Path, commit: str) -> None:
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An offline HF hub cache (HF_HUB_CACHE) holding two commits of a tiny Qwen2-VL with different weights."""
    root = tmp_path / "hub"
    repo = root / f"models--{REPO_ID.replace('/', '--')}"
    for commit, seed in COMMITS.items():
        add_snapshot(repo, commit, tiny_checkpoint("qwen2_vl", seed=seed))
    point_main(repo, "a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return repo


def hub_run(tmp_path: Path, name: str) -> dict:
    cfg = OmegaConf.to_container(compose(["dataset=smoke_mm", "logger=none", "trainer.enable_progress_bar=false",
                                          f"embed.cache_dir={tmp_path / 'vectors'}"]), resolve=True)
    cfg["model"] = {"name": "tiny_hub", "family": "qwen2_vl", "source": "hub", "hf_id": REPO_ID, "revision": None}
    cfg["run_dir"] = str(tmp_path / name)
    run(cfg)
    return json.loads((tmp_path / name / "results" / "smoke_mm.json").read_text())


def test_hub_snapshot_commit_is_recorded_and_a_new_snapshot_misses_the_cache(tmp_path, hub_cache):
    first = hub_run(tmp_path, "r1")
    assert first["model"]["revision"] == "a" * 40
    assert first["timing"]["embed_items_computed"] == 32
    signature = json.loads((Path(first["timing"]["embed_store"]) / "signature.json").read_text())
    assert {name for name, *_ in signature["weights"]} >= {"config.json", "model.safetensors"}

    point_main(hub_cache, "b" * 40)  # the HF cache was updated: main now holds other weights
    second = hub_run(tmp_path, "r2")
    assert second["model"]["revision"] == "b" * 40
    assert second["timing"]["embed_items_computed"] == 32 and second["timing"]["embed_items_reused"] == 0
    assert second["timing"]["embed_store"] != first["timing"]["embed_store"]

    point_main(hub_cache, "a" * 40)  # back to the first snapshot: its vectors are reused
    third = hub_run(tmp_path, "r3")
    assert third["timing"]["embed_items_computed"] == 0 and third["timing"]["embed_store"] == first["timing"]["embed_store"]


@pytest.mark.parametrize("importable, wanted, runs", [
    (False, "auto", "pil"), (True, "auto", "torchvision"), (True, "pil", "pil"), (False, "pil", "pil"),
    (True, "torchvision", "torchvision"),
])
def test_image_backend_is_torchvision_where_it_imports(monkeypatch, importable, wanted, runs):
    from freeret.backbone import processors

    monkeypatch.setattr(processors, "torchvision_importable", lambda: importable)
    assert processors.image_backend(wanted) == runs


def test_torchvision_asked_for_where_it_does_not_import_is_one_line_before_loading(tmp_path, monkeypatch):
    from freeret.backbone import processors
    from freeret.errors import ConfigError
    from freeret.run import inputs

    monkeypatch.setattr(processors, "torchvision_importable", lambda: False)
    monkeypatch.setattr(inputs, "load_backbone", lambda *a, **k: pytest.fail("weights loaded"))
    cfg = OmegaConf.to_container(compose(["model=tiny_qwen2vl", "dataset=smoke_mm", "model.image_processor=torchvision"]),
                                 resolve=True)
    with pytest.raises(ConfigError, match="^model.image_processor=torchvision but torchvision does not import") as err:
        run({**cfg, "run_dir": str(tmp_path)})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="is not one of auto, pil, torchvision"):
        run({**cfg, "model": {**cfg["model"], "image_processor": "fast"}, "run_dir": str(tmp_path)})


def test_every_family_names_a_real_torchvision_image_processor():
    """The torchvision classes are imported only when chosen (their modules import torchvision): check by source."""
    import importlib.util

    from freeret.backbone.families import processor_recipes

    for family, recipe in processor_recipes().items():
        module, name = recipe.torchvision_image_processor.split(":")
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert f"class {name}(TorchvisionBackend)" in source, family
        assert recipe.image_processor_class.__name__ == f"{name}Pil", family  # the PIL twin of the same processor


def test_image_processor_class_is_in_the_results_and_the_vector_signature():
    from freeret.backbone import ModelSpec, load_backbone
    from freeret.embed.layers import LayerSpec
    from freeret.signatures import signature_id, vector_signature

    bb = load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))
    meta = bb.metadata()
    assert (meta["image_processor"], meta["image_backend"]) == ("Qwen2VLImageProcessorPil", "pil")
    base = vector_signature(bb, LayerSpec("attn", -1))
    assert base["model"]["image_processor"] == "Qwen2VLImageProcessorPil"
    pil = bb.processor.image_processor
    bb.processor.image_processor = type("Qwen2VLImageProcessor", (type(pil),), {})(**pil.to_dict())  # another class
    assert signature_id(vector_signature(bb, LayerSpec("attn", -1))) != signature_id(base)
