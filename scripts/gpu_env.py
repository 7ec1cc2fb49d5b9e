"""What the GPU check needs installed, and what is: setup.cfg's ranges against installed versions (stdlib + packaging).

    python3 scripts/gpu_env.py check    # exit 1 and one line per unmet requirement (gpu_check.sh then runs setup.sh)
    python3 scripts/gpu_env.py probe    # the env step: versions, the GPU, where the key modules import from (JSON)
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parent.parent
BUNDLE_LIST = REPO / "scripts" / "gpu_bundle.txt"
HOST_LIST = REPO / "scripts" / "gpu_host.txt"
# The distributions whose versions decide whether set-up must run (the rest of setup.cfg is not version-sensitive).
CHECKED = ("transformers", "hydra-core", "omegaconf", "hydra-joblib-launcher", "lightning")
# module -> distribution, for the env step's versions and import paths
MODULES = {"torch": "torch", "transformers": "transformers", "lightning": "lightning", "hydra": "hydra-core",
           "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "torchvision": "torchvision",
           "hydra_plugins.hydra_joblib_launcher": "hydra-joblib-launcher", "freeret": "freeret"}


def read_pins(path: Path) -> dict[str, Version]:
    """``name==version`` lines of a list file (comments and blank lines skipped), by canonical name."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def setup_ranges(cfg: Path = REPO / "setup.cfg") -> dict[str, Requirement]:
    """setup.cfg's ``install_requires``, by canonical name."""
    parser = configparser.ConfigParser()
    parser.read(cfg)
    lines = [ln.strip() for ln in parser["options"]["install_requires"].splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    return {canonicalize_name(r.name): r for r in reqs}


def installed(name: str) -> str | None:
    """The installed version of distribution ``name`` (the first on sys.path), or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet(names: tuple[str, ...] = CHECKED) -> list[str]:
    """One line per distribution in ``names`` that is missing or outside setup.cfg's range."""
    ranges, problems = setup_ranges(), []
    for name in names:
        req, version = ranges[canonicalize_name(name)], installed(name)
        if version is None:
            problems.append(f"{name}: not installed (setup.cfg wants {req})")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{name} {version}: setup.cfg wants {req}")
    return problems


def satisfied(req: Requirement, have: dict[str, Version]) -> bool:
    """Whether ``have`` (name -> version; 0 = present, version unknown) meets ``req`` (markers for Python 3.12)."""
    if req.marker is not None and not req.marker.evaluate({"python_version": "3.12", "extra": ""}):
        return True
    version = have.get(canonicalize_name(req.name))
    if version is None:
        return False
    return not req.specifier or (version != Version("0") and req.specifier.contains(version, prereleases=True))


def module_info(module: str) -> dict[str, Any]:
    """Version and file of one module (found, not imported: the steps import them), or why it is not there."""
    try:
        spec = importlib.util.find_spec(module)
    except ImportError as exc:  # its parent package is missing
        spec, why = None, str(exc)
    else:
        why = f"no module named {module}"
    if spec is None:
        return {"error": why}
    return {"version": installed(MODULES[module]), "file": spec.origin}


def probe() -> dict[str, Any]:
    """The env step's record: the device and every key module's version and import path."""
    import torch

    cuda = torch.cuda.is_available()
    modules = {name: module_info(name) for name in MODULES}
    return {"torch": torch.__version__, "transformers": modules["transformers"].get("version"),
            "cuda_available": cuda, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if cuda else None,
            "bf16": torch.cuda.is_bf16_supported() if cuda else None, "gpus": torch.cuda.device_count(),
            "python": platform.python_version(), "lightning": modules["lightning"].get("version"),
            "hydra": modules["hydra"].get("version"), "omegaconf": modules["omegaconf"].get("version"),
            "torchvision": modules["torchvision"].get("version"), "modules": modules, "unmet": unmet()}


def main(argv: list[str]) -> int:
    """``check``: exit 1 when set-up must run; ``probe``: print the env record as JSON (gpu_check.py judges it)."""
    if argv[:1] == ["check"]:
        problems = unmet()
        for line in problems:
            print(f"unmet: {line}")
        return 1 if problems else 0
    if argv[:1] == ["probe"]:
        print(json.dumps(probe()))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except InvalidVersion as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
