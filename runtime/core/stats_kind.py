"""Which form of the data's covariance to estimate from n samples of a shape (``DataStats`` ``kind="auto"``).

:func:`choose_kind` (data_shape, n) -> (kind, rank):

1. ``full`` when d <= :data:`FULL_LIMIT` and n >= :data:`FULL_SAMPLES_PER_ELEMENT` * d (never when n < d: the
   sample covariance is then singular and its floored null space is noise);
2. image-shaped data -> ``dct``: a packed latent (S, K) (``packed``), or data of 2 or more axes whose last
   two (the plane) are both at least :data:`DCT_MIN_SIDE`;
3. else ``lowrank`` at rank min(:data:`LOWRANK_RANK`, n // :data:`LOWRANK_SAMPLES_PER_RANK`) where that is
   at least 1 and d > that rank;
4. else ``diag``.

The thresholds come from a measurement (docs/data-frames.md, "Choosing the kind"):
``python -m lazyflow.runtime.evaluation.kind_choice --quick`` samples exact random mixtures
(``gmm:SEED,dim=D``) at d = 64, 1024, 4096 with n = 500, 1000, 4000 statistics samples and reports each
kind's path at 4 NFE (linear/data-multistep-pc).
"""
from __future__ import annotations

import math
from typing import Sequence

from ...errors import LazyflowError

__all__ = ["choose_kind", "FULL_LIMIT", "FULL_SAMPLES_PER_ELEMENT", "DCT_MIN_SIDE", "LOWRANK_RANK",
           "LOWRANK_SAMPLES_PER_RANK"]

#: the most elements a full covariance is estimated for (d^2 entries, an eigendecomposition of d x d)
FULL_LIMIT = 8192
#: ``full`` needs at least this many samples per element
FULL_SAMPLES_PER_ELEMENT = 2
#: the least side of a plane for ``dct``
DCT_MIN_SIDE = 8
#: the rank ``lowrank`` keeps at most, and the samples it needs per eigenpair
LOWRANK_RANK = 64
LOWRANK_SAMPLES_PER_RANK = 4


def choose_kind(data_shape: Sequence[int], n: int, *, packed: bool = False) -> tuple[str, int | None]:
    """The statistics kind (and lowrank's rank, else None) for ``n`` samples of ``data_shape``; ``packed``:
    the data are packed latents (S, K) on a token grid (the dct kind's packed layout)."""
    shape = tuple(int(v) for v in data_shape)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or not shape or min(shape) < 1:
        raise LazyflowError(f"choosing a statistics kind needs a data shape and n >= 2 samples, got {shape}, {n!r}")
    d = math.prod(shape)
    if d <= FULL_LIMIT and n >= FULL_SAMPLES_PER_ELEMENT * d:
        return "full", None
    if packed or (len(shape) >= 2 and min(shape[-2:]) >= DCT_MIN_SIDE):
        return "dct", None
    rank = min(LOWRANK_RANK, n // LOWRANK_SAMPLES_PER_RANK, d - 1)
    if rank >= 1:
        return "lowrank", rank
    return "diag", None
