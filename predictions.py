"""What a network may predict: the one list that the formulas, the generated kernels (their ``PREDICTIONS``
constant is written from it), the exact models and the command line read.  Imports nothing heavy, so the
command line's parsers read it without SymPy or torch."""
from __future__ import annotations

from .errors import LazyflowError

__all__ = ["PREDICTIONS", "check_prediction"]

#: velocity (alpha' eta_Z + beta' eta_X), x (eta_X), noise (eta_Z), score (-eta_Z / alpha): derive/MATH.md
PREDICTIONS = ("velocity", "x", "noise", "score")


def check_prediction(prediction: str, *, known: tuple[str, ...] = PREDICTIONS,
                     error: type[LazyflowError] = LazyflowError) -> str:
    """``prediction`` if it is one of ``known``, else ``error`` naming the choices in one line."""
    if prediction not in known:
        raise error(f"unknown prediction {prediction!r}; choose one of {', '.join(known)}")
    return prediction
