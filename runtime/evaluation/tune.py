"""Training-free time-grid tuning (``lazyflow tune-grid``), in the spirit of Align Your Steps, GITS and LD3.

The N + 1 times t_0 < t_1 < ... < t_N = 1 of a grid for one (model, schedule, integrator, NFE) are fitted
against a high-accuracy reference on a few hundred samples.  The ends are fixed (t_0 from the initial
grid: 0, or t(first) of a ``logsnr-open`` grid for noise and score models; t_N = 1); the N - 1 interior
times are parameterised monotonically by the softmax of N increment logits with the last fixed at 0,

    t_k = t_0 + (1 - t_0) sum_{j<k} u_j,    u = softmax(theta_1, ..., theta_{N-1}, 0),

and ``theta`` is fitted by Nelder-Mead (derivative-free: ``sample`` runs under ``no_grad`` and the
coefficient tables are built with in-place edits and host-side checks, so they are not differentiated).

The loss uses common random numbers (the same ``seed`` for every trial grid, so it is a deterministic
function of the times):

- deterministic target (an ODE): L = mean_i |x_i - x_i^ref|^2 / d, x^ref the probability-flow ODE's end
  point from the same initial noise (Heun, ``reference_steps`` steps uniform in the source's time);
- stochastic target (an SDE, the point mass): the end point depends on every step's noise, so there is no
  pathwise reference; L = SW_2^2(x, x^ref), the squared sliced Wasserstein distance (``directions`` fixed
  random directions) between the few-step samples and the ODE reference samples of the same target
  distribution.

Both are also measured on a held-out seed (``holdout_seed``) before and after tuning.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import LazyflowError, SamplingError
from ..core.gridfile import TunedGrid
from ..core.grids import GridSpec, make_grid
from ..core.data_frame import without_skip
from ..core.integrators import get_integrator
from ..core.schedule import load_schedule
from ..core.call_counter import CallCounter
from .fitting import (check_budget, checked_holdout_seed, logits_from_times, reference_samples,
                      times_from_logits)

__all__ = ["tune_grid", "tune_grid_file", "tuned_summary", "grid_loss", "nelder_mead"]


def nelder_mead(f: Callable[[torch.Tensor], float], x0: torch.Tensor, step: float = 0.5, max_evals: int = 400,
                tol: float = 1e-6) -> tuple[torch.Tensor, float, int]:
    """Minimise ``f`` from ``x0`` by Nelder-Mead (reflection 1, expansion 2, contraction 1/2, shrink 1/2);
    stops after ``max_evals`` evaluations or when the simplex's values agree to ``tol`` (relative).
    Returns (best point, its value, evaluations)."""
    n = x0.numel()
    if n == 0:
        return x0.clone(), f(x0), 1
    points = [x0.clone()] + [x0 + step * torch.eye(n, dtype=x0.dtype)[i] for i in range(n)]
    values = [f(p) for p in points]
    evals = len(points)
    while evals < max_evals:
        order = sorted(range(n + 1), key=lambda i: values[i])
        points, values = [points[i] for i in order], [values[i] for i in order]
        best, worst = values[0], values[-1]
        if math.isfinite(worst) and worst - best <= tol * max(abs(best), 1e-12):
            break
        centre = torch.stack(points[:-1]).mean(0)
        reflected = centre + (centre - points[-1])
        fr = f(reflected)
        evals += 1
        if fr < values[0]:
            expanded = centre + 2 * (centre - points[-1])
            fe = f(expanded)
            evals += 1
            points[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            points[-1], values[-1] = reflected, fr
        else:
            inside = fr >= values[-1]
            contracted = centre + 0.5 * ((points[-1] if inside else reflected) - centre)
            fc = f(contracted)
            evals += 1
            if fc < min(fr, values[-1]):
                points[-1], values[-1] = contracted, fc
            else:   # shrink towards the best point
                for i in range(1, n + 1):
                    points[i] = points[0] + 0.5 * (points[i] - points[0])
                    values[i] = f(points[i])
                evals += n
    i = min(range(n + 1), key=lambda j: values[j])
    return points[i], values[i], evals


def sliced_w2(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """SW_2^2(a, b) = mean over unit directions v of mean_i (sort(a v)_i - sort(b v)_i)^2 (equal counts)."""
    pa, pb = (torch.sort(x.reshape(x.shape[0], -1).to(torch.float64) @ directions, 0).values for x in (a, b))
    return ((pa - pb) ** 2).mean()


def grid_loss(x: torch.Tensor, ref: torch.Tensor, stochastic: bool, directions: torch.Tensor) -> float:
    """The tuning loss: per-coordinate mean squared distance to the reference end points (ODE), or the
    squared sliced Wasserstein distance to the reference samples (SDE)."""
    if not torch.isfinite(x).all():
        return math.inf
    if stochastic:
        return float(sliced_w2(x, ref, directions))
    return float(((x.to(torch.float64) - ref.to(torch.float64)) ** 2).mean())


def tune_grid(model, *, model_name: str = "", schedule: Any = "pointmass", source: Any = "linear",
              prediction: str = "velocity", integrator: str = "multistep", nfe: int = 4, final_step: str | None = None,
              init: GridSpec = "logsnr", samples: int = 256, seed: int = 0, holdout_seed: int | None = None,
              reference_steps: int = 200, max_evals: int = 400, directions: int = 128,
              model_kwargs: dict[str, Any] | None = None, data_stats: Any = None,
              data_shape: tuple[int, ...] | None = None, log: Callable[[str], None] | None = None) -> TunedGrid:
    """Fit the interior times of a grid for ``integrator`` at ``nfe`` network evaluations (see the module's
    docstring); returns the :class:`TunedGrid` (save it with :func:`lazyflow.runtime.core.gridfile.save_grid_file`).
    ``init`` is the starting grid (its first and last times are kept); ``model_kwargs`` (the conditioning of the
    ``samples`` samples) and ``data_stats`` (a data frame's statistics) go to every run; ``data_shape``: the
    samples' shape where the model has no ``data_shape``."""
    start = time.perf_counter()
    say = log if log is not None else _silent
    target, src = load_schedule(schedule), load_schedule(source)
    method = get_integrator(integrator)
    if method.needs_solver_file:
        return _fit_solver(model, model_name, target, src, prediction, nfe, final_step, samples, seed, holdout_seed,
                           reference_steps, max_evals, model_kwargs, data_stats, data_shape, log)
    if (data_stats is not None and data_stats.first_call_mean) or str(init).startswith("logsnr-open:"):
        method = without_skip(method)   # the mean is read at t = 0, or the grid starts later: that call is made
    check_budget(nfe, samples)
    steps = _steps_within(method, nfe, final_step)
    holdout_seed = checked_holdout_seed(seed, holdout_seed)
    init_times = make_grid(target, src, steps, init)
    t0 = float(init_times[0])
    shape = (samples, *tuple(data_shape or model.data_shape))
    counter = CallCounter(model)
    loss = _GridLoss(counter, shape, steps, target.stochastic, _unit_directions(math.prod(shape[1:]), directions),
                     dict(schedule=target, source=src, integrator=method, final_step=final_step,
                          prediction=prediction, model_kwargs=model_kwargs, data_stats=data_stats))
    for s in (seed, holdout_seed):
        loss.references[s] = reference_samples(counter, shape, target, src, prediction, t0, s, reference_steps,
                                               model_kwargs=model_kwargs)
    ref_calls = counter.calls
    before = loss(init_times, seed)
    if not math.isfinite(before):
        raise LazyflowError(f"the initial grid {init!r} does not give finite samples; choose another --init")
    say(f"reference: Heun, {reference_steps} steps ({ref_calls // 2} model calls per seed); loss on the initial "
        f"grid {init}: {before:.6g}")
    times, after, evals = _fit_interior_times(loss, init_times, seed, before, max_evals, say)
    held_before, held_after = loss(init_times, holdout_seed), loss(times, holdout_seed)
    seconds = time.perf_counter() - start
    tuning = {"loss": _loss_description(target.stochastic), "init": str(init), "init_times": init_times.tolist(),
              "samples": samples, "seed": seed, "loss_before": before, "loss_after": after,
              "holdout_seed": holdout_seed, "holdout_loss_before": held_before, "holdout_loss_after": held_after,
              "reference": f"heun, {reference_steps} steps uniform in the source time", "evaluations": evals,
              "model_calls": counter.calls, "seconds": round(seconds, 2), "optimiser": "nelder-mead on softmax logits"}
    say(f"tuned in {seconds:.1f} s ({evals} trial grids, {counter.calls} model calls): loss {before:.6g} -> {after:.6g}; "
        f"held-out seed {holdout_seed}: {held_before:.6g} -> {held_after:.6g}")
    return TunedGrid(times=tuple(times.tolist()), schedule=target.describe(), integrator=get_integrator(integrator).name,
                     final_step=final_step or "euler", model=model_name, source=src.describe(), prediction=prediction,
                     nfe=method.nfe(steps, final_step or "euler"), diffusion_scale=target.diffusion_scale, tuning=tuning)


def _fit_solver(model, model_name, target, src, prediction, nfe, final_step, samples, seed, holdout_seed,
                reference_steps, iterations, model_kwargs, data_stats, data_shape, log) -> TunedGrid:
    """``integrator="bespoke"``: :func:`.bespoke_fit.fit_bespoke` (``max_evals`` is its number of Adam
    iterations), in the model's own schedule, ending at t = 1, without data statistics."""
    from .bespoke_fit import BespokeSettings, fit_bespoke

    if target.describe() != src.describe() or final_step not in (None, "euler") or data_stats is not None:
        raise LazyflowError(f"a bespoke solver is fitted in the model's own schedule ({src.describe()}), ends at "
                            f"t = 1 and takes no data statistics (got {target.describe()}, final step {final_step}, "
                            f"statistics {'given' if data_stats is not None else 'none'})")
    return fit_bespoke(model, model_name=model_name, source=src, prediction=prediction, nfe=nfe, samples=samples,
                       seed=seed, holdout_seed=holdout_seed, reference_steps=reference_steps,
                       model_kwargs=model_kwargs, data_shape=data_shape,
                       settings=BespokeSettings(iterations=iterations), log=log)


def _silent(text: str) -> None:
    """The log of a quiet tuning run: drops ``text``."""


def _steps_within(method, nfe: int, final_step: str | None) -> int:
    """The most steps N of ``method`` with nfe(N) <= ``nfe``; refused when even one step costs more."""
    steps = method.steps_for_nfe(nfe)
    if method.nfe(steps, final_step or "euler") > nfe:
        raise LazyflowError(f"{method.name} needs {method.nfe(steps, final_step or 'euler')} NFE for one step")
    return steps


def _unit_directions(dim: int, count: int) -> torch.Tensor:
    """``count`` fixed random unit directions v_j = g_j / |g_j| in R^dim (g_j ~ N(0, I), generator seed 1234),
    as the columns of a (dim, count) float64 matrix."""
    g = torch.Generator().manual_seed(1234)
    dirs = torch.randn(dim, count, generator=g, dtype=torch.float64)
    return dirs / dirs.norm(dim=0, keepdim=True)


def _loss_description(stochastic: bool) -> str:
    """What the tuning loss measures, for the grid file's record."""
    return ("sliced W2^2 to ODE reference samples" if stochastic else
            "mean squared distance to the ODE end points of the same noise")


class _GridLoss:
    """L(times, seed): :func:`grid_loss` of the samples drawn on the grid ``times`` from ``seed``'s noise
    against ``references[seed]``; inf when sampling fails."""

    def __init__(self, model: _Counting, shape: tuple[int, ...], steps: int, stochastic: bool,
                 directions: torch.Tensor, options: dict):
        self.model, self.shape, self.steps, self.options = model, shape, steps, options
        self.stochastic, self.directions = stochastic, directions
        self.references: dict[int, torch.Tensor] = {}

    def __call__(self, times: torch.Tensor, seed: int) -> float:
        from ..core.sampler import sample

        try:
            x = sample(self.model, self.shape, steps=self.steps, grid=times, seed=seed, **self.options)
        except SamplingError:
            return math.inf
        return grid_loss(x, self.references[seed], self.stochastic, self.directions)


def _fit_interior_times(loss: _GridLoss, init_times: torch.Tensor, seed: int, before: float, max_evals: int,
                        say: Callable[[str], None]) -> tuple[torch.Tensor, float, int]:
    """Nelder-Mead on theta = logits_from_times(init_times) minimising loss(times_from_logits(theta, t_0), seed),
    logging each improvement; the initial grid (loss ``before``) is kept if the fit is worse.
    Returns (times, their loss, evaluations)."""
    t0 = float(init_times[0])
    best = [before]

    def objective(theta: torch.Tensor) -> float:
        value = loss(times_from_logits(theta, t0), seed)
        if value < best[0]:
            best[0] = value
            say(f"  {value:.6g}  times {[round(v, 4) for v in times_from_logits(theta, t0).tolist()]}")
        return value

    theta, after, evals = nelder_mead(objective, logits_from_times(init_times), max_evals=max_evals)
    times = times_from_logits(theta, t0)
    if after > before:   # never worse than the start (Nelder-Mead keeps the best vertex, so this is a guard)
        times, after = init_times, before
    return times, after, evals


def tune_grid_file(model: str, out: str | Path, *, schedule: Any, prediction: str | None = None,
                   log: Callable[[str], None] | None = None, **tuning: Any) -> tuple[Path, TunedGrid]:
    """Tune a grid for ``model`` (from the model registry; ``prediction`` picks an exact model's output) in
    ``schedule`` (None: the model's own, where a bespoke solver is fitted) and write it to ``out`` (a ``.json`` file, refused before any work otherwise); ``tuning``
    are the settings of :func:`tune_grid` (integrator, nfe, init, ...)."""
    from ..core.gridfile import save_grid_file
    from ..models.registry import load_measured

    if not str(out).endswith(".json"):
        raise LazyflowError(f"--out must end in .json, got {str(out)!r}")
    loaded = load_measured(model, prediction)[1]
    grid = tune_grid(loaded.model, model_name=model, schedule=loaded.source if schedule is None else schedule,
                     source=loaded.source,
                     prediction=loaded.prediction, log=log, **tuning)
    return save_grid_file(grid, out), grid


def tuned_summary(path: Path, grid: TunedGrid) -> str:
    """The line that says what :func:`tune_grid_file` wrote: the grid, the losses before and after (tuning and
    held-out seeds) and the cost."""
    t = grid.tuning
    return (f"wrote {path}: {grid.steps} steps of {grid.schedule} for {grid.integrator} at {grid.nfe} NFE, times "
            f"{[round(v, 5) for v in grid.times]}; loss {t['loss_before']:.4g} -> {t['loss_after']:.4g} (seed {t['seed']}), "
            f"held-out seed {t['holdout_seed']}: {t['holdout_loss_before']:.4g} -> {t['holdout_loss_after']:.4g}; "
            f"cost {t['seconds']:.1f} s, {t['model_calls']} model calls")
