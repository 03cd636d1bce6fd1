"""Data the package trains and measures on: scikit-learn's bundled digits, 2D toy sets, and the exact
linear-schedule velocity of an isotropic Gaussian mixture."""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["digits", "digits_labels", "digits28", "two_moons", "gmm_2d", "gmm_eta_x", "gmm_velocity"]


def digits() -> torch.Tensor:
    """The 1,797 digits as a float32 tensor (n, 1, 8, 8) scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)


def digits_labels() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target.astype(np.int64))


def digits28(copies: int = 4, seed: int = 0) -> torch.Tensor:
    """The digits at 28 x 28 (n * copies, 1, 28, 28) in [-1, 1]: each image resampled (bilinear) under
    ``copies`` random affine maps (rotation within 12 degrees, scale 0.9-1.1, shift within 0.6 of an 8x8 pixel),
    so that the 784 pixels do not lie on the 64-dimensional subspace plain upsampling would give.  Copy j of
    every image is row j * n + i (labels: ``digits_labels().repeat(copies)``)."""
    images = digits()
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        n = len(images)
        angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12)
        scale = 0.9 + 0.2 * torch.rand(n, generator=g)
        shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.6 / 4      # in [-1, 1] units: 2 / 8 per pixel
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta, (n, 1, 28, 28), align_corners=False)
        # background is -1: resample the image + 1 with zero padding, then shift back
        moved = torch.nn.functional.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros",
                                                align_corners=False) - 1
        out.append(moved.clamp(-1, 1))
    return torch.cat(out)


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
