"""Per-model presets (issue 26): ``method=freeret_plus`` applies the setting chosen on dev for the loaded model.

A preset's settings are data, one file per model: ``conf/presets/<preset>/<model>.yaml`` (``<model>`` =
``conf/model/<name>.yaml``'s ``name``), else ``conf/presets/<preset>/_general.yaml``. Each file holds the chosen
values as ``run.py`` overrides (``stage1``: the five stage-1 groups and dotted keys under them; ``stage2``, optional:
the scorer and the top-K / fusion keys) and where they were chosen (``provenance``: a dev split, the search file,
the date); :func:`write` is how the dev search (``experiments/stage1_search.py --write-preset``) adds one.

The choice is made when the config is composed, by :func:`resolve` (Hydra stays in the entry points, which hand it
their compose function): the method's config carries a ``preset`` marker; the config is composed again with the
chosen file's overrides placed before the caller's, so an override the user gives wins (``prior.demos.k=4`` runs
k=4; ``prior=e5v`` drops the file's ``prior.*`` keys too), and the file, its sha256, what it applied and which of
its keys the user overrode land in the config's ``preset`` mapping, which the results file records. The marker's
``start`` (the pinned ``method=freeret_plus_v1``) is what the first composition uses, so the user's overrides compose
before the model is known; the second composition drops it, so nothing of it leaks into another model's setting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freeret.errors import ConfigError
from freeret.paths import repo_root

GENERAL = "_general"  # the file applied to a model without its own
STAGE1_GROUPS = ("layer", "pooling", "prior", "postprocess", "retriever")  # each file names all five
STAGE1_OPTIONAL = ("prepend", "expand")  # issue 27's techniques: named only where chosen (absent = none)
STAGE2_GROUPS = ("scorer", "framing")
STAGE2_KEYS = ("pipeline.top_k", "pipeline.fusion", "pipeline.fusion_weight", "pipeline.calibrate", "pipeline.tie_break")
FILE_KEYS = ("preset", "model", "stage1", "stage2", "provenance")
PROVENANCE_REQUIRED = ("split", "search", "date")
PROVENANCE_KEYS = (*PROVENANCE_REQUIRED, "objective", "score", "datasets", "data", "note", "written_by")
RECORD_KEYS = ("name", "model", "file", "sha256", "applied", "overridden")  # what a result file's `preset` holds
Compose = Callable[[list[str]], Any]  # overrides -> the composed config (a mapping)


def presets_root() -> Path:
    """``conf/presets`` of the checkout."""
    return repo_root() / "conf" / "presets"


def _shown(path: Path) -> str:
    """``path`` relative to the checkout where it lies inside it (what errors and records name)."""
    try:
        return str(path.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


@dataclass(frozen=True)
class PresetFile:
    """One preset file, checked: the overrides it applies and where they were chosen."""

    preset: str
    model: str  # a conf/model name, or _general
    path: Path
    sha256: str
    stage1: dict[str, Any]
    stage2: dict[str, Any] | None
    provenance: dict[str, Any]

    @classmethod
    def from_dict(cls, data: Any, path: Path, sha256: str = "") -> PresetFile:
        """Check a file's mapping: named after a conf/model config (or _general), every key known, the stage-1
        groups all named, each group choice an existing ``conf/<group>/<choice>.yaml``, values scalars (or lists of
        them), chosen on a dev split; a mistake is one ConfigError naming the file."""
        where = _shown(path)

        def fail(what: str) -> ConfigError:
            return ConfigError(f"preset file {where}: {what}")

        if not isinstance(data, Mapping):
            raise fail("not a mapping")
        unknown = sorted(set(data) - set(FILE_KEYS))
        if unknown:
            raise fail(f"unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(FILE_KEYS)})")
        if data.get("preset") != path.parent.name or data.get("model") != path.stem:
            raise fail(f"preset={data.get('preset')!r} model={data.get('model')!r} must name its folder and file "
                       f"(preset: {path.parent.name}, model: {path.stem})")
        conf = repo_root() / "conf"  # the groups a choice names
        if path.stem != GENERAL and not (conf / "model" / f"{path.stem}.yaml").is_file():
            raise fail(f"no conf/model/{path.stem}.yaml: a model's file is named after its model config (or {GENERAL})")
        stage1 = cls._settings(data.get("stage1"), "stage1", (*STAGE1_GROUPS, *STAGE1_OPTIONAL), (), conf, fail)
        missing = [g for g in STAGE1_GROUPS if g not in stage1]
        if missing:
            raise fail(f"stage1 must name every stage-1 group; missing {', '.join(missing)}")
        stage2 = None
        if data.get("stage2") is not None:
            stage2 = cls._settings(data["stage2"], "stage2", STAGE2_GROUPS, STAGE2_KEYS, conf, fail)
            if "scorer" not in stage2:
                raise fail("stage2 must name its scorer")
        provenance = data.get("provenance")
        if not isinstance(provenance, Mapping):
            raise fail("provenance must be a mapping (split, search, date, ...)")
        unknown = sorted(set(provenance) - set(PROVENANCE_KEYS))
        if unknown:
            raise fail(f"unknown provenance key(s) {', '.join(map(str, unknown))} (known: {', '.join(PROVENANCE_KEYS)})")
        missing = [k for k in PROVENANCE_REQUIRED if provenance.get(k) in (None, "")]
        if missing:
            raise fail(f"provenance must say {', '.join(missing)}")
        if provenance["split"] != "dev":
            raise fail(f"provenance.split={provenance['split']!r}: a preset is chosen on dev, never on test")
        return cls(str(data["preset"]), str(data["model"]), path, sha256, stage1, stage2,
                   {k: str(v) if k == "date" else v for k, v in provenance.items()})

    @staticmethod
    def _settings(section: Any, name: str, groups: Sequence[str], keys: Sequence[str], conf: Path,
                  fail: Callable[[str], ConfigError]) -> dict[str, Any]:
        if not isinstance(section, Mapping):
            raise fail(f"{name} must be a mapping of run.py overrides (group: choice, group.key: value)")
        out: dict[str, Any] = {}
        for key, value in section.items():
            key = str(key)
            if key not in groups and key not in keys and key.split(".")[0] not in groups:
                known = ", ".join([*groups, *(f"{g}.*" for g in groups), *keys])
                raise fail(f"unknown {name} key {key!r} (known: {known})")
            if not (_scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value))):
                raise fail(f"{name}.{key} must be a scalar or a list of scalars")
            if key in groups and not (isinstance(value, str) and (conf / key / f"{value}.yaml").is_file()):
                raise fail(f"{name}.{key}={value!r}: no conf/{key}/{value}.yaml")
            out[key] = value
        return out

    @classmethod
    def load(cls, path: Path) -> PresetFile:
        """Read and check one preset file."""
        import yaml

        try:
            raw = path.read_bytes()
            data = yaml.safe_load(raw)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"preset file {_shown(path)}: cannot read it ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(data, path, hashlib.sha256(raw).hexdigest())

    def settings(self) -> list[tuple[str, Any]]:
        """The overrides the file applies, in order: stage 1, the pipeline (``two_stage`` with a ``stage2`` block,
        else ``embed``), stage 2."""
        return [*self.stage1.items(), ("pipeline", "two_stage" if self.stage2 else "embed"),
                *(self.stage2 or {}).items()]


def choose(preset: str, model: str, root: Path | None = None) -> PresetFile:
    """The preset file for ``model``: its own, else ``_general``."""
    folder = (root or presets_root()) / preset
    if not (folder / f"{GENERAL}.yaml").is_file():
        raise ConfigError(f"preset {preset!r} has no {_shown(folder / (GENERAL + '.yaml'))}")
    own = folder / f"{model}.yaml"
    return PresetFile.load(own if model != GENERAL and own.is_file() else folder / f"{GENERAL}.yaml")


def check_all(root: Path | None = None) -> list[PresetFile]:
    """Every preset file, checked (each preset folder needs its ``_general.yaml``)."""
    root = root or presets_root()
    files = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        choose(folder.name, GENERAL, root)
        files += [PresetFile.load(p) for p in sorted(folder.glob("*.yaml"))]
    return files


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./@:-]*")


def override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: bools, null and numbers as such, strings bare when they read back as
    the same string, else quoted; lists of those."""
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "inf", "nan"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _override(key: str, value: Any) -> str:
    """A dotted key is set whether or not the chosen group has it (``++``), as the dev search passed it."""
    return f"{'++' if '.' in key else ''}{key}={override_value(value)}"


def _given(overrides: Sequence[str]) -> dict[str, str]:
    """The keys the caller's overrides set (``+``/``++``/``~`` stripped) -> their value as given."""
    out = {}
    for item in overrides:
        key, _, value = item.lstrip("~+").partition("=")
        out[key] = value
    return out


def _replaced(key: str, given: Mapping[str, str], groups: Mapping[str, str]) -> bool:
    """Whether the caller's overrides replace a file's ``key``: the same key, a key above it (``prior.demos`` over
    ``prior.demos.k``), or its group chosen otherwise (``prior=e5v`` drops the file's ``prior.*``; ``prior=fewshot``,
    the file's own choice, keeps them)."""
    above = [g for g in given if key.startswith(g + ".")]
    return key in given or any("." in g or given[g] != groups.get(g) for g in above)


def plan(marker: Mapping[str, Any], model: str, overrides: Sequence[str], root: Path | None = None) -> list[str]:
    """The overrides of the second composition: drop the marker's start, the chosen file's settings less those the
    caller overrides, the caller's overrides, then the record (``preset.*``)."""
    chosen = choose(str(marker["name"]), model, root)
    given = _given(overrides)
    groups = {k: override_value(v) for k, v in chosen.settings() if "." not in k}
    applied, overridden = [], []
    for key, value in chosen.settings():
        if _replaced(key, given, groups):
            overridden.append(key)
        else:
            applied.append(_override(key, value))
    record = {"model": chosen.model, "file": _shown(chosen.path), "sha256": chosen.sha256, "applied": applied,
              "overridden": overridden}
    start = [f"~{marker['start']}"] if marker.get("start") else []
    return [*start, *applied, *overrides, *(f"preset.{k}={override_value(v)}" for k, v in record.items())]


def resolve(compose: Compose, overrides: Sequence[str], composed: Any = None, root: Path | None = None) -> Any:
    """The config ``overrides`` compose to, with the per-model preset applied where the config names one (its
    ``preset`` marker, ``method=freeret_plus``); ``composed``: the first composition, when the caller has it
    (``run.py``: Hydra's own). Configs without a marker come back as composed."""
    cfg = compose(list(overrides)) if composed is None else composed
    marker = cfg.get("preset")
    if not marker or not marker.get("name") or marker.get("file"):
        return cfg
    return compose(plan(marker, str(cfg["model"]["name"]), list(overrides), root))


def record(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a result file records of the preset applied (``RECORD_KEYS``), or None where none applied."""
    marker = cfg.get("preset") or {}
    if not marker.get("file"):
        return None
    return {k: (list(marker[k]) if isinstance(marker.get(k), (list, tuple)) else marker.get(k)) for k in RECORD_KEYS}


def unresolved(cfg: Mapping[str, Any]) -> str | None:
    """The one-line problem of a config that names a per-model preset but was composed without :func:`resolve`."""
    marker = cfg.get("preset") or {}
    if marker.get("name") and not marker.get("file"):
        return (f"method={marker['name']} picks its setting per model when the config is composed "
                f"(freeret.presets.resolve, as run.py and experiments/runs.py compose); this config was composed "
                f"without it")
    return None


def write(preset: str, model: str, setting: Mapping[str, Any], provenance: Mapping[str, Any],
          stage2: Mapping[str, Any] | None = None, root: Path | None = None) -> Path:
    """Write ``conf/presets/<preset>/<model>.yaml`` from a chosen ``setting`` (the dev search's ``best``: group
    choices and dotted keys) and its ``provenance``; checked before it is written, so a bad setting leaves the old
    file in place."""
    import yaml

    from freeret.atomic_files import write_text_atomic

    path = (root or presets_root()) / preset / f"{model}.yaml"
    data = {"preset": preset, "model": model, "stage1": dict(setting), "stage2": dict(stage2) if stage2 else None,
            "provenance": dict(provenance)}
    PresetFile.from_dict(data, path)
    header = (f"# method={preset} for {'a model without its own file' if model == GENERAL else model}: the setting "
              f"chosen on dev (docs/stage1.md, 'Per-model presets').\n# Written by {provenance.get('written_by') or 'hand'}; "
              f"run.py overrides as data (stage1: group choices and dotted keys).\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return path
