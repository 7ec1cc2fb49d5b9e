"""A full disk or a read-only cache while writing a shard or a results file: one line naming the folder and what
to do (exit code 2), no partial file left behind, and a rerun after freeing space resumes from the finished shards.

The errors are injected at the write (``os.write`` raising ENOSPC after half a file, ``os.open`` raising EROFS),
and, where this process may mount one, produced for real by a small tmpfs that fills up or is remounted read-only.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from freeret.cli import one_line_errors
from freeret.retrieve.shards import check_shard
from freeret.run.pipeline import run
from helpers import compose

ARGS = ["model=tiny_qwen2vl", "dataset=smoke_mm", "embed.batch_size=2", "embed.shard_size=2", "logger=none",
        "trainer.enable_progress_bar=false"]
ITEMS = 32  # smoke_mm: 16 shards of 2
RESUMES = "then rerun the same command; finished work is kept and the run resumes"


def config(cache: Path, run_dir: Path) -> dict:
    cfg = OmegaConf.to_container(compose([*ARGS, "embed.cache=true", f"embed.cache_dir={cache}"]), resolve=True)
    cfg["run_dir"] = str(run_dir)
    return cfg


def fails_with_one_line(cfg: dict, capsys) -> str:
    """Run as the CLI does; the run must exit 2 with one error line on stderr (returned) and no traceback."""
    with pytest.raises(SystemExit) as stopped:
        one_line_errors(lambda: run(cfg))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert stopped.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def store_of(cache: Path) -> Path:
    (store,) = [p for p in cache.iterdir() if p.is_dir()]
    return store


def whole_shards(store: Path) -> int:
    """How many shards the store holds; every one must be whole (checksum)."""
    shards = list(store.glob("*.safetensors"))
    assert all(check_shard(p) for p in shards)
    return len(shards)


def temporaries(root: Path) -> list[Path]:
    return list(root.rglob(".*.tmp"))


def test_full_disk_at_a_shard_and_at_the_results_file(tmp_path, monkeypatch, capsys):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cfg = config(cache, run_dir)
    real_write = os.write
    fail = {"where": ".safetensors~", "after": 3}

    def disk_fills(fd: int, data) -> int:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if fail["where"] in target and target.endswith(".tmp"):
            if fail["after"] == 0:
                real_write(fd, bytes(data[: len(data) // 2]))  # half the file reaches the disk, then it is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fail["after"] -= 1
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_fills)
    line = fails_with_one_line(cfg, capsys)  # the 4th shard hits the full disk
    store = store_of(cache)
    assert line == (f"error: cannot write to {store} (No space left on device): free space on that disk or set "
                    f"embed.cache_dir to another folder, {RESUMES}")
    assert whole_shards(store) == 3 and not temporaries(tmp_path) and not (run_dir / "results").exists()

    fail.update(where="/results/", after=0)  # space for the shards, none for the results file
    line = fails_with_one_line(cfg, capsys)
    assert line == (f"error: cannot write to {run_dir / 'results'} (No space left on device): free space on that "
                    f"disk or set hydra.run.dir to another folder, {RESUMES}")
    assert whole_shards(store) == ITEMS // 2 and not temporaries(tmp_path)
    assert not list((run_dir / "results").iterdir())

    monkeypatch.undo()  # space freed
    payload = run(cfg)
    assert payload.timing["embed_items_computed"] == 0 and (run_dir / "results" / "smoke_mm.json").exists()


def test_read_only_cache_fails_before_computing_and_a_complete_one_is_read(tmp_path, monkeypatch, capsys):
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cfg = config(cache, run_dir)
    real_write, real_open = os.write, os.open
    written = {"shards": 0}

    def full_after_4(fd: int, data) -> int:
        if ".safetensors~" in os.readlink(f"/proc/self/fd/{fd}"):
            written["shards"] += 1
            if written["shards"] > 4:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_4)
    fails_with_one_line(cfg, capsys)
    store = store_of(cache)
    assert whole_shards(store) == 4
    monkeypatch.undo()

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(cache)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    line = fails_with_one_line(cfg, capsys)
    assert line == (f"error: cannot write to {store} (Read-only file system): make it writable or set "
                    f"embed.cache_dir to another folder, {RESUMES}")
    assert whole_shards(store) == 4 and not temporaries(tmp_path)
    monkeypatch.undo()  # writable again: the rerun computes only what is missing
    assert run(cfg).timing["embed_items_computed"] == ITEMS - 8
    monkeypatch.setattr(os, "open", read_only)  # a complete cache that is read-only serves a run
    assert run(cfg).timing["embed_items_computed"] == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root with CAP_SYS_ADMIN; skipped elsewhere), unmounted after the test."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                                        capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_and_read_only_tmpfs(tmp_path, tmpfs, capsys):
    """The same on a real filesystem: fill a tmpfs, free it, remount it read-only."""
    cache, run_dir = tmpfs / "cache", tmp_path / "run"
    cfg = config(cache, run_dir)
    cache.mkdir()
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (free - 6 * 4096))  # 6 pages left: signature.json and a few shards (~1 KiB each)

    line = fails_with_one_line(cfg, capsys)
    store = store_of(cache)
    assert line.startswith(f"error: cannot write to {store} (No space left on device): free space on that disk")
    done = whole_shards(store)
    assert done < ITEMS // 2 and not temporaries(tmpfs)

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    line = fails_with_one_line(cfg, capsys)
    assert line.startswith(f"error: cannot write to {store} (Read-only file system): make it writable")
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert whole_shards(store) == done and not temporaries(tmpfs)
    assert run(cfg).timing["embed_items_computed"] == ITEMS - 2 * done
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    assert run(cfg).timing["embed_items_computed"] == 0
