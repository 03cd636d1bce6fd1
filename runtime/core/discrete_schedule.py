"""Discrete diffusion schedules as lazyflow schedules: a table ``alphas_cumprod`` (of
:mod:`.beta_schedules`) as a :class:`~.schedule.Schedule` whose alpha, beta and derivatives hold at any t in [0, 1].

Path.  x_k = sqrt(abar_k) X + sqrt(1 - abar_k) Z is a variance-preserving point: alpha = sqrt(1 - abar),
beta = sqrt(abar), i.e. the shipped ``vp`` kernel (alpha = cos(pi u / 2), beta = sin(pi u / 2)) at the vp time

    u_k = (2 / pi) atan(sqrt(abar_k / (1 - abar_k)))          (log snr_k = log tan(pi u_k / 2))

The discrete schedule is ``vp`` at the time u(t), piecewise linear in t through the knots, so every closed
form of the vp kernel holds with the chain rule: alpha(t) = alpha_vp(u(t)), alpha'(t) = alpha_vp'(u) u'(t),
the drift times u'(t), eta_X of x, noise and score predictions unchanged (they read alpha and beta only),
and the exponential step unchanged (it reads the step's ends only).  Its log snr, log tan(pi u(t) / 2), is a
monotone interpolant of the table's.

Time.  The knots, in increasing t, are the pure-noise end (u = 0: a virtual timestep k = N, added unless the
table already ends at abar = 0, as a zero-terminal-snr one does), the table from k = N-1 down to k = 0, and
the clean end (u = 1: diffusers' ``set_alpha_to_one`` final alpha, k = -1).  With M intervals (N + 1, or N
for a zero-terminal-snr table) they are equally spaced:

    t = 1 - (k + 1) / M,         k(t) = M (1 - t) - 1             (:func:`timestep_of_time`)

so t = 0 is pure noise, t = 1 the data, and the training timestep of a call at time t is k(t): continuous
(between two training timesteps a float timestep, for networks that embed float timesteps, as diffusers'
UNets do), or rounded to the nearest integer for a network that takes only integers (then the input is the
state at t, not at round(k); its effect is measured in docs/pipelines.md).
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

from .. import kernels
from ...errors import LazyflowError
from .beta_schedules import alphas_cumprod_of_config
from .schedule import Schedule

__all__ = ["TableKernel", "discrete_schedule", "schedule_of_config", "is_discrete", "timestep_of_time",
           "time_of_timestep", "noisiest_training_time"]

_VP = kernels.load_shipped("vp")


@dataclass(frozen=True)
class TableKernel:
    """The kernel of a discrete schedule (the :class:`~lazyflow.runtime.kernels.Kernel` contract, table-backed):
    the ``vp`` kernel at the piecewise-linear vp time u(t) through the table's knots (module docstring)."""

    alphas_cumprod: tuple[float, ...]
    label: str = "discrete"
    FORMAT: ClassVar[int] = kernels.FORMAT
    PARAMS: ClassVar[dict] = {}
    PREDICTIONS: ClassVar[tuple] = _VP.PREDICTIONS
    DIFFUSION: ClassVar[str] = "ode"
    STOCHASTIC: ClassVar[bool] = False
    POINT_MASS: ClassVar[bool] = False
    SINGULAR_START: ClassVar[bool] = False
    SNR_INVERSE: ClassVar[str] = "closed form"
    EXPONENTIAL: ClassVar[str] = "closed form"
    _knots: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        abar = torch.tensor(self.alphas_cumprod, dtype=torch.float64)
        if abar.numel() < 2 or not torch.isfinite(abar).all() or (abar[:-1] <= 0).any() or (abar >= 1).any() \
                or (abar[-1] < 0) or (abar[1:] >= abar[:-1]).any():
            raise LazyflowError("alphas_cumprod must decrease strictly inside (0, 1) (the last may be 0: zero "
                                "terminal snr), at least 2 values")
        u = 2 / math.pi * torch.atan2(abar.sqrt(), (1 - abar).sqrt())          # u_k, k = 0 .. N-1
        ends = [torch.zeros(1, dtype=torch.float64)] if abar[-1] > 0 else []
        object.__setattr__(self, "_knots", torch.cat(ends + [u.flip(0), torch.ones(1, dtype=torch.float64)]))

    # --- what the runtime reads of a kernel module ---------------------------------------------------
    @property
    def NAME(self) -> str:  # noqa: N802 - the kernel contract's name
        return self.label.replace("-", "_")

    @functools.cached_property
    def digest(self) -> str:
        """The table's identity: the SHA-256 of its float64 values (16 hex digits)."""
        return hashlib.sha256(torch.tensor(self.alphas_cumprod, dtype=torch.float64).numpy().tobytes()).hexdigest()[:16]

    @property
    def __name__(self) -> str:
        """What a run's manifest records for a kernel without a file: the label and the table's digest."""
        return f"{self.label} table {self.digest}"

    @functools.cached_property
    def SPEC(self) -> dict:  # noqa: N802
        """The schedule's identity: two kernels of one table have the same path (``Schedule.same_path``)."""
        return {"name": self.label, "alpha": f"sqrt(1 - abar(t)), table {self.digest}",
                "beta": f"sqrt(abar(t)), table {self.digest}", "sigma": "ode", "data_var": "1", "params": {},
                "description": f"discrete diffusion schedule of {len(self.alphas_cumprod)} timesteps"}

    @property
    def intervals(self) -> int:
        """M: the knots are t = j / M, j = 0 .. M."""
        return self._knots.numel() - 1

    # --- the time change ------------------------------------------------------------------------------
    def vp_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, u') at times t: u(t) = u_j + (t M - j)(u_{j+1} - u_j), u' = M (u_{j+1} - u_j), j = floor(t M)."""
        knots = self._knots.to(dtype=t.dtype, device=t.device)
        m = self.intervals
        j = torch.clamp(torch.floor(t * m), 0, m - 1).long()
        left, right = knots[j], knots[j + 1]
        return left + (t * m - j) * (right - left), m * (right - left)

    def time_of_vp_time(self, u: torch.Tensor) -> torch.Tensor:
        """t with u(t) = u (the inverse of the piecewise-linear map)."""
        knots = self._knots.to(dtype=u.dtype, device=u.device)
        m = self.intervals
        j = torch.clamp(torch.searchsorted(knots, u.contiguous(), right=True) - 1, 0, m - 1)
        left, right = knots[j], knots[j + 1]
        return (j + (u - left) / (right - left)) / m

    # --- the kernel's functions: vp's at u(t), derivatives by the chain rule ----------------------------
    def schedule(self, t):
        """(alpha, beta, alpha', beta', sigma) = (alpha_vp(u), beta_vp(u), alpha_vp'(u) u', beta_vp'(u) u', 0)."""
        u, du = self.vp_time(t)
        alpha, beta, d_alpha, d_beta, sigma = _VP.schedule(u)
        return alpha, beta, d_alpha * du, d_beta * du, sigma

    def log_snr(self, t):
        """log tan(pi u(t) / 2)."""
        return _VP.log_snr(self.vp_time(t)[0])

    def time_of_log_snr(self, lam):
        """t = u^-1((2 / pi) atan(exp(lam)))."""
        return self.time_of_vp_time(_VP.time_of_log_snr(lam))

    def drift(self, t):
        """(K_x, K_e) = u' (K_x, K_e)_vp(u): b = dI/dt = u' dI/du."""
        u, du = self.vp_time(t)
        K_x, K_e = _VP.ode_drift(u)
        return K_x * du, K_e * du

    ode_drift = drift

    def eta_velocity(self, t):
        """(p, q_vp / u'): a velocity in t is u' times one in u."""
        u, du = self.vp_time(t)
        p, q = _VP.eta_velocity(u)
        return p, q / du

    def eta_x(self, t):
        return _VP.eta_x(self.vp_time(t)[0])

    def eta_noise(self, t):
        return _VP.eta_noise(self.vp_time(t)[0])

    def eta_score(self, t):
        return _VP.eta_score(self.vp_time(t)[0])

    def exponential(self, t, t_next):
        """(A, B, C) = (alpha'/alpha, beta' - alpha' snr, 0): vp's step between u(t) and u(t_next)."""
        return _VP.ode_exponential(self.vp_time(t)[0], self.vp_time(t_next)[0])

    ode_exponential = exponential

    # --- training timesteps ---------------------------------------------------------------------------
    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """k(t) = M (1 - t) - 1."""
        return self.intervals * (1 - t) - 1

    def time(self, timestep: torch.Tensor) -> torch.Tensor:
        """t(k) = 1 - (k + 1) / M."""
        return 1 - (timestep + 1) / self.intervals


def discrete_schedule(alphas_cumprod: Sequence[float] | torch.Tensor, *, name: str = "discrete") -> Schedule:
    """The :class:`~.schedule.Schedule` of a table abar_0 > ... > abar_{N-1} (module docstring); ``name`` is
    what :meth:`Schedule.describe` shows."""
    table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
    kernel = kernels.check(TableKernel(tuple(table.tolist()), name))
    return Schedule(kernel, (), f"table of {table.numel()} timesteps")


def schedule_of_config(config: Mapping[str, Any]) -> Schedule:
    """The discrete schedule of a diffusers scheduler config (``scheduler.config`` or its dict):
    :func:`~.beta_schedules.alphas_cumprod_of_config`, named after its ``beta_schedule``."""
    kind = "trained" if config.get("trained_betas") is not None else config.get("beta_schedule", "linear")
    zero = "-zero-snr" if config.get("rescale_betas_zero_snr", False) else ""
    return discrete_schedule(alphas_cumprod_of_config(config), name=f"discrete-{kind}{zero}")


def is_discrete(schedule: Schedule) -> bool:
    """True for a schedule of :func:`discrete_schedule`."""
    return isinstance(schedule.kernel, TableKernel)


def _table(schedule: Schedule) -> TableKernel:
    if not is_discrete(schedule):
        raise LazyflowError(f"schedule {schedule.describe()} is not a discrete diffusion schedule: it has no "
                            "training timesteps (build one with discrete_schedule or schedule_of_config)")
    return schedule.kernel


def timestep_of_time(schedule: Schedule, t: torch.Tensor, *, rounded: bool = False) -> torch.Tensor:
    """The training timestep of a call at time t, k(t) = M (1 - t) - 1 (module docstring); ``rounded``: the
    nearest integer, for a network that takes integer timesteps only."""
    k = _table(schedule).timestep(t)
    return torch.round(k) if rounded else k


def time_of_timestep(schedule: Schedule, timestep: torch.Tensor) -> torch.Tensor:
    """t(k) = 1 - (k + 1) / M: the time of training timestep k (-1: the clean end t = 1)."""
    return _table(schedule).time(torch.as_tensor(timestep, dtype=torch.float64))


def noisiest_training_time(schedule: Schedule) -> float:
    """t(N - 1): the time of the table's noisiest training timestep, where diffusers' schedulers (and Karras
    sigmas from the table's sigma_max) start."""
    table = _table(schedule)
    return float(table.time(torch.tensor(float(len(table.alphas_cumprod) - 1), dtype=torch.float64)))
