"""Files that many processes on many hosts share: atomic writes, named temporaries, one-line disk errors.

Every file FreeRet keeps (shards, result files) is written to a temporary beside it and renamed into place, so a
reader sees the old file or the new one, never half of one. A temporary's name carries its writer's host, PID and
a random part (``.<name>~<host>~<pid>~<random>.tmp``): a scan deletes it only when it is provably abandoned (its
writer ran on this host and is dead) or older than a generous age, never while its writer may still be writing.
A full disk or a read-only folder becomes a :class:`~freeret.errors.StorageError` (one line: which folder, what
to do) with no partial file left behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from freeret.errors import StorageError

log = logging.getLogger(__name__)

HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown-host"
STALE_AFTER_S = 24 * 3600.0  # a temporary whose writer cannot be checked (another host) is abandoned after this
_TEMP = re.compile(r"^\.(?P<name>.+)~(?P<host>[^~]*)~(?P<pid>\d+)~(?P<rand>[0-9a-f]+)\.tmp$")
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def writer_id() -> str:
    """``host:pid`` of this process (recorded in shard metadata: which job wrote what)."""
    return f"{HOST}:{os.getpid()}"


def temp_path(path: Path) -> Path:
    """A temporary beside ``path`` named by this host, this PID and a random part (unique per write)."""
    return path.with_name(f".{path.name}~{HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp")


def storage_error(exc: OSError, folder: Path, setting: str | None = None) -> StorageError | None:
    """The one-line error for a full or read-only ``folder``; None for other OS errors (those are bugs)."""
    if exc.errno in _FULL:
        todo = "free space on that disk"
    elif exc.errno in _READ_ONLY:
        todo = "make it writable"
    else:
        return None
    elsewhere = f" or set {setting} to another folder" if setting else ""
    return StorageError(f"cannot write to {folder} ({os.strerror(exc.errno)}): {todo}{elsewhere}, then rerun the same "
                        f"command; finished work is kept and the run resumes")


def ensure_dir(folder: Path, setting: str | None = None) -> Path:
    """``mkdir -p`` with the one-line error on a full or read-only disk."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, folder, setting) or exc from None
    return folder


def check_writable(folder: Path, setting: str | None = None) -> None:
    """Create and remove a temporary in ``folder``: a read-only store fails here, before any work is computed."""
    probe = temp_path(folder / "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        probe.unlink()
    except OSError as exc:
        raise storage_error(exc, folder, setting) or exc from None


def write_bytes_atomic(path: Path, data: bytes, setting: str | None = None) -> Path:
    """Write ``data`` to ``path`` atomically: named temporary, fsync, rename, fsync of the folder.

    On any failure (a full disk, a read-only folder, a signal) the temporary is removed; disk errors become a
    one-line :class:`StorageError` naming the folder and ``setting`` (the config key that moves it).
    """
    ensure_dir(path.parent, setting)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError) and (err := storage_error(exc, path.parent, setting)) is not None:
            raise err from None
        raise
    _fsync_dir(path.parent)
    return path


def temporaries_of(path: Path) -> str:
    """The glob pattern of ``path``'s temporaries (for :func:`remove_abandoned`)."""
    return f".{_glob_escape(path.name)}~*.tmp"


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some filesystems refuse to open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def abandoned(tmp: Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> bool:
    """True if ``tmp``'s writer is provably gone: it ran on this host and its PID is dead, or the file is older
    than ``stale_after_s`` (writers on other hosts cannot be checked). A live writer's file is never abandoned."""
    match = _TEMP.match(tmp.name)
    if match and match["host"] == HOST:
        return not _alive(int(match["pid"]))
    try:
        age = (time.time() if now is None else now) - tmp.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed into place or removed meanwhile
    return age > stale_after_s


def remove_abandoned(folder: Path, pattern: str = ".*.tmp", stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the abandoned temporaries in ``folder`` matching ``pattern``; return them (a read-only folder keeps them)."""
    removed = []
    for tmp in _glob(folder, pattern):
        if abandoned(tmp, stale_after_s):
            try:
                tmp.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:  # read-only cache: nothing to clean, nothing to write either
                log.debug("cannot remove %s: %s", tmp, exc)
                continue
            removed.append(tmp)
    return removed


def _glob(folder: Path, pattern: str) -> Iterator[Path]:
    try:
        yield from folder.glob(pattern)
    except FileNotFoundError:
        return


def drop_if_unchanged(path: Path, seen: os.stat_result) -> bool:
    """Delete a torn file, but only if it is still the file that was checked (same inode).

    The file is first moved aside under a temporary name; if a writer renamed a whole file over it after the
    check, that whole file is put back instead of deleted. Returns True if the torn file was deleted here.
    """
    aside = temp_path(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another process dropped it first
    now = os.stat(aside)
    if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
        os.replace(aside, path)  # a writer's whole file: put it back
        return False
    aside.unlink(missing_ok=True)
    return True


def write_text_atomic(path: Path, text: str, setting: str | None = None) -> Path:
    """Write a text file atomically under a temporary named by its writer : readers never
    see half a file, two writers of one file never collide, and a full or read-only disk is a one-line error
    naming ``setting`` (the config key that moves the folder). Abandoned temporaries of the file are removed."""
    write_bytes_atomic(path, text.encode(), setting)
    remove_abandoned(path.parent, temporaries_of(path))
    return path


def write_json(path: Path, payload: dict[str, Any], setting: str | None = None) -> Path:
    """Write JSON atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", setting)
