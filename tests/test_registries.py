"""The registries (freeret/registry.py): every name resolves to what it says, lookup imports only what is asked
for, and an unknown name is one error type, listing the known names, whichever registry is asked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from freeret.backbone.families import FAMILIES, Family, get_family
from freeret.backbone.spec import MODEL_SOURCES, ModelSpec
from freeret.data.datasets import DATASET_KINDS, MMEB_KINDS, load_dataset
from freeret.data.mmeb import MMEB_SOURCES, locate
from freeret.errors import ConfigError, UnknownNameError
from freeret.registry import Registry, resolve
from freeret.rerank.scorers import SCORERS, scorer_spec, specs
from helpers import REPO

REGISTRIES = {"scorer": SCORERS, "model.family": FAMILIES, "model.source": MODEL_SOURCES,
              "dataset.kind": DATASET_KINDS, "dataset.source": MMEB_SOURCES}


@pytest.mark.parametrize("what", REGISTRIES)
def test_every_registered_name_resolves(what):
    registry = REGISTRIES[what]
    assert registry.what == what and len(registry) > 0
    for name, entry in registry.items():
        if what == "model.family":
            assert isinstance(entry, Family) and entry.name == name
        else:
            assert callable(entry), (what, name)  # a spec class, or a function of the config or ModelSpec


def test_each_scorer_spec_is_registered_under_its_own_name():
    assert {name: cls.name for name, cls in specs().items()} == {name: name for name in SCORERS}


def test_the_public_config_names_are_registered():
    """What shipped configs and users type: conf/model/tiny_*.yaml (source: tiny), dataset=smoke_mm (kind: smoke),
    mode=fast (benchmark.source: fixture)."""
    assert set(MODEL_SOURCES) == {"hub", "embedded", "tiny"}
    assert set(DATASET_KINDS) == {"mmeb", "mmeb_subset", "mmeb_v2_video", "visdoc", "smoke", "wordnet_qa"}
    assert MMEB_KINDS < set(DATASET_KINDS)  # the kinds benchmark.source applies to are registered kinds
    assert set(MMEB_SOURCES) == {"local", "hub", "fixture"}
    assert MODEL_SOURCES.refs()["tiny"] == "freeret.toy.models:tiny_source"
    assert DATASET_KINDS.refs()["smoke"] == "freeret.toy.smoke:load_smoke_set"
    assert MMEB_SOURCES.refs()["fixture"] == "freeret.toy.mmeb_fixture:build_mmeb_fixture"


@pytest.mark.parametrize("lookup, message", [
    (lambda: scorer_spec({"name": "nope"}), "scorer='nope' is not available; choose one of bidirectional, "),
    (lambda: get_family("nope"), "unknown model family 'nope'; known: idefics3, "),
    (lambda: ModelSpec.from_dict({"name": "x", "source": "nope"}), "model.source='nope' is not one of embedded, hub, tiny"),
    (lambda: load_dataset({"kind": "nope"}), "dataset.kind='nope' is not one of mmeb, mmeb_subset, "),
    (lambda: locate({"name": "x", "source": "nope"}), "dataset.source='nope' is not one of null, fixture, hub, local"),
], ids=list(REGISTRIES))
def test_an_unknown_name_is_one_error_type(lookup, message):
    with pytest.raises(UnknownNameError, match=message) as info:
        lookup()
    assert isinstance(info.value, ConfigError) and info.value.name == "nope" and "\n" not in str(info.value)
    assert info.value.known == tuple(sorted(info.value.known)) and info.value.known


def test_a_registry_imports_an_entry_only_when_it_is_looked_up():
    """Naming the scorers, sources and kinds imports none of them; looking one up imports that one only."""
    code = ("import sys\n"
            "from freeret.rerank.scorers import SCORERS\n"
            "from freeret.data.datasets import DATASET_KINDS\n"
            "from freeret.backbone.spec import MODEL_SOURCES\n"
            "lazy = ('freeret.rerank.scorers.choice', 'freeret.rerank.scorers.likelihood', 'freeret.rerank.scorers.listwise',"
            " 'freeret.toy.models', 'freeret.toy.smoke', 'freeret.data.mmeb_v2')\n"
            "assert 'choice' in SCORERS and 'smoke' in DATASET_KINDS and 'tiny' in MODEL_SOURCES\n"
            "assert not [m for m in lazy if m in sys.modules], [m for m in lazy if m in sys.modules]\n"
            "SCORERS['listwise']\n"
            "assert 'freeret.rerank.scorers.listwise' in sys.modules and 'freeret.rerank.scorers.choice' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_registry_takes_references_and_objects():
    registry: Registry = Registry("thing", {"path": "pathlib:Path"})
    registry.add("one", 1)
    assert registry.names() == ("path", "one") and registry["one"] == 1
    import pathlib

    assert registry["path"] is pathlib.Path and resolve("pathlib:PurePath") is pathlib.PurePath
    with pytest.raises(UnknownNameError, match="thing='two' is not one of one, path"):
        registry["two"]
    with pytest.raises(UnknownNameError, match=r"thing=\['path'\] is not one of"):  # a config's list, not a crash
        registry[["path"]]
    with pytest.raises(ValueError, match="not a 'module:attr' reference"):
        resolve("pathlib.Path")


def test_a_toy_model_of_a_family_without_one_is_the_same_error():
    """model.source=tiny with a family that has no toy model (``text``) was a ValueError traceback; now the
    registries' one-line error, listing the toy families."""
    from freeret.backbone.loading import resolve_checkpoint

    with pytest.raises(UnknownNameError, match="no tiny model for family 'text'; known: idefics3, internvl, "):
        resolve_checkpoint(ModelSpec.from_dict({"name": "tiny_text", "family": "text", "source": "tiny"}))
