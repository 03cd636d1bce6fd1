"""Fitting a bespoke solver (:mod:`lazyflow.runtime.core.bespoke`) to one model: ``tune-grid --integrator bespoke``.

Parameters: the interior call times (t_k = cumsum(softmax(theta, 0)) as in :mod:`.tune`, t_0 = 0 and
t_N = 1 fixed), log a_k and the lower-triangular w_kj.  Start: of Euler, the midpoint rule (an even number
of calls) and RK4 (a multiple of 4) on a uniform grid, the one of the lowest loss.  Loss: the path, mean_i |x_N,i - x*_i| (L2 over each sample), x* the model's
own ODE solution from the same noise (Heun, ``reference_steps`` steps), on ``samples`` samples of ``seed``'s
noise; Adam on minibatches of ``batch`` samples through the model (its parameters are not touched), keeping
the iterate of the lowest full-set loss (checked every ``check_every`` iterations).  The held-out seed's loss
before and after goes in the file's record.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...errors import LazyflowError
from ..core.bespoke import BESPOKE, euler_weights, midpoint_weights, rk4_weights
from ..core.gridfile import TunedGrid
from ..core.noise import CounterNormal
from ..core.schedule import load_schedule
from .fitting import CallCounter, check_budget, checked_holdout_seed, logits_from_times, reference_samples, \
    times_from_logits

__all__ = ["fit_bespoke", "BespokeSettings"]


@dataclass(frozen=True, kw_only=True)
class BespokeSettings:
    """How a bespoke solver is fitted (see the module's docstring).  The defaults were chosen on one problem
    (the bn-mlp28 test bed at 4 NFE: 600 iterations at lr 1e-2 fitted 0.340, 1,200 at 3e-3 0.350, 400 at 3e-3
    0.395) and are reported on the others."""

    iterations: int = 600
    batch: int = 64
    lr: float = 1e-2
    check_every: int = 50


def _starts(nfe: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The starting solvers (times, a, w) that fit ``nfe`` calls: Euler, the midpoint rule (even), RK4 (a
    multiple of 4), each on a uniform grid."""
    times = torch.linspace(0, 1, nfe + 1, dtype=torch.float64)
    out = {"euler, uniform": (times, *euler_weights(times))}
    if nfe % 2 == 0:
        out["midpoint, uniform"] = midpoint_weights(nfe)
    if nfe % 4 == 0:
        out["rk4, uniform"] = rk4_weights(nfe)
    return out


class _Solver(torch.nn.Module):
    """The fitted parameters and the solver they define (differentiable through the model's calls)."""

    def __init__(self, times: torch.Tensor, a: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.theta = torch.nn.Parameter(logits_from_times(times).to(torch.float32))
        self.log_a = torch.nn.Parameter(torch.log(a).to(torch.float32))
        self.w = torch.nn.Parameter(w.to(torch.float32))
        self.register_buffer("mask", torch.tril(torch.ones_like(w, dtype=torch.bool)))

    def times(self) -> torch.Tensor:
        return times_from_logits(self.theta, 0.0)

    def forward(self, model: Callable, x0: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """x_{k+1} = a_k x_0 + sum_{j <= k} w_kj model(x_j, t_j)."""
        t, a, w = self.times().to(x0.dtype), self.log_a.exp().to(x0.dtype), (self.w * self.mask).to(x0.dtype)
        x, calls = x0, []
        for k in range(a.numel()):
            calls.append(model(x, t[k].expand(x0.shape[0]), **kwargs).to(x0.dtype))
            x = a[k] * x0 + sum(w[k, j] * m for j, m in enumerate(calls))
        return x


def _path(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - ref).flatten(1).norm(dim=1).mean()


def _rows(kwargs: dict[str, Any], index: torch.Tensor, n: int) -> dict[str, Any]:
    return {k: v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v for k, v in kwargs.items()}


def fit_bespoke(model, *, model_name: str = "", source: Any = "linear", prediction: str = "velocity",
                nfe: int = 4, samples: int = 128, seed: int = 0, holdout_seed: int | None = None,
                reference_steps: int = 200, model_kwargs: dict[str, Any] | None = None,
                data_shape: tuple[int, ...] | None = None, settings: BespokeSettings = BespokeSettings(),
                log: Callable[[str], None] | None = None) -> TunedGrid:
    """Fit a bespoke solver of ``nfe`` calls to ``model`` (a velocity model of schedule ``source``) on
    ``samples`` samples of ``seed``'s noise; returns it as a :class:`TunedGrid` (integrator ``bespoke``)."""
    start = time.perf_counter()
    say = log or (lambda text: None)
    src = load_schedule(source)
    if prediction != "velocity" or src.stochastic or bool(src.point_mass):
        raise LazyflowError("a bespoke solver is fitted to a velocity model of a deterministic schedule "
                            f"(got {prediction!r} on {src.describe()})")
    check_budget(nfe, samples)
    holdout_seed = checked_holdout_seed(seed, holdout_seed)
    shape = (samples, *tuple(data_shape or model.data_shape))
    counter = CallCounter(model)
    kwargs = dict(model_kwargs or {})
    refs, starts = {}, {}
    for s in (seed, holdout_seed):
        refs[s] = reference_samples(counter, shape, src, src, prediction, 0.0, s, reference_steps,
                                    model_kwargs=model_kwargs).to(torch.float32)
        starts[s] = CounterNormal(s, range(samples), shape[1:])(0) * float(src.values(torch.zeros(1, dtype=torch.float64)).alpha[0])
    ref_calls = counter.calls

    def loss_on(s: int) -> float:
        with torch.no_grad():
            return float(_path(solver(counter, starts[s], kwargs), refs[s]))

    tried = {}
    for init, start_tables in _starts(nfe).items():
        solver = _Solver(*start_tables)
        tried[init] = loss_on(seed)
    init = min(tried, key=lambda name: tried[name] if math.isfinite(tried[name]) else math.inf)
    solver = _Solver(*_starts(nfe)[init])
    before, held_before = tried[init], loss_on(holdout_seed)
    if not math.isfinite(before):
        raise LazyflowError(f"the starting solver ({init}) does not give finite samples on this model")
    best, best_state = before, {k: v.detach().clone() for k, v in solver.state_dict().items()}
    say(f"reference: Heun, {reference_steps} steps ({ref_calls // 2} model calls per seed); paths of the starts: "
        + ", ".join(f"{name} {value:.6g}" for name, value in tried.items()) + f"; fitting from {init}")
    optimiser = torch.optim.Adam(solver.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    batch = min(settings.batch, samples)
    parameters = list(solver.parameters())
    for it in range(1, settings.iterations + 1):
        index = torch.randperm(samples, generator=generator)[:batch]
        with torch.enable_grad():   # the gradient of the solver's parameters only: the model's are left alone
            loss = _path(solver(counter, starts[seed][index], _rows(kwargs, index, samples)), refs[seed][index])
            if not torch.isfinite(loss):
                say(f"  iteration {it}: the loss is not finite; stopping at the best iterate")
                break
            for p, g in zip(parameters, torch.autograd.grad(loss, parameters, allow_unused=True)):
                p.grad = torch.zeros_like(p) if g is None else g
        optimiser.step()
        if it % settings.check_every == 0 or it == settings.iterations:
            value = loss_on(seed)
            if value < best:
                best, best_state = value, {k: v.detach().clone() for k, v in solver.state_dict().items()}
            say(f"  iteration {it}: path {value:.6g} (best {best:.6g})")
    solver.load_state_dict(best_state)
    held_after = loss_on(holdout_seed)
    seconds = time.perf_counter() - start
    fitted_times = solver.times().detach().to(torch.float64)
    fitted_times[-1] = 1.0
    a_fit = solver.log_a.detach().exp().to(torch.float64)
    w_fit = (solver.w.detach() * solver.mask).to(torch.float64)
    tuning = {"loss": "mean path |x - x*| to the ODE end points of the same noise", "init": init, "starts": tried,
              "samples": samples, "seed": seed, "loss_before": before, "loss_after": best,
              "holdout_seed": holdout_seed, "holdout_loss_before": held_before, "holdout_loss_after": held_after,
              "reference": f"heun, {reference_steps} steps uniform in the source time",
              "optimiser": f"adam lr {settings.lr:g}, {settings.iterations} iterations of {batch} samples",
              "model_calls": counter.calls, "seconds": round(seconds, 2)}
    say(f"fitted in {seconds:.1f} s ({counter.calls} model calls, each also differentiated): path {before:.6g} -> "
        f"{best:.6g}; held-out seed {holdout_seed}: {held_before:.6g} -> {held_after:.6g}")
    return TunedGrid(times=tuple(fitted_times.tolist()), schedule=src.describe(), integrator=BESPOKE,
                     model=model_name, source=src.describe(), prediction=prediction, nfe=nfe, tuning=tuning,
                     x0_weights=tuple(a_fit.tolist()),
                     call_weights=tuple(tuple(w_fit[k, :k + 1].tolist()) for k in range(nfe)))
