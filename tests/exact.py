"""Exact models for tests: Gaussian and Gaussian-mixture data have closed-form eta_X
(the mixture's formula lives in lazyflow.runtime.models.data, shared with the figures)."""
from __future__ import annotations

import torch

from lazyflow.runtime.models.data import gmm_eta_x, gmm_velocity


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


def rk4(f, y, t0, t1, steps: int):
    """Classical Runge-Kutta for dy/dt = f(t, y) from t0 to t1 in ``steps`` equal steps (t0, t1 may be tensors:
    one independent solve per element)."""
    dt = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * dt
        k1 = f(t, y)
        k2 = f(t + dt / 2, y + dt / 2 * k1)
        k3 = f(t + dt / 2, y + dt / 2 * k2)
        k4 = f(t + dt, y + dt * k3)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y

