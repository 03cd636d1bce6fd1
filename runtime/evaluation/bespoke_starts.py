"""Where a bespoke fit starts (:mod:`.bespoke_fit`): known solvers written as points of the bespoke family.

The family (:mod:`lazyflow.runtime.core.bespoke`) is x_{k+1} = a_k x_0 + sum_{j <= k} w_kj m_j with m_j the
model's j-th output.  Every solver that combines its state and the model's outputs linearly with fixed
coefficients is a point of it; its (a, w) follow by running the solver on coefficient vectors over the basis
(x_0, m_0, ..., m_{N-1}): the state x_0 is e_0, the k-th call returns e_{k+1}.

Starts: Euler and DPM-Solver++(2M) (Lu et al. 2022, data prediction, multistep) on the uniform, log-snr,
EDM (sigma_max 80 and 14.6) and SD3-shifted (shift 3) grids, with the midpoint rule and RK4 on the uniform
grid; on a discrete diffusion table also both on the table's Karras sigmas (diffusers' ``use_karras_sigmas``:
rho = 7 from the noise level of training timestep N - 1 to that of timestep 0, then the data; not on a
zero-terminal-snr table, whose timestep N - 1 has snr 0), the grid its strongest peers run on.  The fit starts
from the one of the lowest loss.  All start from alpha(t_0) times the noise at the fit's t_0
(:func:`.bespoke_fit.start_time`): each grid of [0, 1] squeezed onto [t_0, 1], t -> t_0 + (1 - t_0) t (the
midpoint rule's and RK4's weights times 1 - t_0); a grid that is not strictly increasing is left out.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ...errors import LazyflowError
from ..core.bespoke import euler_weights, midpoint_weights, rk4_weights
from ..core.discrete_schedule import is_discrete, noisiest_training_time, time_of_timestep
from ..core.grids import EDM, LogSNR, Shifted, Uniform, make_grid
from ..core.schedule import Schedule
from .peer_solvers import edm_sigmas

__all__ = ["dpmpp_2m_weights", "bespoke_starts", "table_karras_times", "START_GRIDS"]

Start = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # (times, a, w)

#: the grids the Euler and DPM-Solver++(2M) starts are laid on
START_GRIDS = {"uniform": Uniform(), "logsnr": LogSNR(), "edm": EDM(), "edm 14.6": EDM(sigma_max=14.6),
               "shift 3": Shifted(3.0)}


def dpmpp_2m_weights(times: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, w) of DPM-Solver++(2M) on ``times`` for a velocity model of ``schedule`` (x_t = alpha Z + beta X):

        D_k = (alpha_k m_k - alpha'_k x_k) / (alpha_k beta'_k - alpha'_k beta_k)          (the data prediction)
        x_{k+1} = (alpha_{k+1} / alpha_k) x_k + (beta_{k+1} - alpha_{k+1} beta_k / alpha_k) D^_k
        D^_k = (1 + 1 / (2 r_k)) D_k - D_{k-1} / (2 r_k),   r_k = h_{k-1} / h_k,   h_k = lambda_{k+1} - lambda_k

    with lambda = log(beta / alpha); D^_k = D_k (first order) where h_{k-1} or h_k is infinite (a step from
    beta = 0 or to alpha = 0), as k-diffusion's sample_dpmpp_2m does on its last step.  The data end t = 1 has
    lambda = inf by the boundary condition alpha_1 = 0 (vp's and a discrete table's alpha there is
    cos(pi / 2) = 6e-17 in float, lambda 37: read as finite, it made the last step second order with h ~ 38, and
    the log-snr start's path on discrete:gmm:5,dim=8 at 4 NFE 7.26 instead of 0.524; 64 noises of seed 7)."""
    v = schedule.values(times.to(torch.float64))
    alpha, beta, d_alpha, d_beta = v.alpha, v.beta, v.d_alpha, v.d_beta
    steps = times.numel() - 1
    lam = torch.where(times >= 1, torch.tensor(float("inf"), dtype=torch.float64), torch.log(beta / alpha))
    x = torch.zeros(steps + 1, dtype=torch.float64)
    x[0] = 1.0
    a, w, previous = torch.zeros(steps, dtype=torch.float64), torch.zeros(steps, steps, dtype=torch.float64), None
    for k in range(steps):
        call = torch.zeros_like(x)
        call[k + 1] = 1.0
        denoised = (alpha[k] * call - d_alpha[k] * x) / (alpha[k] * d_beta[k] - d_alpha[k] * beta[k])
        corrected = denoised
        h, h_before = lam[k + 1] - lam[k], (lam[k] - lam[k - 1]) if k else torch.tensor(float("inf"))
        if previous is not None and torch.isfinite(h) and torch.isfinite(h_before):
            r = h_before / h
            corrected = (1 + 1 / (2 * r)) * denoised - previous / (2 * r)
        x = alpha[k + 1] / alpha[k] * x + (beta[k + 1] - alpha[k + 1] * beta[k] / alpha[k]) * corrected
        a[k], w[k, :k + 1], previous = x[0], x[1:k + 2], denoised
    return a, w


def bespoke_starts(nfe: int, schedule: Schedule, t0: float = 0.0) -> dict[str, Start]:
    """The starting solvers (times, a, w) of ``nfe`` calls for the velocity of ``schedule``'s ODE: Euler and
    DPM-Solver++(2M) on each of :data:`START_GRIDS`, the midpoint rule (even ``nfe``) and RK4 (a multiple of 4)
    on the uniform grid, from ``t0`` (the module's docstring).  A start whose a_k are not all positive (the fit's
    parameters are log a_k) is left out."""
    out: dict[str, Start] = {}
    makers: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
        "euler": euler_weights, "dpm++2m": lambda t: dpmpp_2m_weights(t, schedule)}
    grids: dict[str, torch.Tensor] = {}
    for grid_name, grid in START_GRIDS.items():
        try:
            grids[grid_name] = _squeezed(make_grid(schedule, schedule, nfe, grid), t0)
        except LazyflowError:
            continue
    karras = table_karras_times(schedule, nfe, t0) if is_discrete(schedule) else None
    if karras is not None:
        grids["karras, table"] = karras
    for grid_name, times in grids.items():
        if not bool((times[1:] > times[:-1]).all()):
            continue
        for name, weights in makers.items():
            a, w = weights(times)
            if bool((a > 0).all()) and bool(torch.isfinite(w).all()):
                out[f"{name}, {grid_name}"] = (times, a, w)
    for name, calls_per_step, weights_of in (("midpoint, uniform", 2, midpoint_weights), ("rk4, uniform", 4, rk4_weights)):
        if nfe % calls_per_step == 0:
            times, a, w = weights_of(nfe)
            out[name] = (_squeezed(times, t0), a, w if t0 == 0 else (1 - t0) * w)
    return out


def table_karras_times(schedule: Schedule, nfe: int, t0: float, rho: float = 7.0) -> torch.Tensor | None:
    """The times of a discrete table's Karras sigmas for ``nfe`` calls, as diffusers' ``use_karras_sigmas`` lays them
    (:func:`.peer_solvers.edm_sigmas`): n levels rho-spaced from sigma_max down to sigma_min, then sigma = 0 (t = 1);
    sigma = alpha / beta, sigma_min that of training timestep 0, sigma_max that of ``t0`` or, for a ``t0`` before
    the noisiest training timestep (N - 1), that timestep's, with ``t0`` itself as one more call in front (then
    n = ``nfe`` - 1).  None where sigma_max is not finite (a zero-terminal-snr table's timestep N - 1)."""
    first = noisiest_training_time(schedule)
    top = max(t0, first)
    ends = torch.cat([torch.tensor([top], dtype=torch.float64), time_of_timestep(schedule, torch.zeros(1))])
    sigma_max, sigma_min = torch.exp(-schedule.log_snr(ends)).tolist()
    levels = nfe if t0 >= first else nfe - 1
    if not math.isfinite(sigma_max) or not sigma_max > sigma_min:
        return None
    if levels < 1:
        return torch.tensor([t0, 1.0], dtype=torch.float64)
    sigmas = torch.tensor(edm_sigmas(levels, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)[:-1], dtype=torch.float64)
    times = schedule.time_of_log_snr(-torch.log(sigmas))
    times[0] = top
    if t0 < first:
        times = torch.cat([torch.tensor([t0], dtype=torch.float64), times])
    return torch.cat([times, torch.ones(1, dtype=torch.float64)])


def _squeezed(times: torch.Tensor, t0: float) -> torch.Tensor:
    """A grid of [0, 1] on [t_0, 1]: t -> t_0 + (1 - t_0) t, ending at 1 exactly (the grid itself at t_0 = 0)."""
    if t0 == 0:
        return times
    out = t0 + (1 - t0) * times
    out[-1] = 1.0
    return out
