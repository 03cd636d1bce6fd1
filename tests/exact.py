"""Exact models for tests: Gaussian and Gaussian-mixture data have closed-form eta_X.

For I_t = alpha Z + beta X with X ~ sum_j w_j N(mu_j, s_j^2 I) (d dimensions), I_t given the
component is N(beta mu_j, (alpha^2 + beta^2 s_j^2) I), and
E[X | I_t = x, j] = mu_j + beta s_j^2 / (alpha^2 + beta^2 s_j^2) (x - beta mu_j).
"""
from __future__ import annotations

import math

import torch


def gmm_eta_x(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
              stds: torch.Tensor) -> torch.Tensor:
    """E[X | alpha Z + beta X = x] for an isotropic Gaussian mixture; x (n, d), alpha/beta (n, 1)."""
    d = x.shape[1]
    var = alpha**2 + beta**2 * stds[None, :] ** 2                                  # (n, J)
    diff = x[:, None, :] - beta[:, :, None] * means[None, :, :]                     # (n, J, d)
    log_p = (torch.log(weights)[None, :] - 0.5 * d * torch.log(2 * math.pi * var)
             - 0.5 * (diff**2).sum(-1) / var)
    post = torch.softmax(log_p, dim=1)                                              # (n, J)
    cond = means[None] + (beta * stds[None, :] ** 2 / var)[:, :, None] * diff        # (n, J, d)
    return (post[:, :, None] * cond).sum(1)


def linear_velocity_from_eta(x: torch.Tensor, t: torch.Tensor, eta_x: torch.Tensor) -> torch.Tensor:
    """Velocity of the linear schedule alpha = 1 - t, beta = t: b = (eta_X - x) / (1 - t)."""
    return (eta_x - x) / (1 - t)


class GMMVelocity:
    """The exact velocity of a linear-schedule flow on an isotropic Gaussian mixture (input (n, d))."""

    def __init__(self, weights, means, stds):
        self.weights, self.means, self.stds = weights, means, stds

    def eta_x(self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        w, mu, s = (v.to(x.dtype) for v in (self.weights, self.means, self.stds))
        return gmm_eta_x(x, alpha, beta, w, mu, s)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1).to(x.dtype).expand(x.shape[0], 1)
        return linear_velocity_from_eta(x, t, self.eta_x(x, 1 - t, t))


def gaussian_model(v: float) -> GMMVelocity:
    """Data N(0, v I) in 2 dimensions as a one-component mixture."""
    return GMMVelocity(torch.tensor([1.0], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                       torch.tensor([math.sqrt(v)], dtype=torch.float64))


def gaussian_velocity(v: float):
    """Exact linear-schedule velocity for N(0, v I) data, any shape: b = (v t - (1 - t)) x / r."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return (v * tt - (1 - tt)) * x / ((1 - tt) ** 2 + v * tt**2)
    return model
