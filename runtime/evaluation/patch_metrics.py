"""The ``patches`` model's measure: the Fréchet distance in pixel space (d = 1,024) between samples and
:data:`REFERENCE_COUNT` patches of the held-out region of the photographs (:mod:`..models.image_patches`):

    fd = |mu_s - mu_h|^2 + tr(S_s + S_h - 2 (S_s^1/2 S_h S_s^1/2)^1/2)

over the pixels of the samples (s) and the held-out patches (h).  It compares means and covariances only (the
Gaussian part of the patches); its floors are what fresh held-out patches score.  Needs scikit-image."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ...errors import LazyflowError
from ..models.image_patches import image_patches
from .metrics import frechet_distance

__all__ = ["PatchesScorer", "patches_fd", "REFERENCE_COUNT", "REFERENCE_SEED"]

#: the held-out patches the samples are compared with, and the seed they are drawn from
REFERENCE_COUNT = 4000
REFERENCE_SEED = 10_000


def _pixel_stats(patches: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    flat = patches.reshape(len(patches), -1).double().numpy()
    return flat.mean(0), np.cov(flat, rowvar=False)


@lru_cache(maxsize=1)
def _reference_stats() -> tuple[np.ndarray, np.ndarray]:
    return _pixel_stats(image_patches("held-out", REFERENCE_COUNT, seed=REFERENCE_SEED))


def patches_fd(samples: torch.Tensor) -> float:
    """Pixel Fréchet distance of ``samples`` (n, 1, 32, 32) to the held-out reference patches."""
    if not torch.isfinite(samples).all():
        raise LazyflowError("samples contain NaN or inf")
    return frechet_distance(*_pixel_stats(samples.float().reshape(len(samples), -1)), *_reference_stats())


class PatchesScorer:
    """Pixel FD against held-out patches of the photographs (the ``patches`` model's measure)."""

    metrics = ("fd",)

    def score(self, samples) -> dict[str, float]:
        return {"fd": patches_fd(samples)}

    def floor_fields(self, n: int, seed: int) -> dict[str, float | str]:
        """The FD of two fresh sets of held-out patches of the reference's size, and of n fresh ones."""
        halves = [image_patches("held-out", REFERENCE_COUNT // 2, seed=REFERENCE_SEED + 1 + k) for k in range(2)]
        fresh = image_patches("held-out", n, seed=REFERENCE_SEED + 100 + seed)
        return {"floor_split_fd": frechet_distance(*_pixel_stats(halves[0]), *_pixel_stats(halves[1])),
                "floor_bootstrap_fd": patches_fd(fresh),
                "fd_reference": f"{REFERENCE_COUNT:,} held-out patches of the photographs (pixel FD)"}
