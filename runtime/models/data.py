"""Data the package trains and measures on: scikit-learn's bundled digits, 2D toy sets, and the exact
linear-schedule velocity of an isotropic Gaussian mixture."""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["digits", "digits_labels", "two_moons", "gmm_2d", "gmm_eta_x", "gmm_velocity"]


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


def gmm_eta_x(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
              stds: torch.Tensor) -> torch.Tensor:
    """E[X | alpha Z + beta X = x] for X ~ sum_j w_j N(mu_j, s_j^2 I); x (n, d), alpha and beta (n, 1).

    Given component j, I is N(beta mu_j, (alpha^2 + beta^2 s_j^2) I) and
    E[X | I = x, j] = mu_j + beta s_j^2 / (alpha^2 + beta^2 s_j^2) (x - beta mu_j)."""
    d = x.shape[1]
    var = alpha**2 + beta**2 * stds[None, :] ** 2                                  # (n, J)
    diff = x[:, None, :] - beta[:, :, None] * means[None, :, :]                     # (n, J, d)
    log_p = (torch.log(weights)[None, :] - 0.5 * d * torch.log(2 * math.pi * var)
             - 0.5 * (diff**2).sum(-1) / var)
    post = torch.softmax(log_p, dim=1)
    cond = means[None] + (beta * stds[None, :] ** 2 / var)[:, :, None] * diff
    return (post[:, :, None] * cond).sum(1)


def gmm_velocity(weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor):
    """The exact linear-schedule velocity b = (eta_X - x) / (1 - t) of the mixture, as model(x, t)."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        eta = gmm_eta_x(x, 1 - t, t, *(v.to(x.dtype) for v in (weights, means, stds)))
        return (eta - x) / (1 - t)
    return model
