"""Errors of the runtime (PyTorch side); ``LazyflowError`` is the base shared with ``lazyflow.derive``."""
from ..errors import LazyflowError

__all__ = ["LazyflowError", "SamplingError"]


class SamplingError(LazyflowError, RuntimeError):
    """A sampling run that cannot go on or would return non-finite samples; the message names the step and time."""
