"""The one base of every refusal of user input, shared by every layer (imports nothing)."""

__all__ = ["LazyflowError"]


class LazyflowError(ValueError):
    """Input that lazyflow refuses, with the reason (``lazyflow.derive`` and ``lazyflow.runtime`` alike).

    The command line prints these as one line on stderr and exits 2; any other exception is a bug
    and keeps its traceback."""
