"""A wall-clock limit for SymPy calls that can run away (solve, dsolve, integrate)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["TimeLimit", "time_limit"]


class TimeLimit(Exception):
    """Raised inside a :func:`time_limit` block that ran past its limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimit` after ``seconds`` (main thread on POSIX; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001
        raise TimeLimit(f"gave up after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
