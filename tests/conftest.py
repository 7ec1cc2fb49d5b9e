"""Shared fixtures: offline guard, caches in a fresh folder per session, the real embedded SmolLM2.

Helpers that tests import (config composition, snapshots, run.py in process) live in ``helpers.py``."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest

from netguard import guards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
# Python subprocesses (run.py in end-to-end tests) import tests/offline/sitecustomize.py, which blocks them too;
# they and the notebook kernels import this checkout's freeret, whichever checkout the editable install points at.
os.environ["FREERET_NO_NETWORK"] = "1"
# Caches (FreeRet's converted checkpoints, tiny models and vectors; the HF hub, matplotlib and mteb caches under
# XDG_CACHE_HOME) go to a fresh folder per session, never the user's ~/.cache: timings do not depend on a warm
# cache, and a test cannot pass on something only an earlier session left there. Subprocesses inherit it.
# Under pytest-xdist the workers share the folder their controller made (they inherit its environment).
if os.environ.get("FREERET_TEST_SESSION_CACHE") and os.environ.get("PYTEST_XDIST_WORKER"):
    SESSION_CACHE = Path(os.environ["FREERET_TEST_SESSION_CACHE"])
else:
    SESSION_CACHE = Path(tempfile.mkdtemp(prefix="freeret-tests-cache-"))
    os.environ["FREERET_TEST_SESSION_CACHE"] = str(SESSION_CACHE)
    atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)
os.environ["FREERET_CACHE"] = str(SESSION_CACHE / "freeret")
os.environ["XDG_CACHE_HOME"] = str(SESSION_CACHE)
os.environ["MPLCONFIGDIR"] = str(SESSION_CACHE / "matplotlib")
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, subprocesses too
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
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


# Modules whose tests start processes of their own (DDP ranks, killed and resumed runs, concurrent jobs).
PROCESS_HEAVY = {"test_resume.py", "test_many_jobs.py"}


@cache
def keeps_together(module: str) -> bool:
    """Whether a test module has module-scoped fixtures (built once only if its tests share a worker)."""
    return 'scope="module"' in (REPO / module).read_text()


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: no error where xdist is absent or off (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``-n auto``): the units of work. A module with module-scoped fixtures is one unit (they are
    built once); the multi-process modules together are one unit (one such test at a time); any other test is a unit
    of its own. xdist hands out the units with the most tests first, so single tests fill the end evenly."""
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if Path(module).name in PROCESS_HEAVY:
                return "processes"
            return module if keeps_together(module) else nodeid

    return Units(config, log)
