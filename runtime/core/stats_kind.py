"""Which form of the data's covariance to estimate from n samples of a shape (``DataStats`` ``kind="auto"``).

:func:`choose_kind` (data_shape, n) -> (kind, rank):

1. ``full`` when d <= :data:`FULL_LIMIT` and n >= :data:`FULL_SAMPLES_PER_ELEMENT` * d (so never when n < d:
   the sample covariance is then singular and its floored null space is noise);
2. image-shaped data -> ``dct``: a packed latent (S, K) (``packed``), or data of 2 or more axes whose last
   two (the plane) are both at least :data:`DCT_MIN_SIDE`;
3. else ``diag``.  ``lowrank`` is never chosen: it helps on some data and loses badly on other (below).

The thresholds come from a measurement (docs/data-frames.md, "Choosing the kind"), path at 4 NFE on the
uniform grid against each model's converged 800-step solution, 32 samples, statistics from n exact draws::

    python -m lazyflow.runtime.evaluation.kind_choice --quick                       # gmm:2601,dim=64/1024/4096
    python -m lazyflow.runtime.evaluation.kind_choice --quick --dims 32,64 --ns 500,4000 --seed 101 \
        --integrator data-multistep                                                 # and data-multistep-pc
    python -m lazyflow.runtime.evaluation.kind_choice --quick --digits              # the digits flow, 1x8x8

``full`` won on the digits (0.414 against diag's 0.450 at n = 300 = 4.7 d) and on gmm:101 at n = 7.8 d and
62 d (d = 64) and 125 d (d = 32) with data-multistep, but lost at n = 15.6 d (gmm:101, d = 32: 0.439 against
0.270), at every n up to 62 d on gmm:2601 (d = 64, data-multistep-pc: 1.98 against 1.22), by far more than
it won, and on gmm:101 with data-multistep-pc even at 125 d (0.516 against 0.464): hence 100 samples per
element, not a sure win even then.  ``lowrank`` lost to ``diag`` by 1.7-2.5x at every rank (16, 64, 256)
and n on gmm:2601 (d = 1024, 4096) and won by up to 21% on gmm:101 and 7% on the digits.  ``dct`` was within
8% of ``diag`` on the flat mixtures seen as one plane, and lost to it on the 8 x 8 digits (0.536 against 0.450:
centred digits are far from stationary), hence planes of 16 and more; it is chosen for larger images and
latents because their covariance is close to stationary, which none of these measurements tests.
"""
from __future__ import annotations

import math
from typing import Sequence

from ...errors import LazyflowError

__all__ = ["choose_kind", "image_shaped", "FULL_LIMIT", "FULL_SAMPLES_PER_ELEMENT", "DCT_MIN_SIDE"]

#: the most elements a full covariance is estimated for (d^2 entries, an eigendecomposition of d x d)
FULL_LIMIT = 8192
#: ``full`` needs at least this many samples per element
FULL_SAMPLES_PER_ELEMENT = 100
#: the least side of a plane for ``dct`` (on the 8 x 8 digits it lost to diag)
DCT_MIN_SIDE = 16


def choose_kind(data_shape: Sequence[int], n: int, *, packed: bool = False) -> tuple[str, int | None]:
    """The statistics kind and its rank (None: the rule never picks lowrank, the only kind with one) for ``n``
    samples of ``data_shape``; ``packed``: the data are packed latents (S, K) on a token grid (dct's layout)."""
    shape = tuple(int(v) for v in data_shape)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or not shape or min(shape) < 1:
        raise LazyflowError(f"choosing a statistics kind needs a data shape and n >= 2 samples, got {shape}, {n!r}")
    d = math.prod(shape)
    if d <= FULL_LIMIT and n >= FULL_SAMPLES_PER_ELEMENT * d:
        return "full", None
    if packed or image_shaped(shape):
        return "dct", None
    return "diag", None


def image_shaped(data_shape: Sequence[int]) -> bool:
    """Data of 2 or more axes whose last two (the plane) are both at least :data:`DCT_MIN_SIDE`: ``dct``'s own."""
    shape = tuple(int(v) for v in data_shape)
    return len(shape) >= 2 and min(shape[-2:]) >= DCT_MIN_SIDE
