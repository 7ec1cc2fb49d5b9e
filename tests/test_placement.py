"""Where the model lives: loaded straight onto the run's device, kept there for a whole suite (no host<->device
round trips around each ``trainer.predict``), the DDP rank's own device, and ``model.device_map`` (accelerate)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import PreTrainedModel

from freeret.benchmark import run_all
from helpers import compose

SUITE = ["suite=wordnet_meta", "benchmark.only=[wordnet_cls_lexname,wordnet_ret_def2lemma]", "benchmark.limit=4",
         "model=tiny_qwen2vl", "pipeline=two_stage", "pipeline.top_k=3", "embed.cache=false",
         "logger=none", "trainer.enable_progress_bar=false"]


def holds_a_model(module: torch.nn.Module) -> bool:
    return any(isinstance(m, PreTrainedModel) for m in module.modules())


@pytest.fixture
def moves(monkeypatch) -> list[str]:
    """Every ``.to``/``.cpu``/``.cuda`` called on a transformers model or on a module holding one (a
    LightningModule): each is a host<->device copy of the weights on a GPU machine (a no-op copy on CPU)."""
    from freeret.toy.models import tiny_checkpoint

    tiny_checkpoint("qwen2_vl")  # built (and moved to fp32) before the spy when this test is the first to need it
    calls: list[str] = []
    for name in ("to", "cpu", "cuda"):
        original = getattr(torch.nn.Module, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if holds_a_model(self):
                calls.append(f"{type(self).__name__}.{_name}{args}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, name, spy)
    return calls


def suite_config(tmp_path, extra: list[str] = ()) -> dict:
    cfg = OmegaConf.to_container(compose([*SUITE, *extra]), resolve=True)
    cfg["run_dir"] = str(tmp_path)
    return cfg


def test_a_two_stage_suite_never_moves_the_model(tmp_path, moves):
    """2 datasets x (embed + rerank) = 4 trainer.predict calls; Lightning used to move the model to the device
    before each and back to the CPU after each (8 moves, plus one after loading)."""
    payloads = run_all(suite_config(tmp_path))
    assert [p.dataset for p in payloads] == ["wordnet_cls_lexname", "wordnet_ret_def2lemma"]
    assert all(p.timing["rerank_rows_computed"] == 4 for p in payloads)  # both stages ran on both datasets
    assert moves == []
    assert payloads[0].model["device"] == "cpu"


def test_a_suite_loads_the_tokenizer_once(tmp_path, monkeypatch):
    """Every dataset of a suite checks its rows with the tokenizer of the one shared model: loaded once, not once per
    dataset (a second or more each, 36 times over MMEB)."""
    from freeret.run import inputs

    loads = []
    original = inputs.load_text_side
    monkeypatch.setattr(inputs, "load_text_side", lambda *a, **k: loads.append(a[0].name) or original(*a, **k))
    payloads = run_all(suite_config(tmp_path))
    assert len(payloads) == 2 and loads == ["tiny_qwen2vl"]


def test_weights_load_straight_onto_the_device(moves):
    """No host copy first: the checkpoint is materialised on the device given (``meta`` stands in for a GPU)."""
    from freeret.backbone import ModelSpec, load_backbone

    bb = load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny"), device="meta")
    assert {p.device.type for p in bb.model.parameters()} == {"meta"} and bb.metadata()["device"] == "meta"
    assert moves == []


def test_each_ddp_rank_loads_on_its_local_gpu(monkeypatch):
    """Under trainer=ddp on a 2-GPU machine (CUDA faked for Lightning), the launcher's process (no LOCAL_RANK
    yet) gets cuda:0 and the rank Lightning starts with LOCAL_RANK=1 gets cuda:1."""
    from lightning.pytorch.utilities import rank_zero_only

    from freeret.backbone import ModelSpec
    from freeret.lit import run_device

    # The LOCAL_RANK=1 trainer sets Lightning's process-wide rank to 1, which silences every later rank-zero message
    # in this process (a later test's "GPU available" report): give it back afterwards.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = {"trainer": {"accelerator": "gpu", "devices": 2, "strategy": "ddp"}}
    spec = ModelSpec(name="m", source="tiny", family="qwen2_vl")
    assert run_device(cfg, spec) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_device(cfg, spec) == torch.device("cuda", 1)


def test_device_map_under_ddp_is_one_config_error_before_loading(tmp_path, monkeypatch):
    from freeret.errors import ConfigError
    from freeret.run import inputs

    monkeypatch.setattr(inputs, "load_backbone", lambda *a, **k: pytest.fail("weights loaded"))
    monkeypatch.setattr(inputs, "resolve_checkpoint", lambda *a, **k: pytest.fail("checkpoint resolved"))
    cfg = suite_config(tmp_path, ["trainer=ddp", "model.device_map=auto"])
    with pytest.raises(ConfigError, match=r"^model.device_map=auto .*\(trainer=ddp\)") as err:
        run_all(cfg)
    assert "\n" not in str(err.value)


def test_device_map_auto_runs_one_model_through_accelerate():
    """model.device_map=auto (here: every weight on the CPU) gives the same vectors as a plain load."""
    from freeret.backbone import ModelSpec, load_backbone
    from freeret.embed.layers import LayerSpec

    plain, mapped = (load_backbone(ModelSpec(name="tiny_qwen2vl", family="qwen2_vl", source="tiny", device_map=dm))
                     for dm in (None, "auto"))
    assert mapped.metadata()["device_map"] == "auto" and plain.metadata()["device_map"] is None
    prompts = [plain.render("a red square"), plain.render("two cats")]
    layer = LayerSpec("attn", -1)
    assert torch.equal(plain.embed(plain.inputs(prompts), layer), mapped.embed(mapped.inputs(prompts), layer))
