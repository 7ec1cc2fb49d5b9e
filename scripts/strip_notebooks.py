"""Clear outputs and execution counts of notebooks before committing (tests fail on committed outputs).

    python scripts/strip_notebooks.py notebooks/*.ipynb
"""

from __future__ import annotations

import sys

from freeret.cli import one_line_errors
from freeret.optional import require


def strip(path: str) -> bool:
    """Strip one notebook in place; True if it changed."""
    nbformat = require("nbformat", "scripts/strip_notebooks.py")
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    nb.metadata.pop("widgets", None)
    if changed:
        nbformat.write(nb, path)
    return changed


def main(paths: list[str]) -> None:
    """Strip each notebook and say whether it changed; a missing nbformat is one line before any is read."""
    one_line_errors(lambda: require("nbformat", "scripts/strip_notebooks.py"))
    for path in paths:
        print(f"{'stripped' if strip(path) else 'clean   '} {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
