"""Build the held-out few-shot demonstrations for the WordNet sets (JSON, one list per dataset).

    python scripts/build_wordnet_fewshot.py   # data/wordnet_fewshot/demos.json

Each dataset gets --k (item text, one-word answer) pairs from synsets disjoint from every dev and test set
(freeret/data/wordnet_splits.py). Byte-reproducible: sorted keys, fixed indentation, ASCII escapes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from freeret.data.wordnet_splits import DEMOS, SEED, fewshot_demos
from freeret.paths import repo_root


def write_json(data: dict, path: Path) -> str:
    """Write ``data`` as deterministic JSON; return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((json.dumps(data, sort_keys=True, indent=1) + "\n").encode("ascii"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    """Write the demonstrations and print their counts and the file's sha256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=DEMOS, help="demonstrations per dataset")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=Path("data/wordnet_fewshot/demos.json"))
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else repo_root() / args.out
    demos = fewshot_demos(args.k, args.seed)
    sha = write_json(demos, out)
    print("  ".join(f"{name}: {len(pairs)}" for name, pairs in demos.items()))
    print(f"file: {out}  ({out.stat().st_size} bytes)  sha256: {sha}")


if __name__ == "__main__":
    main()
