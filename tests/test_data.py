"""Dataset readers: MMEB JSONL / gz / parquet, image roots, unique items, slices; the smoke set."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from freeret.data.datamodule import plan_batches
from freeret.data.datasets import load_dataset
from freeret.data.retrieval_set import load_mmeb
from freeret.errors import ConfigError, DataError

ROWS = [
    {"qry_text": "<|image_1|>\nRepresent the given image", "qry_img_path": "img/a.png", "tgt_text": ["cat", "dog", "car"],
     "tgt_img_path": ["", "", ""]},
    {"qry_text": "find the dog", "qry_img_path": "", "tgt_text": ["dog", "cat", "car"], "tgt_img_path": ["", "", ""]},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_unique_items_and_image_paths(tmp_path):
    rset = load_mmeb("t", _write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert len(rset.rows) == 2 and rset.num_candidates == 3  # candidates shared across rows are one item
    q0 = rset.items[rset.rows[0].query]
    assert q0.image == str(tmp_path / "img" / "a.png")
    assert q0.text == "Represent the given image"  # MMEB's phi-3-v image marker is stripped
    assert rset.items[rset.rows[1].candidates[0]].text == "dog"


def test_gz_parquet_and_image_root(tmp_path):
    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    a = load_mmeb("t", gz, image_root=tmp_path / "imgs")
    b = load_mmeb("t", tmp_path / "d.parquet", image_root=tmp_path / "imgs")
    assert a.rows == b.rows
    assert a.items[a.rows[0].query].image == str(tmp_path / "imgs" / "img" / "a.png")


def test_limit_and_positive_pool(tmp_path):
    rset = load_mmeb("t", _write_jsonl(tmp_path / "d.jsonl", ROWS), limit=1)
    assert len(rset.rows) == 1
    pooled = load_mmeb("t", _write_jsonl(tmp_path / "d.jsonl", ROWS), pool="positives")
    texts = [[pooled.items[k].text for k in r.candidates] for r in pooled.rows]
    assert texts == [["cat", "dog"], ["dog", "cat"]]


def test_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mmeb("t", tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(DataError, match="no usable rows.*bad.jsonl:1: not valid JSON"):
        load_mmeb("t", tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="dataset.path"):
        load_dataset({"name": "local", "kind": "mmeb", "path": "???"})


def test_shipped_wordnet_set_and_smoke_set():
    rset = load_dataset({"name": "wordnet_rd", "path": "data/wordnet_rd/wordnet_rd.jsonl.gz"})
    assert len(rset.rows) >= 1000
    assert all(len(r.candidates) == 1000 for r in rset.rows)
    assert rset.num_candidates == 1000  # one shared pool: 2000 unique items to embed
    smoke = load_dataset({"name": "smoke_mm", "kind": "smoke"})
    images = [it.image for it in smoke.items.values() if it.image]
    assert len(set(images)) == 8 and all(os.path.exists(p) for p in images)


def test_batches_are_homogeneous_and_cover_everything():
    smoke = load_dataset({"name": "smoke_mm", "kind": "smoke"})
    items = list(smoke.items.values())
    batches = plan_batches(items, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(items)))
    for b in batches:
        assert len({(items[i].role, items[i].image is not None) for i in b}) == 1
