"""Time grids in the target schedule's own time t (noise at 0, data at 1).

Grids: ``uniform`` in t; ``source``, uniform in the source schedule's time; ``logsnr``, uniform in the target's log snr between clip values;
``edm``, Karras et al.'s rho-spacing of the noise level 1/snr; or an explicit sequence.
Log-snr values are frame-invariant (snr_target(t) = snr_source(tau(t))), so a logsnr or edm grid
calls the model at the same source times whatever the target schedule.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence, Union

import torch

from .errors import LazyflowError
from .schedule import Schedule

__all__ = ["Uniform", "SourceUniform", "LogSNR", "EDM", "GridSpec", "GRIDS", "make_grid"]


@dataclass(frozen=True)
class Uniform:
    """t_k = k / N."""


@dataclass(frozen=True)
class SourceUniform:
    """Uniform in the source schedule's time: the model is called where a source-frame uniform grid
    would call it (same log snr), whatever frame the integrator works in."""


@dataclass(frozen=True)
class LogSNR:
    """Interior points uniform in log snr over [lo, hi]; the ends are t = 0 and t = 1."""

    lo: float = -3.0
    hi: float = 3.0


@dataclass(frozen=True)
class EDM:
    """Interior points at noise levels 1/snr rho-spaced from sigma_max to sigma_min (Karras et al. 2022)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


GridSpec = Union[str, Uniform, SourceUniform, LogSNR, EDM, Sequence[float], torch.Tensor]
#: the named grids (the CLI's choices)
GRIDS = {"uniform": Uniform(), "source": SourceUniform(), "logsnr": LogSNR(), "edm": EDM()}


def make_grid(target: Schedule, source: Schedule, steps: int, grid: GridSpec = "uniform") -> torch.Tensor:
    """An increasing float64 CPU tensor of ``steps + 1`` times of ``target`` from the start (0) to 1
    (MATH.md §7); ``source`` is the model's schedule (for the ``source`` grid)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise LazyflowError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise LazyflowError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)} or give a sequence of times")
        grid = GRIDS[grid]
    if isinstance(grid, Uniform):
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if isinstance(grid, (LogSNR, EDM, SourceUniform)):
        if isinstance(grid, SourceUniform):
            lam = source.log_snr(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64))
        elif isinstance(grid, LogSNR):
            if not grid.lo < grid.hi:
                raise LazyflowError(f"logsnr grid needs lo < hi, got {grid}")
            lam = torch.linspace(grid.lo, grid.hi, steps + 1, dtype=torch.float64)
        else:
            k = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
            s = (grid.sigma_max ** (1 / grid.rho) + k * (grid.sigma_min ** (1 / grid.rho) - grid.sigma_max ** (1 / grid.rho))) ** grid.rho
            lam = -torch.log(s)
        times = target.time_of_log_snr(lam)
        times[0], times[-1] = 0.0, 1.0
        return times
    try:
        times = torch.as_tensor(grid, dtype=torch.float64).flatten().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise LazyflowError(f"a grid is a name ({', '.join(GRIDS)}) or a sequence of times, got {grid!r}") from None
    if times.numel() != steps + 1:
        raise LazyflowError(f"an explicit grid for {steps} steps needs {steps + 1} times, got {times.numel()}")
    if not torch.isfinite(times).all() or (times[1:] <= times[:-1]).any():
        raise LazyflowError("an explicit grid must be finite and strictly increasing")
    if times[0] < 0 or times[-1] > 1:
        raise LazyflowError(f"an explicit grid must lie in [0, 1], got [{times[0].item()}, {times[-1].item()}]")
    if target.point_mass and times[0] != 0:
        raise LazyflowError("a point-mass schedule starts at x = 0 at t = 0: the grid must start at 0")
    return times
