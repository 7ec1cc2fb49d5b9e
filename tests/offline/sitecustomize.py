"""Blocks network access in Python subprocesses the tests start (``tests/offline`` is put on PYTHONPATH)."""

import os

if os.environ.get("FREERET_NO_NETWORK") == "1":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from netguard import block_network

    sys.path.pop(0)
    block_network()
