"""Wall-clock limits for SymPy calls that can run away (solve, dsolve, integrate, limit, simplify).

Two mechanisms, one entry point:

- :func:`call_with_time_limit` bounds ``fn(*args, **kwargs)`` from ANY thread.  On the main thread
  of a POSIX process it uses :func:`time_limit` (``SIGALRM``: no copying, the caller's SymPy cache
  is kept).  Elsewhere (a worker thread, a notebook kernel's executor, Windows) signals cannot
  interrupt the call, so it runs in a child process (a fresh interpreter started with
  :mod:`subprocess`, safe with threads, never a fork) that is killed when the limit passes.  ``fn`` must then be picklable (a
  module-level function) and so must its arguments and result (SymPy expressions are).  Child
  processes are kept warm and reused; one that ran past its limit is killed and replaced.
- :func:`time_limit` is the signal-based context manager (main thread only; elsewhere it cannot
  limit anything and does nothing, as before: use :func:`call_with_time_limit` there).

Both raise :class:`TimeLimit` when the limit passes.
"""
from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

__all__ = ["TimeLimit", "time_limit", "call_with_time_limit", "run_in_process", "limits_by_signal",
           "WORKER_START_SECONDS"]

#: how long a fresh child process may take to start (import SymPy) before it counts as failed;
#: not part of the caller's limit
WORKER_START_SECONDS = 120.0
#: idle child processes kept for reuse
_MAX_IDLE_WORKERS = 2


class TimeLimit(BaseException):
    """Raised when a bounded call ran past its limit (or its child process died).

    A :class:`BaseException` (as ``KeyboardInterrupt`` and ``asyncio.CancelledError``), so that the
    ``except Exception`` fallbacks inside SymPy and in validation cannot swallow it and run on
    unbounded; catch it by name."""


def limits_by_signal() -> bool:
    """True where :func:`time_limit` can interrupt a call: the main thread of a POSIX process."""
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


#: after the limit passes, the alarm repeats at this interval until a TimeLimit leaves the guarded block
_REPEAT_SECONDS = 0.05


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimit` after ``seconds`` (main thread on POSIX; elsewhere no limit:
    use :func:`call_with_time_limit`).  Nests: an outer limit that ends sooner still applies, and
    its timer is re-armed with what is left of it on exit.

    A signal handler runs wherever the main thread is, a weakref callback or ``__del__`` included,
    where Python reports the exception as "unraisable" and carries on.  So once expired the alarm
    repeats every _REPEAT_SECONDS until the TimeLimit reaches this block, and a TimeLimit that Python
    could not raise is dropped from ``sys.unraisablehook`` instead of being reported."""
    if not limits_by_signal():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001
        raise TimeLimit(f"gave up after {seconds} s")

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _raise)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable_hook(previous_hook)
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_left) if outer_left > 0 else seconds, _REPEAT_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.unraisablehook = previous_hook
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3), outer_interval)


def _unraisable_hook(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``previous``, except for a TimeLimit (the repeating alarm raises it again where it can)."""
    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, TimeLimit):
            previous(unraisable)
    return hook


def call_with_time_limit(seconds: float, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or :class:`TimeLimit` after ``seconds``, from any thread.

    On the main thread (POSIX) the call runs here under :func:`time_limit`; on any other thread
    it runs in a child process (see :func:`run_in_process`)."""
    if limits_by_signal():
        with time_limit(seconds):
            return fn(*args, **kwargs)
    return run_in_process(seconds, fn, *args, **kwargs)


def run_in_process(seconds: float, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a (reused) child process, killed after ``seconds``.

    Exceptions raised by ``fn`` are re-raised here; the child's own start-up (importing SymPy,
    at most :data:`WORKER_START_SECONDS`) does not count against ``seconds``."""
    worker = _POOL.take()
    try:
        outcome = worker.call(seconds, fn, args, kwargs)
    except BaseException:
        worker.kill()
        raise
    _POOL.give_back(worker)
    kind, value = outcome
    if kind == "error":
        raise value
    return value


# --- the child processes ----------------------------------------------------------------------------
#
# A child is a fresh interpreter started with subprocess (never multiprocessing's spawn, which
# re-imports the parent's __main__: impossible for a script read from stdin, costly for others).
# It receives the parent's sys.path first, then pickled (fn, args, kwargs) requests on stdin, and
# answers pickled ("ok", result) / ("error", exception) on a private copy of its stdout (its fd 1
# is pointed at stderr, so a print in fn cannot corrupt the channel).

_BOOTSTRAP = (
    "import os, pickle, sys\n"
    "channel = os.fdopen(os.dup(1), 'wb'); os.dup2(2, 1)\n"
    "source = sys.stdin.buffer\n"
    "sys.path[:] = pickle.load(source)\n"
    "from lazyflow.derive.limits import _serve\n"
    "_serve(source, channel)\n"
)


def _serve(source, channel) -> None:
    """Child process loop: receive (fn, args, kwargs), send ("ok", result) or ("error", exception)."""
    import pickle

    import sympy  # noqa: F401 - warm the import before saying ready

    def send(reply) -> None:
        pickle.dump(reply, channel, protocol=pickle.HIGHEST_PROTOCOL)
        channel.flush()

    send(("ready", None))
    while True:
        try:
            message = pickle.load(source)
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            fn, args, kwargs = message
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the caller
            reply = ("error", err)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - an unpicklable result or exception
            data = pickle.dumps(("error", TypeError(f"the bounded call's {reply[0]} value cannot be sent back "
                                                    f"({type(err).__name__}: {err}): {reply[1]!r}"[:2000])))
        channel.write(data)
        channel.flush()


class _Worker:
    def __init__(self) -> None:
        import queue
        import subprocess
        import sys

        self.replies: queue.Queue = queue.Queue()
        self.process = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, bufsize=0)
        threading.Thread(target=self._read, name="lazyflow-time-limit-reader", daemon=True).start()
        try:
            self._send(list(sys.path))
            kind, value = self._receive(WORKER_START_SECONDS, "start")
        except TimeLimit:
            self.kill()
            raise
        if kind != "ready":
            self.kill()
            raise TimeLimit(f"the child process for a bounded call failed to start ({value!r})")

    def _read(self) -> None:
        import pickle

        stream = self.process.stdout
        while True:
            try:
                self.replies.put(pickle.load(stream))
            except Exception as err:  # noqa: BLE001 - EOF (the child ended) or a broken stream
                self.replies.put(("ended", err))
                return

    def _send(self, message: Any) -> None:
        import pickle

        try:
            self.process.stdin.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise TimeLimit(f"the child process for a bounded call is gone ({err})") from None

    def _receive(self, seconds: float, what: str) -> tuple[str, Any]:
        import queue

        try:
            kind, value = self.replies.get(timeout=seconds)
        except queue.Empty:
            self.kill()
            if what == "start":
                raise TimeLimit(f"the child process for a bounded call did not start within {seconds} s") from None
            raise TimeLimit(f"gave up after {seconds} s") from None
        if kind == "ended":
            code = self.process.poll()
            self.kill()
            raise TimeLimit(f"the child process running the bounded call ended (exit code {code})")
        return kind, value

    def call(self, seconds: float, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[str, Any]:
        self._send((fn, args, kwargs))
        return self._receive(seconds, "call")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.process.kill()
        with contextlib.suppress(Exception):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(Exception):
                stream.close()


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def take(self) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive():
                    return worker
                worker.kill()
        return _Worker()

    def give_back(self, worker: _Worker) -> None:
        with self.lock:
            if len(self.idle) < _MAX_IDLE_WORKERS and worker.alive():
                self.idle.append(worker)
                return
        worker.kill()

    def close(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for worker in workers:
            worker.kill()


_POOL = _Pool()
atexit.register(_POOL.close)
