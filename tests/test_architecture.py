"""docs/architecture.md's map of the code names every library module, config group and entry-point script, so a
newcomer finds each one there; adding a file without a line in the map fails here."""

from __future__ import annotations

import re

from helpers import REPO

MAP = (REPO / "docs" / "architecture.md").read_text()
CODE = MAP[MAP.index("## The code"):MAP.index("## Design choices")]


def named(name: str) -> bool:
    """Whether the map's code section names ``name`` as a whole word (``store.py`` is not ``restore.py``)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", CODE) is not None


def test_every_library_module_is_in_the_map():
    modules = sorted(p for p in (REPO / "freeret").rglob("*.py") if p.name != "__init__.py")
    assert modules
    missing = [str(p.relative_to(REPO)) for p in modules if not named(p.name)]
    assert not missing, f"docs/architecture.md's map of the code does not name: {', '.join(missing)}"


def test_every_config_group_is_in_the_map():
    groups = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir())
    missing = [g for g in groups if not named(f"{g}/")]
    assert not missing, f"docs/architecture.md's conf/ line does not name: {', '.join(missing)}"


def test_every_entry_point_script_is_in_the_map():
    scripts = [*(REPO / "experiments").glob("*.py"), *(REPO / "probes").glob("*.py"), *(REPO / "scripts").glob("*.py"),
               *(REPO / "scripts").glob("*.sh")]
    missing = sorted(str(p.relative_to(REPO)) for p in scripts if p.name != "__init__.py" and not named(p.name))
    assert not missing, f"docs/architecture.md's map of the code does not name: {', '.join(missing)}"


def test_the_check_catches_a_missing_name():
    assert named("runner.py") and named("conf/") and not named("no_such_module.py")
    assert not named("ore.py")  # part of another name does not count
