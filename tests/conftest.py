"""Shared fixtures: offline guard, the real embedded SmolLM2, config composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netguard import guards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
# Python subprocesses (run.py in end-to-end tests) import tests/offline/sitecustomize.py, which blocks them too;
# they and the notebook kernels import this checkout's freeret, whichever checkout the editable install points at.
os.environ["FREERET_NO_NETWORK"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "tests" / "offline"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests are offline: any connection, send or name lookup outside loopback fails loudly."""
    for (owner, name), fn in guards().items():
        monkeypatch.setattr(owner, name, fn)


@pytest.fixture
def threads():
    """One torch thread for the test: many tiny ops (the simulated device, tiny models) run slower oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm():
    """The real embedded SmolLM2-135M backbone, loaded once."""
    from freeret.backbone import ModelSpec, load_backbone

    return load_backbone(ModelSpec(name="smollm2_135m", source="embedded"))


def compose(overrides: list[str] | None = None):
    """Compose the Hydra config as run.py would (without running)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [], return_hydra_config=False)


def dataset_prompt(name: str):
    """The prompt facts of ``conf/dataset/<name>.yaml`` (``mmeb/ImageNet-1K``, ``wordnet_rd``, ...), unresolved."""
    from omegaconf import OmegaConf

    from freeret.prompts import DatasetPrompt

    return DatasetPrompt.from_config(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml")))


def check_snapshot(path: Path, got) -> None:
    """Compare with a frozen JSON snapshot; renew on purpose with FREERET_UPDATE_SNAPSHOTS=1."""
    import json

    if os.environ.get("FREERET_UPDATE_SNAPSHOTS") == "1":
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"missing snapshot {path.name}: create it with FREERET_UPDATE_SNAPSHOTS=1"
    assert got == json.loads(path.read_text())
