"""Embedding store: checksummed atomic shards, torn ones detected, streamed scoring equal to in-memory scoring,
and cache keys that change with everything that shapes a vector (and nothing else)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from freeret.data.retrieval_set import Item, Row
from freeret.retrieve import shards as store_mod
from freeret.retrieve.scoring import score_rows, score_store, search_store
from freeret.retrieve.shards import ShardStore, check_shard, shard_name, write_shard
from freeret.signatures import item_cache_key, signature_id, store_dir


def make_store(folder: Path, n: int = 50, dim: int = 8, per_shard: int = 7) -> tuple[list[str], torch.Tensor]:
    keys = [f"k{i}" for i in range(n)]
    emb = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    for lo in range(0, n, per_shard):
        write_shard(folder / shard_name(keys[lo : lo + per_shard]), keys[lo : lo + per_shard], emb[lo : lo + per_shard])
    return keys, emb


def test_shard_carries_count_and_checksum(tmp_path):
    keys, _ = make_store(tmp_path, n=5, per_shard=5)
    (path,) = tmp_path.glob("*.safetensors")
    assert check_shard(path) == keys
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_torn_or_corrupt_shard_is_detected_and_deleted(tmp_path, damage):
    make_store(tmp_path, n=21, per_shard=7)
    victim = sorted(tmp_path.glob("*.safetensors"))[1]
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) - 13]))
    else:  # same length, one tensor byte changed: only the checksum sees it
        data[-5] ^= 0xFF
        victim.write_bytes(bytes(data))
    assert check_shard(victim) is None
    store = ShardStore(tmp_path).scan()
    assert store.dropped == [victim] and not victim.exists()
    assert len(store) == 14 and len(store.shards) == 2


def test_only_shards_a_run_uses_are_checksummed(tmp_path, monkeypatch):
    keys, _ = make_store(tmp_path, n=21, per_shard=7)
    checked: list[Path] = []
    real = store_mod.check_shard
    monkeypatch.setattr(store_mod, "check_shard", lambda p: checked.append(p) or real(p))
    ShardStore(tmp_path).scan(want={"k3"})
    assert len(checked) == 1 and "k3" in real(checked[0])


def _temp_name(final: str, host: str, pid: int) -> str:
    """A writer's temporary as freeret.atomic_files names it: ``.<final>~<host>~<pid>~<random>.tmp``."""
    return f".{final}~{host}~{pid}~0a1b2c3d.tmp"


def test_a_scan_deletes_only_abandoned_temporaries(tmp_path):
    """A live writer's temporary (this host, live PID) is never deleted, however old; a dead writer's is; a
    temporary from another host (PID not checkable) or of the old naming only once older than the age limit."""
    make_store(tmp_path, n=7, per_shard=7)
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        old = time.time() - 25 * 3600
        live = [tmp_path / _temp_name("a.safetensors", host, sleeper.pid), tmp_path / _temp_name("b.safetensors", host, os.getpid())]
        kept = [*live, tmp_path / _temp_name("c.safetensors", "other-host", 1), tmp_path / ".d.safetensors.123.tmp"]
        gone = [tmp_path / _temp_name("e.safetensors", host, dead.pid), tmp_path / _temp_name("f.safetensors", "other-host", 1),
                tmp_path / ".g.safetensors.123.tmp"]
        for path in kept + gone:
            path.write_bytes(b"half")
        for path in [*live, *gone[1:]]:
            os.utime(path, (old, old))  # older than the default 24 h; a live writer's file stays anyway
        store = ShardStore(tmp_path).scan()
        assert len(store) == 7
        assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == sorted(p.name for p in kept)
    finally:
        sleeper.kill()
        sleeper.wait()


WRITER_PAUSED_BEFORE_RENAME = """
import os, sys
from pathlib import Path
import torch
from freeret.retrieve.shards import write_shard
rename = os.replace
def paused(src, dst):
    print("temporary written", flush=True)
    sys.stdin.readline()
    return rename(src, dst)
os.replace = paused
write_shard(Path(sys.argv[1]) / "rank0-late.safetensors", ["late"], torch.ones(1, 8))
"""


def test_a_scan_while_another_process_writes_leaves_its_temporary(tmp_path):
    """The issue's failure: job B starts (scans) while job A is between writing its temporary and renaming it.
    The scan must leave A's temporary alone, so A's rename succeeds and its shard lands whole."""
    make_store(tmp_path, n=7, per_shard=7)
    writer = subprocess.Popen([sys.executable, "-c", WRITER_PAUSED_BEFORE_RENAME, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "temporary written", writer.stderr.read()
        assert len(ShardStore(tmp_path).scan()) == 7  # another job starting now
        _, err = writer.communicate("go\n", timeout=120)
    finally:
        writer.kill()
    assert writer.returncode == 0, err[-2000:]
    assert check_shard(tmp_path / "rank0-late.safetensors") == ["late"] and not list(tmp_path.glob(".*.tmp"))


def test_a_torn_shard_replaced_by_a_writer_after_the_check_is_kept(tmp_path, monkeypatch):
    """Between a scan's checksum verdict and its delete, another job renames a whole shard over the torn one:
    the scan must not delete that whole shard."""
    keys, emb = make_store(tmp_path, n=7, per_shard=7)
    (victim,) = tmp_path.glob("*.safetensors")
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # corrupt: the header reads, the checksum fails
    victim.write_bytes(bytes(data))
    real = store_mod.check_shard

    def check_then_writer_replaces(path):
        verdict = real(path)  # torn
        write_shard(victim, keys, emb)  # meanwhile a writer renames a whole copy into place
        return verdict

    monkeypatch.setattr(store_mod, "check_shard", check_then_writer_replaces)
    store = ShardStore(tmp_path).scan()
    assert victim.exists() and check_shard(victim) == keys and store.dropped == []
    monkeypatch.undo()
    assert len(ShardStore(tmp_path).scan()) == 7 and not list(tmp_path.glob(".*.tmp"))


def test_refresh_indexes_what_other_jobs_wrote_after_the_scan(tmp_path):
    _, emb = make_store(tmp_path, n=14, per_shard=7)
    settled = time.time() - 60
    os.utime(tmp_path, (settled, settled))  # an old folder mtime: an unchanged folder is not listed again
    store = ShardStore(tmp_path).scan()
    assert len(store.refresh()) == 14
    write_shard(tmp_path / shard_name(["new"]), ["new"], emb[:1])  # another job's shard
    assert "new" in store.refresh() and len(store) == 15


def test_a_batch_lock_held_by_a_killed_process_is_released(tmp_path):
    """Work sharing: a batch another live process holds cannot be claimed; SIGKILL that process and it can."""
    from freeret.workshare import BatchClaims

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from freeret.workshare import BatchClaims; "
         "c = BatchClaims(sys.argv[1]); assert c.try_claim('b1'); print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = BatchClaims(tmp_path)
        assert not mine.try_claim("b1") and mine.elsewhere == {"b1"}
        assert mine.try_claim("b2")
        mine.release("b2", done=True)
        assert not (tmp_path / ".locks" / "b2.lock").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert mine.wait("b1", lambda: False) is False  # returns at once: the kernel dropped the dead holder's lock
    assert mine.try_claim("b1")
    mine.release_all()


def test_streamed_scores_equal_in_memory_scores_reading_each_shard_once(tmp_path, monkeypatch):
    keys, emb = make_store(tmp_path)
    rows = [Row(f"r{i}", keys[i], tuple(keys[(i * 3 + j) % 50] for j in range(10 + i % 3))) for i in range(20)]
    store = ShardStore(tmp_path).scan()
    loads: list[int] = []
    real_load = ShardStore.load
    monkeypatch.setattr(ShardStore, "load", lambda self, n: loads.append(n) or real_load(self, n))
    streamed = score_store(rows, store, budget=30)  # tiny budget: several row chunks per shard
    expected = score_rows(rows, dict(zip(keys, emb)))
    assert all(s.shape == e.shape and torch.allclose(s, e, atol=1e-6) for s, e in zip(streamed, expected))
    candidate_loads = loads[-len(store.shards):]
    assert sorted(candidate_loads) == list(range(len(store.shards)))  # one pass over shards, one at a time


def test_streamed_top_k_search_equals_dense(tmp_path):
    keys, emb = make_store(tmp_path)
    scores, found = search_store(emb[:4], ShardStore(tmp_path).scan(), k=5)
    dense = (F.normalize(emb[:4], dim=-1) @ F.normalize(emb, dim=-1).T).topk(5)
    assert torch.allclose(scores, dense.values)
    assert found == [[keys[i] for i in row] for row in dense.indices.tolist()]


def test_shard_names_come_from_keys_so_reruns_never_overwrite():
    assert shard_name(["a", "b"]) == shard_name(["a", "b"]) != shard_name(["a", "c"])
    assert shard_name(["a"], rank=1).startswith("rank1-")


def test_item_cache_key_is_content_not_path(tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    a.write_bytes(b"same"), b.write_bytes(b"same"), c.write_bytes(b"other")
    item = Item.make("query", "text", str(a))
    key = item_cache_key(item, "prompt")
    assert item_cache_key(dataclasses.replace(item, image=str(b)), "prompt") == key  # same bytes elsewhere
    assert item_cache_key(dataclasses.replace(item, image=str(c)), "prompt") != key
    assert item_cache_key(item, "another prompt (prior or chat template)") != key
    assert item_cache_key(dataclasses.replace(item, role="target"), "prompt") != key
    frames = tmp_path / "clip"  # a video as a folder of frames (MMEB-V2)
    frames.mkdir()
    (frames / "0.png").write_bytes(b"f0")
    clip = item_cache_key(dataclasses.replace(item, image=str(frames)), "prompt")
    (frames / "1.png").write_bytes(b"f1")
    assert item_cache_key(dataclasses.replace(item, image=str(frames)), "prompt") != clip


def test_store_dir_is_per_signature(tmp_path):
    sig = {"model": {"name": "m", "revision": "r1", "dtype": "float32"}, "layer": {"point": "attn", "index": 3}}
    changed = [{**sig, "model": {**sig["model"], k: v}} for k, v in (("revision", "r2"), ("dtype", "bfloat16"))]
    changed.append({**sig, "layer": {"point": "mlp", "index": 3}})
    ids = {signature_id(s) for s in [sig, *changed]}
    assert len(ids) == 4
    shared = store_dir({"cache": True, "cache_dir": str(tmp_path / "c")}, tmp_path / "run", "ds", sig)
    assert shared == tmp_path / "c" / signature_id(sig)
    assert json.loads((shared / "signature.json").read_text()) == sig
    local = store_dir({"cache": False}, tmp_path / "run", "ds", sig)
    assert local == tmp_path / "run" / "embeddings" / "ds" / signature_id(sig)


def test_signature_tracks_model_layer_dtype_and_versions(monkeypatch):
    from freeret.backbone import ModelSpec, load_backbone
    from freeret.embed.layers import LayerSpec
    from freeret.signatures import vector_signature

    bb = load_backbone(ModelSpec.from_dict({"name": "tiny_qwen2vl", "family": "qwen2_vl", "source": "tiny"}))
    base = vector_signature(bb, LayerSpec("attn", -1))
    assert vector_signature(bb, LayerSpec("attn", -1)) == base
    assert signature_id(vector_signature(bb, LayerSpec("mlp", -1))) != signature_id(base)
    monkeypatch.setattr("freeret.signatures.installed_version", lambda name: "0.0-other")
    assert signature_id(vector_signature(bb, LayerSpec("attn", -1))) != signature_id(base)
    monkeypatch.undo()
    monkeypatch.setattr("freeret.signatures.code_fingerprint", lambda: "edited-capture-code")
    assert signature_id(vector_signature(bb, LayerSpec("attn", -1))) != signature_id(base)
    for key in ("revision", "dtype", "min_pixels", "max_pixels", "hf_id"):
        assert key in base["model"]


def test_scan_can_index_only_the_keys_a_run_needs(tmp_path):
    keys, emb = make_store(tmp_path, n=21, per_shard=7)
    store = ShardStore(tmp_path).scan(want={"k3", "k15", "absent"})
    assert set(store.index) == {"k3", "k15"} and len(store.shards) == 3
    assert torch.equal(store.gather(["k15", "k3"]), emb[[15, 3]])
    assert sorted(tuple(s.keys) for s in store.shards) == sorted(tuple(keys[lo : lo + 7]) for lo in (0, 7, 14))


def test_resume_plans_the_same_batches_minus_finished_ones():
    """Batches are planned over all items, so a resumed batch has the same members (and padding) as before."""
    from freeret.lit import pending_batches

    items = [Item.make("target" if i % 3 else "query", "x" * (i % 7 + 1), None) for i in range(40)]
    full = pending_batches(items, 4)
    done = {items[i].key for b in full[:3] for i in b} | {items[full[5][0]].key}  # 3 whole batches, 1 partly
    resumed = pending_batches(items, 4, done)
    assert resumed == full[3:] and full[5] in resumed


def test_work_sharing_falls_back_to_plain_computing_when_locks_cannot_be_taken(tmp_path, monkeypatch, caplog):
    """Lock files another user owns (or filelock < 4 on a filesystem without flock): warn once, compute anyway."""
    from filelock import FileLock

    from freeret.workshare import BatchClaims

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FileLock, "acquire", refuse)
    claims = BatchClaims(tmp_path)
    assert claims.try_claim("b1") and claims.try_claim("b2") and claims.unlocked and not claims.held
    assert claims.wait("b1", lambda: True)
    assert caplog.text.count("computing without work sharing") == 1
