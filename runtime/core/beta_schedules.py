"""The noise tables of discrete-time diffusion models: ``alphas_cumprod`` from the beta schedules they were
trained with (DDPM, Ho et al. 2020; improved DDPM, Nichol & Dhariwal 2021; Stable Diffusion), in float64.

A discrete diffusion model is trained on N timesteps k = 0 .. N-1 with x_k = sqrt(abar_k) X + sqrt(1 - abar_k) Z,

    abar_k = prod_{i <= k} (1 - beta_i)                                        (``alphas_cumprod``)

and betas from one of diffusers' ``beta_schedule`` names:

    linear             beta_i = beta_start + (beta_end - beta_start) i / (N - 1)
    scaled_linear      beta_i = (sqrt(beta_start) + (sqrt(beta_end) - sqrt(beta_start)) i / (N - 1))^2
    squaredcos_cap_v2  beta_i = min(1 - f((i + 1) / N) / f(i / N), 0.999),  f(s) = cos^2((s + 0.008) / 1.008 pi / 2)

(or a ``trained_betas`` list).  ``rescale_betas_zero_snr`` (Lin et al. 2024, "Common diffusion noise schedules
and sample steps are flawed") shifts and scales sqrt(abar) so that the last one is 0 and the first unchanged:
sqrt(abar_k) <- (sqrt(abar_k) - sqrt(abar_last)) sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_last)).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ...errors import LazyflowError

__all__ = ["BETA_SCHEDULES", "betas_of", "alphas_cumprod_of_betas", "rescale_zero_terminal_snr",
           "alphas_cumprod_of_config"]

#: the beta schedules diffusers' DDPM/DDIM-family configs name, all read here
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_COSINE_OFFSET, _COSINE_MAX_BETA = 0.008, 0.999


def betas_of(beta_schedule: str, num_train_timesteps: int, beta_start: float = 0.0001,
             beta_end: float = 0.02) -> torch.Tensor:
    """beta_0 .. beta_{N-1} of a named schedule (the formulas of the module docstring), float64."""
    n = num_train_timesteps
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise LazyflowError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
    i = torch.arange(n, dtype=torch.float64)
    if beta_schedule == "linear":
        return beta_start + (beta_end - beta_start) * i / (n - 1)
    if beta_schedule == "scaled_linear":
        root0, root1 = math.sqrt(beta_start), math.sqrt(beta_end)
        return (root0 + (root1 - root0) * i / (n - 1)) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def f(s: torch.Tensor) -> torch.Tensor:
            return torch.cos((s + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
        return torch.clamp(1 - f((i + 1) / n) / f(i / n), max=_COSINE_MAX_BETA)
    raise LazyflowError(f"unknown beta_schedule {beta_schedule!r}; lazyflow reads {', '.join(BETA_SCHEDULES)} "
                        "(or give trained_betas)")


def alphas_cumprod_of_betas(betas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """abar_k = prod_{i <= k} (1 - beta_i), float64; betas must lie in (0, 1] (1 only last: zero terminal snr)."""
    betas = torch.as_tensor(betas, dtype=torch.float64).reshape(-1)
    if betas.numel() < 2 or not torch.isfinite(betas).all() or (betas <= 0).any() or (betas[:-1] >= 1).any() \
            or betas[-1] > 1:
        raise LazyflowError("betas must be at least 2 numbers in (0, 1) (the last may be 1: zero terminal snr)")
    return torch.cumprod(1 - betas, 0)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The table with zero terminal snr: sqrt(abar) shifted to end at 0 and scaled to keep its start."""
    root = alphas_cumprod.to(torch.float64).sqrt()
    first, last = root[0], root[-1]
    return ((root - last) * first / (first - last)) ** 2


def alphas_cumprod_of_config(config: Mapping[str, Any]) -> torch.Tensor:
    """The table of a diffusers scheduler config (a mapping): ``trained_betas`` or ``beta_schedule`` with
    ``beta_start``, ``beta_end``, ``num_train_timesteps``, then ``rescale_betas_zero_snr``; diffusers' defaults
    (linear, 0.0001, 0.02, 1000) where a key is missing."""
    n = config.get("num_train_timesteps", 1000)
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.as_tensor(trained, dtype=torch.float64).reshape(-1)
        if betas.numel() != n:
            raise LazyflowError(f"trained_betas has {betas.numel()} values, num_train_timesteps is {n}")
    else:
        betas = betas_of(config.get("beta_schedule", "linear"), n, config.get("beta_start", 0.0001),
                         config.get("beta_end", 0.02))
    table = alphas_cumprod_of_betas(betas)
    return rescale_zero_terminal_snr(table) if config.get("rescale_betas_zero_snr", False) else table
