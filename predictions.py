"""What a network may predict: the one list that the formulas, the generated kernels (their ``PREDICTIONS``
constant is written from it), the exact models and the command line read.  Imports nothing heavy, so the
command line's parsers read it without SymPy or torch."""
from __future__ import annotations

from .errors import LazyflowError

__all__ = ["PREDICTIONS", "SILENT_AT_SNR_0", "check_prediction"]

#: velocity (alpha' eta_Z + beta' eta_X), x (eta_X), noise (eta_Z), score (-eta_Z / alpha): derive/MATH.md
PREDICTIONS = ("velocity", "x", "noise", "score")
#: the predictions that say nothing at snr = 0 (there I = alpha Z, so eta_X cannot be read from them): a run of such a
#: model starts after t = 0
SILENT_AT_SNR_0 = ("noise", "score")


def check_prediction(prediction: str, *, known: tuple[str, ...] = PREDICTIONS,
                     error: type[LazyflowError] = LazyflowError) -> str:
    """``prediction`` if it is one of ``known``, else ``error`` naming the choices in one line."""
    if prediction not in known:
        raise error(f"unknown prediction {prediction!r}; choose one of {', '.join(known)}")
    return prediction
