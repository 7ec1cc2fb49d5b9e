"""Build the general suite's dev and test sets (definition/description/expansion -> word/name) as gzip JSONL.

    python scripts/build_general.py                                   # every domain, both splits
    python scripts/build_general.py --domain vera --split dev         # one of them
    python scripts/build_general.py --domain debian_pkg --catalogue FILE   # apt-cache dumpavail output saved earlier

Sources: WordNet 3.0 (`wordnet-base`), the dictd packages `dict-gcide`, `dict-foldoc`, `dict-jargon`, `dict-vera`
(/usr/share/dictd) and `apt-cache dumpavail` (rules: freeret/data/general.py; data/general/README.md). Writes
data/general/<domain>/<split>.jsonl.gz (bytes reproducible: sorted keys, gzip mtime=0) and data/general/SHA256SUMS.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from freeret.data.general import DOMAINS, POOL, QUERIES, SEED, SPLITS, _debian, build
from freeret.paths import repo_root
from scripts.build_wordnet_rd import write_jsonl_gz


def write_sums(folder: Path) -> Path:
    """``SHA256SUMS`` (sha256sum format) of every shipped set under ``folder``, sorted by path."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n"
             for p in sorted(folder.glob("*/*.jsonl.gz"))]
    out = folder / "SHA256SUMS"
    out.write_text("".join(lines))
    return out


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the chosen domains' splits, write them and print counts, sizes and sha256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", choices=list(DOMAINS), action="append", help="default: every domain")
    parser.add_argument("--split", choices=SPLITS, action="append", help="default: both")
    parser.add_argument("--catalogue", type=Path, help="debian_pkg: a saved `apt-cache dumpavail` (default: run it)")
    parser.add_argument("--out", type=Path, default=Path("data/general"),
                        help="output folder (relative paths are under the repository root)")
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else repo_root() / args.out
    for domain in args.domain or list(DOMAINS):
        start = time.perf_counter()
        entries = _debian(args.catalogue) if domain == "debian_pkg" else DOMAINS[domain].read()
        for split in args.split or list(SPLITS):
            rows = build(domain, split, QUERIES, POOL, SEED, entries=entries)
            path = out / domain / f"{split}.jsonl.gz"
            sha = write_jsonl_gz(rows, path)
            print(f"{domain}/{split}: {len(rows)} rows x {len(rows[0]['tgt_text'])} candidates, "
                  f"{path.stat().st_size} bytes, sha256 {sha} ({time.perf_counter() - start:.1f} s)")
    print(f"checksums: {write_sums(out)}")


if __name__ == "__main__":
    main()
