"""Data the package trains and measures on: scikit-learn's bundled digits, 2D toy sets."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["digits", "digits_labels", "two_moons", "gmm_2d"]


def digits() -> torch.Tensor:
    """The 1,797 digits as a float32 tensor (n, 1, 8, 8) scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)


def digits_labels() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target.astype(np.int64))


def two_moons(n: int, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """Two moons, standardised (float32, (n, 2))."""
    from sklearn.datasets import make_moons

    points, _ = make_moons(n_samples=n, noise=noise, random_state=seed)
    points = (points - np.array([0.5, 0.25])) / np.array([0.87, 0.5])
    return torch.from_numpy(points.astype(np.float32))


def gmm_2d() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights, means, stds) of a fixed 2D Gaussian mixture with isotropic components."""
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([[-1.0, -0.5], [1.2, 0.3], [0.0, 1.4]], dtype=torch.float64)
    stds = torch.tensor([0.15, 0.3, 0.08], dtype=torch.float64)
    return weights, means, stds
