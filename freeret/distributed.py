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


def rank_sum(value: int) -> int:
    """``value`` summed over every rank (``value`` itself without a process group); every rank must call it."""
    if not (_initialised() and dist.get_world_size() > 1):
        return value
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())
