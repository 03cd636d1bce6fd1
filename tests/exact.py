"""Exact models for tests: Gaussian and Gaussian-mixture data have closed-form eta_X
(the mixture's formula lives in lazyflow.runtime.data, shared with the figures)."""
from __future__ import annotations

import torch

from lazyflow.runtime.data import gmm_eta_x, gmm_velocity


class GMMVelocity:
    """The exact velocity of a linear-schedule flow on an isotropic Gaussian mixture (input (n, d))."""

    def __init__(self, weights, means, stds):
        self.weights, self.means, self.stds = weights, means, stds
        self.velocity = gmm_velocity(weights, means, stds)

    def eta_x(self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        w, mu, s = (v.to(x.dtype) for v in (self.weights, self.means, self.stds))
        return gmm_eta_x(x, alpha, beta, w, mu, s)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, t)


def gaussian_velocity(v: float):
    """Exact linear-schedule velocity for N(0, v I) data, any shape: b = (v t - (1 - t)) x / r."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return (v * tt - (1 - tt)) * x / ((1 - tt) ** 2 + v * tt**2)
    return model
