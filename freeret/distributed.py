"""Which process this is in a multi-process (DDP) run, and a barrier; one process (rank 0) reports.

Every rank runs the same program: each embeds and reranks its share inside Lightning's predict, the shards
on disk are the hand-over, and only rank 0 writes results. Before the first predict has joined the process
group, a rank is read from the launcher's environment (Lightning sets LOCAL_RANK/NODE_RANK in its children).
"""

from __future__ import annotations

import os

import torch.distributed as dist


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    if _initialised():
        return dist.get_rank()
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0)) * int(os.environ.get("LOCAL_WORLD_SIZE", 1)) + int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on the process that writes results and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group): shards written before, read after."""
    if _initialised() and dist.get_world_size() > 1:
        dist.barrier()
