"""Clean stops on SIGTERM and SIGINT (SLURM preemption, ``scancel``, Ctrl-C).

While a prediction loop runs (inside :func:`finishing_batch`), the first signal only asks the loop to stop: the
batch in flight finishes, the writer saves every finished batch as whole shards, and the run then raises
:class:`~freeret.errors.Interrupted` (one line, exit code 128 + signal). Outside a loop, or on a second signal,
it raises at once: written shards stay whole because every write is atomic (:mod:`freeret.atomic_files`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from freeret.errors import Interrupted

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
    signum: int | None = None  # the signal that asked for a stop
    loops: int = 0  # prediction loops running (nested calls count)


def _handler(signum: int, frame: object) -> None:
    first = _State.signum is None
    _State.signum = signum
    if _State.loops and first:
        log.warning("%s: finishing the batch in flight and saving finished shards, then stopping "
                    "(send it again to stop at once)", signal.Signals(signum).name)
        return
    raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGTERM and SIGINT stop the run cleanly while inside; the previous handlers are restored after.

    Signal handlers can only be set from the main thread: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _State.signum = None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _State.signum = None


@contextmanager
def finishing_batch() -> Iterator[None]:
    """Mark a prediction loop: a first signal inside only sets :func:`requested` (the loop's sampler stops)."""
    _State.loops += 1
    try:
        yield
    finally:
        _State.loops -= 1


def requested() -> bool:
    """True once a stop signal has arrived."""
    return _State.signum is not None


def check() -> None:
    """Raise :class:`Interrupted` if a stop signal has arrived (call it after a loop's work is saved)."""
    if _State.signum is not None:
        raise Interrupted(_State.signum)
