"""Build the WordNet meta-task benchmark (5 sets, gzip JSONL) from WordNet 3.0.

    python scripts/build_wordnet_tasks.py               # test split: data/wordnet_tasks/<task>.jsonl.gz
    python scripts/build_wordnet_tasks.py --split dev   # dev split:  data/wordnet_tasks/<task>_dev.jsonl.gz

The dev split excludes every synset, query and positive of the shipped test sets (freeret/data/wordnet_splits.py).
Byte-reproducible like build_wordnet_rd.py (sorted keys, gzip mtime=0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from freeret.data.wordnet_splits import (
    SEED,
    SPLITS,
    TASK_QUERIES,
    build_split_task,
    data_file,
)
from freeret.data.wordnet_tasks import BUILDERS
from freeret.paths import repo_root
from scripts.build_wordnet_rd import write_jsonl_gz


def main(argv: list[str] | None = None) -> None:
    """Write every task's rows and print count and sha256 per file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=SPLITS, default="test", help="test (shipped) or dev (disjoint from test)")
    parser.add_argument("--n", type=int, default=TASK_QUERIES, help="queries per task")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=Path("data/wordnet_tasks"))
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else repo_root() / args.out
    for task in BUILDERS:
        rows = build_split_task(task, args.split, args.n, args.seed)
        path = out / data_file(task, args.split)
        sha = write_jsonl_gz(rows, path)
        print(f"{task}: {len(rows)} rows x {len(rows[0]['tgt_text'])} candidates  {path.stat().st_size} bytes  sha256 {sha}")


if __name__ == "__main__":
    main()
