"""Work sharing between jobs that embed into one store at once: a file lock per planned batch.

A job claims a batch by taking its lock without waiting (``filelock``: ``flock``, or its soft fallback where a
filesystem has no ``flock``); a batch that another live job holds is skipped and looked at again after the loop.
The lock is held until the batch's vectors are in a written shard. The kernel releases a lock when its holder
exits or is killed, so a dead job's batch goes to whoever waits for it next; nothing needs breaking by hand.
Once its shard is written a batch's lock file is removed: whoever takes a lock re-reads the store before
computing, so a removed (or recreated) lock file never gets a finished batch computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)
LOCK_DIR = ".locks"


def batch_id(keys: Sequence[str]) -> str:
    """A planned batch's name, from its item keys in order: the same in every job that plans the same batch."""
    return hashlib.sha1(json.dumps(list(keys)).encode()).hexdigest()[:20]


class BatchClaims:
    """This process's claims on the batches of one store (``<store>/.locks/<batch id>.lock``)."""

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder) / LOCK_DIR
        self.held: dict[str, FileLock] = {}
        self.elsewhere: set[str] = set()  # batches found held by another job at least once
        self.unlocked = False  # the lock files cannot be used (permissions): compute without sharing

    def _lock(self, bid: str) -> FileLock:
        return FileLock(str(self.dir / f"{bid}.lock"), thread_local=False)

    def try_claim(self, bid: str) -> bool:
        """Take ``bid``'s lock if no live process holds it (never waits)."""
        if self.unlocked:
            return True
        lock = self._lock(bid)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.elsewhere.add(bid)
            return False
        except (OSError, NotImplementedError) as exc:  # permissions; filelock < 4 on a filesystem without flock
            log.warning("cannot lock batches in %s (%s): computing without work sharing", self.dir, exc)
            self.unlocked = True
            return True
        self.held[bid] = lock
        return True

    def release(self, bid: str, done: bool) -> None:
        """Release a claim; ``done`` (its vectors are in a written shard) also removes the lock file."""
        lock = self.held.pop(bid, None)
        if lock is None:
            return
        try:
            if done:
                Path(lock.lock_file).unlink(missing_ok=True)
        finally:
            lock.release()

    def release_all(self) -> None:
        """Give up every claim still held (the loop ended early: those batches stay pending for anyone)."""
        for bid in list(self.held):
            self.release(bid, done=False)

    def wait(self, bid: str, done: Callable[[], bool]) -> bool:
        """Block until no live process holds ``bid`` (its holder wrote it, stopped, or died); return ``done()``
        as seen under the lock. Nothing is held afterwards, so two waiting jobs never wait on each other."""
        if self.unlocked:
            return done()
        lock = self._lock(bid)
        lock.acquire(timeout=-1, poll_interval=0.2)
        self.held[bid] = lock
        finished = done()
        self.release(bid, done=finished)
        return finished
