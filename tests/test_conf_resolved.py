"""Every config a user can pick resolves to the same values as before: the proof that reshaping conf/ (bases via
``defaults``, presets stated explicitly, comments moved to docs) changed no run.

For every option of every config group (each dataset file, suite, method, prior, framing, scorer, rerank preset,
pipeline, layer, pooling, postprocess, retriever, mode, model, experiment) and a few combinations, the config is
composed as run.py composes it and resolved; paths are stubbed so the snapshot does not depend on the machine.
The snapshot holds the default config in full and, for each combination, the dotted keys whose value differs from it
(a key the combination drops maps to ``"<absent>"``). Renew it (FREERET_UPDATE_SNAPSHOTS=1) only for a change
of behaviour meant as one, and say so; renewing it after a reshape would prove nothing. To add a combination,
generate its entry from the conf/ of the commit before the reshape.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from freeret.presets import resolve
from helpers import CONF, REPO, check_snapshot

SNAPSHOT = REPO / "tests/snapshots/conf_resolved.json"
GROUPS = ["dataset", "suite", "method", "prior", "expand", "framing", "scorer", "rerank", "pipeline", "layer", "pooling",
          "prepend",
          "postprocess", "retriever", "mode", "model", "trainer", "logger", "experiment"]
COMBINATIONS = [
    ["method=freeret", "rerank=freeret"], ["method=freeret", "rerank=blim"], ["method=freeret", "rerank=mmembed"],
    ["method=freeret", "rerank=retllm"], ["pipeline=two_stage", "rerank=retllm"], ["pipeline=two_stage", "scorer=listwise"],
    ["method=freeret", "framing=yes_no"], ["method=freeret_plus", "pipeline=two_stage"], ["method=e5v", "dataset=smoke_mm"],
    ["suite=mmeb", "mode=fast"], ["suite=wordnet_meta", "mode=fast"], ["suite=stage1_dev", "mode=fast"],
    ["suite=stage1_test", "mode=fast"], ["suite=wordnet_meta_dev", "method=freeret"], ["dataset=smoke_mm", "mode=fast"],
    ["dataset=mmeb/ImageNet-1K", "mode=fast", "method=freeret"], ["pipeline=rag", "rerank=retllm"],
    ["framing=retllm", "scorer=bidirectional"],
    ["dataset=wordnet_rd_dev", "postprocess=center", "postprocess.fit_on=corpus",
     "+dataset@postprocess.corpus=wordnet_dev/ret_def2lemma"],
    # issue 26: method=freeret_plus per model (its own file, the general one, a command-line override on top), and the
    # pinned names, whose entries equal those of `method=freeret_plus` / `method=freeret_plus_270m` before issue 26
    ["method=freeret_plus", "model=gemma3_270m"], ["method=freeret_plus", "model=tiny_qwen2vl"],
    ["method=freeret_plus", "model=gemma3_270m", "prior.demos.k=4"], ["method=freeret_plus", "model=gemma3_270m", "prior=e5v"],
    ["method=freeret_plus_v1", "model=gemma3_270m"], ["method=freeret_plus_v1", "pipeline=two_stage"],
    ["method=freeret_plus_270m", "model=gemma3_270m"],
]
REQUIRED = {"dataset=mmeb_v2/video": ["dataset.task=MSR-VTT"], "dataset=mmeb_v2/visdoc": ["dataset.task=ViDoRe_docvqa"]}
ABSENT = "<absent>"


def options(group: str) -> list[str]:
    """Every option of a config group, nested folders included (``mmeb/ImageNet-1K``); ``_``-named bases excluded."""
    paths = sorted((CONF / group).rglob("*.yaml"))
    names = [p.relative_to(CONF / group) for p in paths]
    return [str(n.with_suffix("")) for n in names if not any(part.startswith("_") for part in n.parts)]


def runs() -> list[list[str]]:
    """The override lists snapshotted: each option of each group alone (plus the values it requires), then the
    combinations."""
    single = [f"{group}={name}" for group in GROUPS for name in options(group)]
    return [[choice, *REQUIRED.get(choice, [])] for choice in single] + COMBINATIONS


def _resolved(compose, overrides: list[str]) -> dict[str, Any]:
    """The composed config, resolved, with every ``paths`` entry replaced by a stub; the experiment's sweep and the
    order of the benchmark's datasets (the order they run in) kept."""
    cfg = resolve(lambda o: compose(config_name="config", overrides=o, return_hydra_config=True), overrides)
    params = cfg.hydra.sweeper.params
    sweep = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    with_hydra = OmegaConf.to_container(cfg, resolve=False)
    with_hydra.pop("hydra")
    plain = OmegaConf.create(with_hydra)
    for key in list(plain.paths):
        plain.paths[key] = f"<paths.{key}>"
    resolved = OmegaConf.to_container(plain, resolve=True)
    return {**resolved, "_sweep": sweep, "_dataset_order": list(resolved["benchmark"]["datasets"])}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (an empty mapping or list is a leaf)."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def resolved_configs() -> dict[str, Any]:
    """{"default": the default config, "<override ...>": its keys that differ from the default}."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = _resolved(compose, [])
        flat_base = _flat(base)
        got: dict[str, Any] = {"default": base}
        for overrides in runs():
            flat = _flat(_resolved(compose, overrides))
            diff = {k: v for k, v in flat.items() if flat_base.get(k, ABSENT) != v}
            diff.update({k: ABSENT for k in flat_base if k not in flat})
            got[" ".join(overrides)] = diff
    return got


def test_every_config_choice_resolves_as_before():
    got = resolved_configs()
    assert len(got) > 150 and "dataset=mmeb/ImageNet-1K" in got and "suite=stage1_dev mode=fast" in got
    check_snapshot(SNAPSHOT, got)


def test_a_rerank_preset_sets_its_framing_under_method_freeret():
    """method=freeret once restated framing=mcq; coming after rerank in the defaults, it silently undid
    rerank=mmembed and rerank=retllm (both ran the MCQ prompt)."""
    got = resolved_configs()
    assert got["method=freeret rerank=mmembed"]["framing.name"] == "mmembed"
    assert got["method=freeret rerank=retllm"]["framing.name"] == "retllm"
