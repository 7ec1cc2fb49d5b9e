"""What every entry point does with a user-facing error: one line on stderr, exit code 2 (``debug`` re-raises)."""

from __future__ import annotations

import sys
from typing import Callable, TypeVar

from freeret.errors import FreeRetError

T = TypeVar("T")


def one_line_errors(call: Callable[[], T], debug: bool = False) -> T:
    """Return ``call()``; on a FreeRetError print ``error: <message>`` and exit 2, unless ``debug``."""
    try:
        return call()
    except FreeRetError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
