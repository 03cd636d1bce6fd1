"""Sample quality: Fréchet distance in the features of the shipped digits classifier."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..models import data
from ...errors import LazyflowError
from ..models.embedded import load_classifier

__all__ = ["frechet_distance", "digits_fd", "feature_stats", "split_floor", "bootstrap_floor"]


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via symmetric eigendecompositions."""
    w, V = np.linalg.eigh(cov1)
    root1 = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    middle = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def feature_stats(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the classifier features of ``images`` (n, 1, 8, 8)."""
    with torch.no_grad():
        feats = _classifier()(images.float().reshape(len(images), -1)).double().numpy()
    return feats.mean(0), np.cov(feats, rowvar=False)


@lru_cache(maxsize=1)
def _classifier():
    return load_classifier().features


@lru_cache(maxsize=1)
def _dataset_stats() -> tuple[np.ndarray, np.ndarray]:
    return feature_stats(data.digits())


def digits_fd(samples: torch.Tensor) -> float:
    """Fréchet distance of ``samples`` to the whole digits dataset; NaN/inf samples are refused."""
    if not torch.isfinite(samples).all():
        raise LazyflowError("samples contain NaN or inf")
    return frechet_distance(*feature_stats(samples.reshape(len(samples), 1, 8, 8)), *_dataset_stats())


def split_floor(seed: int = 0) -> float:
    """FD between two random halves of the dataset: the noise floor of the measure at ~900 samples."""
    images = data.digits()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    half = len(images) // 2
    return frechet_distance(*feature_stats(images[order[:half]]), *feature_stats(images[order[half:]]))


def bootstrap_floor(n: int, seed: int = 0) -> float:
    """FD of n images drawn with replacement from the dataset itself: what a perfect sampler scores at
    this sample size (the finite-sample bias of the measure)."""
    images = data.digits()
    index = torch.randint(len(images), (n,), generator=torch.Generator().manual_seed(seed))
    return digits_fd(images[index])
