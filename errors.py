"""Every error lazyflow raises on purpose, for all layers (imports nothing of lazyflow), and the exit status a
refusal gives a measurement module's entry point (:func:`exit_status`).

``LazyflowError`` is input that lazyflow refuses, with the reason; the command line prints it as one
line on stderr and exits 2, and any other exception is a bug and keeps its traceback."""

import sys
from typing import Any, Callable

__all__ = ["LazyflowError", "SpecError", "ExpressionError", "SamplingError", "exit_status"]


class LazyflowError(ValueError):
    """Input that lazyflow refuses, with the reason (``lazyflow.derive`` and ``lazyflow.runtime`` alike)."""


class SpecError(LazyflowError):
    """A schedule specification, expression or request that the derivation engine refuses, with the reason."""


class ExpressionError(SpecError):
    """A user expression that cannot be accepted (syntax, unknown symbol or function, ...)."""


class SamplingError(LazyflowError, RuntimeError):
    """A sampling run that cannot go on or would return non-finite samples; the message names the step and time."""


def exit_status(run: Callable[[], Any], prog: str) -> int:
    """0 after ``run()``; refused input (:class:`LazyflowError`) one line ``prog: error: ...`` on stderr and 2 (the
    measurement modules' ``python -m`` entry points; ``lazyflow`` itself has its own, with more cases)."""
    try:
        run()
    except LazyflowError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
