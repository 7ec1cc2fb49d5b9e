"""Results JSON -> paper-style Markdown and CSV tables, published numbers side by side.

    python experiments/make_tables.py multirun/2026-11-23/10-00-00            # print Markdown, write tables/
    python experiments/make_tables.py RUN_DIR --paper data/paper/freeret.yaml --out RUN_DIR/tables
    python experiments/make_tables.py DEV_SWEEP_DIR TEST_RUN_DIR     # + a leaderboard, dev and test side by side

Rows are settings (model, layer, pooling, prior, retriever, post-processing, pipeline, framing, top-K); columns the meta-task means
(Classification / VQA / Retrieval / Grounding, or the WordNet meta-tasks), IND / OOD and Overall, hit@1 in %.
Every table says its split; the leaderboard ranks all settings by their dev scores with test beside them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from freeret.atomic_files import write_text_atomic
from freeret.errors import FreeRetError
from freeret.eval.tables import (
    build_tables,
    leaderboard,
    leaderboard_markdown,
    load_paper,
    load_results,
    per_dataset_csv,
    to_csv,
    to_markdown,
)
from freeret.paths import repo_root


def main(argv: list[str] | None = None) -> int:
    """Print the tables and write <out>/<benchmark>.md, .csv and _datasets.csv."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="+", help="run or multirun folders holding results/*.json")
    parser.add_argument("--paper", type=Path, nargs="*", default=[repo_root() / "data/paper/freeret.yaml"],
                        help="YAML files of published numbers")
    parser.add_argument("--out", type=Path, default=None, help="where to write tables (default RUN_DIR/tables)")
    parser.add_argument("--stage", default="final", choices=["final", "embed", "rerank"],
                        help="which stage's scores (final = after reranking when there is a rerank)")
    parser.add_argument("--metric", default=None, help="a metric other than each dataset's main score, e.g. hit@10")
    args = parser.parse_args(argv)
    try:
        payloads = [p for run_dir in args.run_dir for p in load_results(run_dir)]
        tables = build_tables(payloads, args.stage, args.metric)
    except FreeRetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paper = load_paper(args.paper)
    suffix = "" if (args.stage, args.metric) == ("final", None) else f"_{args.stage}" + (f"_{args.metric}" if args.metric else "")
    out = args.out or args.run_dir[0] / f"tables{suffix}"
    board = leaderboard_markdown(*leaderboard(payloads, args.stage, args.metric))
    print(board)
    write_text_atomic(out / "leaderboard.md", board)
    for table in tables:
        md = to_markdown(table, paper.get(table.benchmark))
        if suffix:
            md = md.replace("\n\n", f"\n\nScores: stage {args.stage}, {args.metric or 'main score'} (%).\n\n", 1)
        print(md)
        write_text_atomic(out / f"{table.benchmark}.md", md)
        write_text_atomic(out / f"{table.benchmark}.csv", to_csv(table, paper.get(table.benchmark)))
        write_text_atomic(out / f"{table.benchmark}_datasets.csv", per_dataset_csv(table))
    print(f"tables written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
