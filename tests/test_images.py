"""Images in stage 2: each unique image decoded and processed once per run (in DataLoader workers when there are
some), pair prompts built from the per-image records exactly as the processor builds them, and the vision-feature
cache bounded by bytes."""

from __future__ import annotations

import os
import pathlib

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from skimage import data as skdata

from freeret.backbone import ModelSpec, load_backbone
from freeret.backbone.families import IMAGE
from freeret.backbone.image_records import PIXEL_KEYS, preprocess, record_inputs
from freeret.data import visual
from freeret.data.datamodule import default_num_workers
from freeret.data.datasets import load_dataset
from freeret.errors import ConfigError
from freeret.rerank.framing import Framing
from freeret.rerank.scorers.choice import Choice
from freeret.rerank.stage import RankedGroups, RerankConfig, RerankModule
from helpers import REPO

TINY = [("tiny_qwen2vl", "qwen2_vl"), ("tiny_qwen25vl", "qwen2_5_vl"), ("tiny_idefics3", "idefics3"),
        ("tiny_llava_ov", "llava_onevision"), ("tiny_internvl", "internvl")]


def _framing() -> Framing:
    return Framing.from_dict(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "framing" / "mcq.yaml")))


@pytest.fixture(scope="module")
def qwen():
    return load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"))


@pytest.fixture(scope="module")
def t2i_groups():
    """4 caption queries, each with the smoke set's 8 candidate images (the same 8 for every query)."""
    smoke = load_dataset({"name": "smoke_mm", "kind": "smoke"})
    rows = [r for r in smoke.rows if r.id.startswith("t2i")][:4]
    return [{"row": r.id, "positions": list(range(len(r.candidates))), "query": smoke.items[r.query],
             "candidates": [smoke.items[c] for c in r.candidates]} for r in rows]


@pytest.mark.parametrize("model, family", TINY)
def test_record_inputs_equal_the_processor(model, family):
    """Prompts with 0, 1 and 2 images mixed in a batch: every key but the pixels equals the processor's own output."""
    bb = load_backbone(ModelSpec(name=model, family=family, source="tiny"))
    images = {"a": Image.fromarray(skdata.astronaut()).resize((120, 90)),
              "b": Image.fromarray(skdata.chelsea()).resize((60, 80)),
              "c": Image.fromarray(skdata.coffee()).resize((200, 50))}
    for layout in ([["a"], ["b", "a"], []], [["a", "b"], ["c", "a"]], [[], ["c"]]):
        prompts = [bb.render_parts([IMAGE] * len(row) + [f"text {i}"]) for i, row in enumerate(layout)]
        want = bb.inputs(prompts, [[images[k] for k in row] for row in layout])
        count = (lambda row: len(row)) if bb.family.image_count_dependent else (lambda row: 1)
        records = [[preprocess(bb.prompter, k, images[k], count(row)) for k in row] for row in layout]
        got = record_inputs(bb.prompter, prompts, records)
        assert set(got) == set(want) - PIXEL_KEYS
        for key, value in got.items():
            assert torch.equal(value, want[key]), (family, layout, key)


class _Spy:
    """Counts calls to ``owner.name`` (and passes them on)."""

    def __init__(self, monkeypatch, owner, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)


def _predict(scorer: Choice, groups, workers: int = 0) -> list[list[list[float]]]:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    out = trainer.predict(RerankModule(scorer), datamodule=RankedGroups(groups, scorer, workers))
    return [r["probs"] for p in out for r in p["rows"]]


def test_each_image_decoded_and_processed_once_per_run(qwen, t2i_groups, monkeypatch):
    """4 queries x 8 image candidates: the reference decodes and processes per pair (32 decodes); the cached path
    decodes each of the 8 images once and processes each once, with the same scores."""
    decodes = _Spy(monkeypatch, visual, "open_image")
    processing = _Spy(monkeypatch, type(qwen.processor.image_processor), "preprocess")
    reference = _predict(Choice(qwen, _framing(), batch_size=4, vision_cache_mb=0), t2i_groups)
    assert (decodes.calls, processing.calls) == (32, 4 * 2)  # per pair; one processor call per batch of 4 pairs
    decodes.calls = processing.calls = 0
    scorer = Choice(qwen, _framing(), batch_size=4)
    cached = _predict(scorer, t2i_groups)
    assert (decodes.calls, processing.calls) == (8, 8)
    assert scorer.vision.stats.misses == 8 and scorer.vision.stats.records_received == 8
    assert scorer.vision.stats.images_preprocessed == 0  # all came planned with their first group
    assert torch.allclose(torch.tensor(cached), torch.tensor(reference), atol=1e-5)


@pytest.fixture(scope="module")
def reference(qwen, t2i_groups):
    """Scores with every pair decoding and processing its own images (no vision cache)."""
    return torch.tensor(_predict(Choice(qwen, _framing(), batch_size=4, vision_cache_mb=0), t2i_groups))


def test_workers_decode_and_process_for_the_main_process(qwen, t2i_groups, reference, monkeypatch):
    """With DataLoader workers the main process neither decodes nor processes an image."""
    decodes = _Spy(monkeypatch, visual, "open_image")  # counts the main process only
    scorer = Choice(qwen, _framing(), batch_size=4)
    got = _predict(scorer, t2i_groups, workers=2)
    assert decodes.calls == 0 and scorer.vision.stats.images_preprocessed == 0
    assert scorer.vision.stats.records_received == 8
    assert torch.allclose(torch.tensor(got), reference, atol=1e-5)


def test_vision_cache_is_bounded_by_bytes(qwen, t2i_groups, reference):
    """A budget of about two images' features: the cache never holds more, evicts the rest, and reprocesses an
    evicted image when a later query needs it; the scores do not change."""
    probe = Choice(qwen, _framing(), batch_size=4)
    probe.score(t2i_groups[0]["query"], t2i_groups[0]["candidates"][:1])
    per_image = next(iter(probe.vision.store.values())).nbytes
    scorer = Choice(qwen, _framing(), batch_size=4, vision_cache_mb=2.5 * per_image / 2**20)
    got = _predict(scorer, t2i_groups)
    stats = scorer.vision.stats
    assert len(scorer.vision.store) == 2 and scorer.vision.nbytes <= scorer.vision.max_bytes
    assert stats.evictions == stats.misses - 2 and stats.images_preprocessed == stats.misses - 8
    assert torch.allclose(torch.tensor(got), reference, atol=1e-5)
    assert next(iter(scorer.vision.store.values())).features[0].device == qwen.device  # on the model's device


def test_old_cache_key_names_the_new_one():
    with pytest.raises(ConfigError, match="vision_cache_items was replaced by pipeline.vision_cache_mb"):
        RerankConfig.from_dict({"vision_cache_items": 512})
    assert RerankConfig.from_dict({"vision_cache_items": None, "vision_cache_mb": 64}).vision_cache_mb == 64
    with pytest.raises(ConfigError, match="vision_cache_mb must be >= 0"):
        RerankConfig.from_dict({"vision_cache_mb": -1})


def test_default_workers_follow_the_machine(monkeypatch):
    """null workers: 0 without CUDA; with CUDA, min(8, CPUs per GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_num_workers() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert default_num_workers() == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)))
    assert default_num_workers() == 3


def _frame_folder(folder, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(folder / f"{i:03d}.png")


def test_clip_length_counted_once_per_file_version(tmp_path, monkeypatch):
    """Every prompt render asks how many frames a clip puts in it; the folder is listed once, and again only
    after it changed."""
    clip = tmp_path / "clip"
    _frame_folder(clip, 5)
    listings = _Spy(monkeypatch, pathlib.Path, "iterdir")
    assert [visual.frame_count(str(clip)) for _ in range(4)] == [5] * 4
    assert listings.calls == 1
    Image.new("RGB", (16, 16)).save(clip / "005.png")
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))  # a new file version
    assert visual.frame_count(str(clip)) == 6 and listings.calls == 2


def test_video_decoded_once_to_count_its_frames(tmp_path, monkeypatch):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_image(Image.new("RGB", (32, 32), (i * 20, 0, 0)))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    opens = _Spy(monkeypatch, av, "open")
    assert [visual.frame_count(str(path)) for _ in range(4)] == [8] * 4
    assert opens.calls == 1
    frames = visual.load_clip(str(path))
    assert len(frames) == 8 and opens.calls == 2  # loading decodes once more; only the sampled frames become images


def test_stage1_workers_decode_for_the_main_process(qwen, monkeypatch):
    """Stage 1 with DataLoader workers: the same vectors, and the main process decodes nothing."""
    from freeret.data.datamodule import ItemDataModule, PromptCollator
    from freeret.embed.layers import LayerSpec
    from freeret.embed.priors import Prior
    from freeret.lit import EmbedModule
    from helpers import compose

    smoke = load_dataset({"name": "smoke_mm", "kind": "smoke"})
    items = [it for it in smoke.items.values() if it.image][:6]
    collate = PromptCollator(qwen, Prior.from_dict(compose()["prior"]))
    module = EmbedModule(qwen, LayerSpec("attn", -1))

    def embed(workers: int) -> torch.Tensor:
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False)
        out = trainer.predict(module, datamodule=ItemDataModule(items, collate, batch_size=3, num_workers=workers))
        return torch.cat([p["embeddings"] for p in out])

    decodes = _Spy(monkeypatch, visual, "open_image")
    plain = embed(0)
    assert decodes.calls == len(items)
    decodes.calls = 0
    assert torch.equal(embed(2), plain) and decodes.calls == 0
