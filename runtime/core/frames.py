"""What a step needs at a set of times: the source model's time and input scale, eta_X and the drift
as affine functions of the state x and the network output m (derive/MATH.md §2-3).

The model was trained on the ``source`` schedule; the sampler integrates in the ``target`` schedule.
At target time t the model is called at source time tau(t) (snr_source(tau) = snr_target(t)) on
x / c(t), with c = (alpha + beta)_target(t) / (alpha + beta)_source(tau).  Then

    eta_X = P x + Q m                  P = p(tau) / c,  Q = q(tau)         (``eta_per_x``, ``eta_per_output``)
    b     = K_x x + K_e eta_X          (the schedule's drift: ``linear_drift``, ``drift_per_eta``)
          = F x + G m                  F = K_x + K_e P,  G = K_e Q         (``drift_per_x``, ``drift_per_output``)
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

from .schedule import Schedule

__all__ = ["Frame", "frame", "conversion", "times_of_equal_log_snr"]


def conversion(target: Schedule, source: Schedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, c) at target times t, composed from the two kernels (the identity for the same path)."""
    if target.same_path(source):
        return t.clone(), torch.ones_like(t)
    tau = source.time_of_log_snr(target.log_snr(t))
    now, then = target.values(t), source.values(tau)
    return tau, (now.alpha + now.beta) / (then.alpha + then.beta)


def times_of_equal_log_snr(target: Schedule, source: Schedule, t_src: torch.Tensor) -> torch.Tensor:
    """Source times -> target times of equal log snr, t = t_target(lambda_source(t_src)) (the identity for the
    same path); t_src <= 0 and t_src >= 1 map to 0 and 1, where the log snr is infinite."""
    if target.same_path(source):
        return t_src.clone()
    times = target.time_of_log_snr(source.log_snr(t_src))
    return torch.where(t_src <= 0, torch.zeros_like(times), torch.where(t_src >= 1, torch.ones_like(times), times))


@dataclass(frozen=True)
class Frame:
    """Per-time coefficients, one value per time t (each (times, *trailing)).  The network is called at
    model time ``tau`` on x * ``in_scale``; with its output m, eta_X = ``eta_per_x`` x + ``eta_per_output`` m and
    the drift b = ``drift_per_x`` x + ``drift_per_output`` m = ``linear_drift`` x + ``drift_per_eta`` eta_X;
    ``sigma`` the diffusion (0 for an ODE step); ``zero`` marks the point-mass start, where x = 0."""

    t: torch.Tensor
    tau: torch.Tensor
    in_scale: torch.Tensor
    eta_per_x: torch.Tensor
    eta_per_output: torch.Tensor
    drift_per_x: torch.Tensor
    drift_per_output: torch.Tensor
    linear_drift: torch.Tensor
    drift_per_eta: torch.Tensor
    sigma: torch.Tensor
    zero: torch.Tensor

    #: what a step may read (the finiteness check looks at these; ``linear_drift`` and ``drift_per_eta`` may be
    #: infinite at the point-mass start, where the drift is read through ``drift_per_x`` = 0)
    READ = ("tau", "in_scale", "eta_per_x", "eta_per_output", "drift_per_x", "drift_per_output", "sigma")

    def eta(self, k: int, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """eta_X = P x + Q m at time k."""
        return self.eta_per_x[k] * x + self.eta_per_output[k] * m

    def drift(self, k: int, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """b = F x + G m at time k."""
        return self.drift_per_x[k] * x + self.drift_per_output[k] * m

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Frame":
        """The same frame with ``fn`` applied to every floating table (``zero`` stays boolean)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "zero"})


def frame(target: Schedule, source: Schedule, prediction: str, t: torch.Tensor, *,
          ode: torch.Tensor | None = None) -> Frame:
    """The :class:`Frame` at times t; where ``ode`` is set, the drift and sigma of the probability-flow ODE."""
    ode = torch.zeros_like(t, dtype=torch.bool) if ode is None else ode
    tau, c = conversion(target, source, t)
    zero = (t <= 0) & target.point_mass
    in_scale = torch.where(zero, torch.zeros_like(c), 1 / c)
    p, q = source.eta(prediction, tau)
    P = torch.where(zero, torch.zeros_like(p), p * in_scale)
    K_x, K_e = target.drift(t)
    if ode.any():
        K_x0, K_e0 = target.drift(t, ode=True)
        K_x, K_e = torch.where(ode, K_x0, K_x), torch.where(ode, K_e0, K_e)
    sigma = torch.where(ode, torch.zeros_like(t), target.values(t).sigma)
    F = torch.where(zero, torch.zeros_like(K_x), K_x + K_e * P)
    return Frame(t, tau, in_scale, eta_per_x=P, eta_per_output=q, drift_per_x=F, drift_per_output=K_e * q,
                 linear_drift=K_x, drift_per_eta=K_e, sigma=sigma, zero=zero)
