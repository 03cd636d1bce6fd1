"""Errors raised by the derivation engine; each message says what is wrong."""
from ..errors import LazyflowError

__all__ = ["LazyflowError", "SpecError", "ExpressionError"]


class SpecError(LazyflowError):
    """A schedule specification, expression or request that is refused, with the reason."""


class ExpressionError(SpecError):
    """A user expression that cannot be accepted (syntax, unknown symbol or function, ...)."""
