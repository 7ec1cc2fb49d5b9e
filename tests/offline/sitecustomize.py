"""Test support for Python subprocesses the tests start (``tests/offline`` is put on PYTHONPATH):
blocks network access, and with ``FREERET_OPEN_LOG=<file>`` writes every path the process opened to that file."""

import os
import sys

if os.environ.get("FREERET_NO_NETWORK") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from netguard import block_network

    sys.path.pop(0)
    block_network()

if os.environ.get("FREERET_OPEN_LOG"):
    import atexit

    _opened: set = set()

    def _record(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            _opened.add(os.fsdecode(args[0]))

    def _write(path=os.environ["FREERET_OPEN_LOG"]):
        with open(path, "w") as fh:
            fh.write("\n".join(sorted(_opened)) + "\n")

    sys.addaudithook(_record)
    atexit.register(_write)
