"""Build the WordNet noun reverse-dictionary set (definition -> word) as gzip JSONL.

    python scripts/build_wordnet_rd.py                # test split: data/wordnet_rd/wordnet_rd.jsonl.gz
    python scripts/build_wordnet_rd.py --split dev    # dev split:  data/wordnet_rd/wordnet_rd_dev.jsonl.gz

The dev split excludes every synset, query and positive of the shipped test sets (freeret/data/wordnet_splits.py).
Output bytes are reproducible: JSON with sorted keys, gzip header with mtime=0 and no name.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import time
from pathlib import Path

from freeret.data.wordnet_splits import RD_QUERIES, SEED, SPLITS, build_rd, data_file
from freeret.paths import repo_root


def write_jsonl_gz(rows: list[dict], path: Path) -> str:
    """Write rows as deterministic gzip JSONL; return the file's sha256."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the rows, write them and print count, size and sha256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=SPLITS, default="test", help="test (shipped) or dev (disjoint from test)")
    parser.add_argument("--n-queries", type=int, default=RD_QUERIES, help="queries = candidate pool size")
    parser.add_argument("--seed", type=int, default=SEED, help="selection and candidate-order seed")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (default data/wordnet_rd/<split's file>); relative paths are under the "
                             "repository root")
    args = parser.parse_args(argv)
    out = args.out or Path("data/wordnet_rd") / data_file("wordnet_rd", args.split)
    out = out if out.is_absolute() else repo_root() / out

    start = time.perf_counter()
    rows = build_rd(args.split, args.n_queries, args.seed)
    sha = write_jsonl_gz(rows, out)
    print(f"rows: {len(rows)}  candidates/row: {len(rows[0]['tgt_text'])}")
    print(f"file: {out}  ({out.stat().st_size} bytes, {time.perf_counter() - start:.1f} s)")
    print(f"sha256: {sha}")


if __name__ == "__main__":
    main()
