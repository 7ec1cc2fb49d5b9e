"""Which process this is in a multi-process (DDP) run, and a barrier; one process (rank 0) reports.

Every rank runs the same program: each embeds and reranks its share inside Lightning's predict, the shards
on disk are the hand-over, and only rank 0 writes results. Before the first predict has joined the process
group, a rank is read from the launcher's environment (Lightning sets LOCAL_RANK/NODE_RANK in its children).
A run ends with :func:`end_run`, so that the next run in the same process (the next job of a ``-m`` sweep)
starts and joins its own ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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


LAUNCH_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch_state() -> dict[str, str | None]:
    """The launcher's environment variables as they are now; take it before a run, give it to :func:`end_run`."""
    return {name: os.environ.get(name) for name in LAUNCH_VARIABLES}


def end_run(before: Mapping[str, str | None]) -> None:
    """After a run: every rank is done, the process group is closed, and the launcher's variables are as they were
    ``before`` it (Lightning's launcher sets them in the process that starts the ranks). Without this, the next job
    of a sweep in this process would find LOCAL_RANK set, start no ranks, and wait for the last job's."""
    if _initialised():
        barrier()
        dist.destroy_process_group()
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
