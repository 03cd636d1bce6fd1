"""Every error lazyflow raises on purpose, for all layers (imports nothing).

``LazyflowError`` is input that lazyflow refuses, with the reason; the command line prints it as one
line on stderr and exits 2, and any other exception is a bug and keeps its traceback."""

__all__ = ["LazyflowError", "SpecError", "ExpressionError", "SamplingError"]


class LazyflowError(ValueError):
    """Input that lazyflow refuses, with the reason (``lazyflow.derive`` and ``lazyflow.runtime`` alike)."""


class SpecError(LazyflowError):
    """A schedule specification, expression or request that the derivation engine refuses, with the reason."""


class ExpressionError(SpecError):
    """A user expression that cannot be accepted (syntax, unknown symbol or function, ...)."""


class SamplingError(LazyflowError, RuntimeError):
    """A sampling run that cannot go on or would return non-finite samples; the message names the step and time."""
