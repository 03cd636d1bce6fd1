"""Time grids in the target schedule's own time t (noise at 0, data at 1).

Grids: ``uniform`` in t; ``source``, uniform in the source schedule's time; ``logsnr``, uniform in the target's log snr between clip values;
``logsnr:FIRST,LAST`` and ``logsnr-open:FIRST,LAST`` (:class:`LogSNRRange`), uniform in log snr with the first
and last log snr chosen (the open form starts at t_0 > 0, which noise and score models need);
``edm``, Karras et al.'s rho-spacing of the noise level 1/snr; ``shift:S``, the flow sigmas of SD3's and FLUX's
pipelines shifted by S (:class:`Shifted`); a tuned grid (:class:`TunedGrid` or the path
of its ``.json`` file, :mod:`lazyflow.runtime.core.gridfile`); or an explicit sequence.
Log-snr values are frame-invariant (snr_target(t) = snr_source(tau(t))), so a logsnr or edm grid
calls the model at the same source times whatever the target schedule.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Sequence, Union

import torch

from ...errors import LazyflowError
from .gridfile import TunedGrid, is_grid_file, load_grid_file
from .schedule import Schedule

__all__ = ["Uniform", "SourceUniform", "LogSNR", "LogSNRRange", "EDM", "Shifted", "GridSpec", "GRIDS", "make_grid", "parse_grid", "resolve_spec"]


@dataclass(frozen=True)
class Uniform:
    """t_k = k / N."""


@dataclass(frozen=True)
class SourceUniform:
    """Uniform in the source schedule's time: the model is called where a source-frame uniform grid
    would call it (same log snr), whatever frame the integrator works in."""


@dataclass(frozen=True)
class LogSNR:
    """Interior points uniform in log snr over [lo, hi]; the ends are t = 0 and t = 1.  Beyond 16 steps
    the range widens by ln(N / 16) on each side, so that the first and last steps shrink and the grid
    converges as N grows."""

    lo: float = -3.0
    hi: float = 3.0


@dataclass(frozen=True)
class LogSNRRange:
    """Times uniform in log snr from ``first`` to ``last`` (lam_k = first + j (last - first) / (M - 1) for the
    M points j = 0..M-1, or just ``first`` when M = 1), then t_N = 1; beyond 16 steps the range widens as
    :class:`LogSNR`'s does (the first end only when not open).

    ``open=False``: t_0 = 0 (snr 0) and the M = N - 1 interior times carry the log snrs; ``open=True``: the
    grid starts at t_0 = t(first) > 0 (a standard schedule starts from alpha(t_0) Z, dropping beta(t_0) X),
    M = N, so that noise- and score-prediction models, undefined at snr = 0, can be sampled."""

    first: float
    last: float
    open: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.first) and math.isfinite(self.last) and self.first < self.last):
            raise LazyflowError(f"a log-snr range needs finite first < last, got first={self.first}, last={self.last}")

    def __str__(self) -> str:
        return f"logsnr{'-open' if self.open else ''}:{self.first:g},{self.last:g}"


@dataclass(frozen=True)
class EDM:
    """Interior points at noise levels 1/snr rho-spaced from sigma_max to sigma_min (Karras et al. 2022)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


@dataclass(frozen=True)
class Shifted:
    """The flow sigmas of SD3's and FLUX's pipelines: sigma_k = S s_k / (1 + (S - 1) s_k), s_k = 1 - k / N, called
    where the linear schedule's t = 1 - sigma_k is (the same log snr in any frame).  ``shift`` S > 1 puts the
    short steps at the noise end, where high-dimensional data decide their coarse structure."""

    shift: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise LazyflowError(f"a shifted grid needs a finite shift > 0, got {self.shift!r}")

    def __str__(self) -> str:
        return f"shift:{self.shift:g}"


GridSpec = Union[str, os.PathLike, Uniform, SourceUniform, LogSNR, LogSNRRange, EDM, Shifted, TunedGrid, Sequence[float],
                 torch.Tensor]
#: the named grids (the CLI's choices)
GRIDS = {"uniform": Uniform(), "source": SourceUniform(), "logsnr": LogSNR(), "edm": EDM()}


def parse_grid(text: str) -> GridSpec:
    """A grid from text: a name of :data:`GRIDS`, ``logsnr:FIRST,LAST``, ``logsnr-open:FIRST,LAST``, the path
    of a tuned grid's ``.json`` file, or comma-separated explicit times."""
    text = text.strip()
    head, colon, rest = text.partition(":")
    if colon and head == "shift":
        try:
            return Shifted(float(rest))
        except ValueError:
            raise LazyflowError(f"grid {text!r}: expected shift:S (a number > 0)") from None
    if colon and head in ("logsnr", "logsnr-open"):
        try:
            first, last = (float(v) for v in rest.split(","))
        except ValueError:
            raise LazyflowError(f"grid {text!r}: expected {head}:FIRST,LAST (two log snr values)") from None
        return LogSNRRange(first, last, open=head == "logsnr-open")
    if text.endswith(".json"):
        return text
    if "," in text:
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise LazyflowError(f"grid {text!r}: cannot read it as comma-separated times") from None
    return text


def make_grid(target: Schedule, source: Schedule, steps: int, grid: GridSpec = "uniform") -> torch.Tensor:
    """An increasing float64 CPU tensor of ``steps + 1`` times of ``target`` from the start (0) to 1
    (derive/MATH.md §7); ``source`` is the model's schedule (for the ``source`` grid)."""
    steps = _checked_steps(steps)
    grid = resolve_spec(grid)
    if isinstance(grid, TunedGrid):
        grid = _tuned_times(grid, target, steps)
    if isinstance(grid, LogSNRRange):
        grid = _log_snr_range_times(grid, target, steps)
    if isinstance(grid, Uniform):
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if isinstance(grid, (LogSNR, EDM, SourceUniform)):
        return _times_at_log_snrs(target, _spaced_log_snrs(grid, source, steps))
    if isinstance(grid, Shifted):
        return _shifted_times(grid, target, steps)
    return _checked_explicit_times(grid, target, steps)


def _checked_steps(steps: int) -> int:
    """``steps`` as a plain int, refused unless it is an integer >= 1 (a bool is not a step count)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise LazyflowError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def resolve_spec(grid: GridSpec) -> GridSpec:
    """Text and paths made into grids: a ``.json`` path is loaded as a :class:`TunedGrid`, other text is read
    by :func:`parse_grid` and a name becomes its :data:`GRIDS` entry; anything else is returned as given."""
    if is_grid_file(grid):
        return load_grid_file(grid)
    if not isinstance(grid, str):
        return grid
    grid = parse_grid(grid)
    if isinstance(grid, str) and grid not in GRIDS:
        raise LazyflowError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}, shift:S, logsnr:FIRST,LAST, "
                            "logsnr-open:FIRST,LAST, a tuned grid's .json file or a sequence of times")
    return GRIDS.get(grid, grid) if isinstance(grid, str) else grid


def _tuned_times(grid: TunedGrid, target: Schedule, steps: int) -> list[float]:
    """A tuned grid's times, refused unless they are times of ``target`` and it has ``steps`` steps."""
    grid.schedule_for(target, scale_given=True)   # refused unless these are times of target
    if grid.steps != steps:
        raise LazyflowError(f"{grid.describe()}: it has {grid.steps} steps, not {steps}; use steps={grid.steps} "
                            f"(--steps {grid.steps}), or leave steps out: the file's own are used")
    return list(grid.times)


def _log_snr_range_times(grid: LogSNRRange, target: Schedule, steps: int) -> torch.Tensor:
    """t_j = t(lam_j), lam_j = first + j (last - first) / (M - 1) for j = 0..M-1 (M = steps when open, else
    steps - 1 behind t_0 = 0), then t_N = 1; refused unless finite and strictly increasing.  Beyond 16 steps
    the range widens by ln(N / 16) (:func:`_widening`) at its last end, and at its first end unless open (an
    open grid starts at ``first`` on purpose), so that the steps from t = 0 and into t = 1 shrink and the
    grid converges as N grows; grids of at most 16 steps are unchanged."""
    count = steps if grid.open else steps - 1
    widen = _widening(steps)
    first, last = grid.first - (0.0 if grid.open else widen), grid.last + widen
    lam = torch.linspace(first, last, count, dtype=torch.float64) if count > 1 else \
        torch.full((count,), first, dtype=torch.float64)
    inner = target.time_of_log_snr(lam)
    head = [] if grid.open else [torch.zeros(1, dtype=torch.float64)]
    times = torch.cat([*head, inner, torch.ones(1, dtype=torch.float64)])
    if not torch.isfinite(times).all() or (times[1:] <= times[:-1]).any():
        raise LazyflowError(f"grid {grid}: the log snrs {grid.first:g}..{grid.last:g} give times "
                            f"{times.tolist()} on {target.describe()}, not strictly inside (0, 1); narrow the range")
    return times


def _spaced_log_snrs(grid: Union[LogSNR, EDM, SourceUniform], source: Schedule, steps: int) -> torch.Tensor:
    """The ``steps + 1`` log snrs of a spaced grid: lam_k = log snr_source(k / N) (source), lo + k (hi - lo) / N
    (logsnr), or -log sigma_k with sigma_k the EDM noise levels."""
    if isinstance(grid, SourceUniform):
        return source.log_snr(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64))
    if isinstance(grid, LogSNR):
        if not grid.lo < grid.hi:
            raise LazyflowError(f"logsnr grid needs lo < hi, got {grid}")
        widen = _widening(steps)
        return torch.linspace(grid.lo - widen, grid.hi + widen, steps + 1, dtype=torch.float64)
    return -torch.log(_edm_noise_levels(grid, steps))


#: spaced grids keep their log-snr range up to this many steps, and widen it beyond
WIDEN_AFTER = 16


def _widening(steps: int) -> float:
    """ln(N / 16) for N > 16 steps, else 0: how far (in log snr) a spaced grid's range grows on each side,
    so that its first and last steps (from snr 0 and into t = 1) shrink as N grows and the grid converges,
    while its interior spacing still falls about as 1/N; grids of at most 16 steps are unchanged."""
    return math.log(steps / WIDEN_AFTER) if steps > WIDEN_AFTER else 0.0


def _edm_noise_levels(grid: EDM, steps: int) -> torch.Tensor:
    """sigma_k = (sigma_max^(1/rho) + k / N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, k = 0..N."""
    k = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    top, bottom = grid.sigma_max ** (1 / grid.rho), grid.sigma_min ** (1 / grid.rho)
    return (top + k * (bottom - top)) ** grid.rho


def _shifted_times(grid: Shifted, target: Schedule, steps: int) -> torch.Tensor:
    """The interior sigma_k of :class:`Shifted` as target times of equal log snr, log((1 - sigma) / sigma)."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[1:-1]
    sigma = grid.shift * s / (1 + (grid.shift - 1) * s)
    lam = torch.log1p(-sigma) - torch.log(sigma)
    return torch.cat([torch.zeros(1, dtype=torch.float64), target.time_of_log_snr(lam),
                      torch.ones(1, dtype=torch.float64)])


def _times_at_log_snrs(target: Schedule, lam: torch.Tensor) -> torch.Tensor:
    """t_k = t_target(lam_k) with the ends pinned to t_0 = 0 and t_N = 1."""
    times = target.time_of_log_snr(lam)
    times[0], times[-1] = 0.0, 1.0
    return times


def _checked_explicit_times(grid: GridSpec, target: Schedule, steps: int) -> torch.Tensor:
    """A sequence of times as a float64 CPU tensor, refused unless it has ``steps + 1`` finite, strictly
    increasing times in [0, 1] (starting at 0 on a point-mass schedule)."""
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
