"""Fitting a bespoke solver (:mod:`lazyflow.runtime.core.bespoke`) to one model: ``tune-grid --integrator bespoke``.

Any deterministic model the runtime converts: the solver combines the velocities of the source schedule's ODE,
read from the model's own prediction by :func:`~lazyflow.runtime.core.bespoke.velocity_coefficients` (noise, x,
score or velocity, on any deterministic source, a discrete diffusion table among them), and starts from alpha(t_0)
times the noise at t_0 = 0, or at a discrete table's noisiest training timestep (where diffusers' schedulers start),
or, for a noise or score model that would start at snr = 0 (it says nothing there), at the time of log snr
:data:`OPEN_START_LOG_SNR`.

Parameters: the interior call times (t_k = t_0 + (1 - t_0) cumsum(softmax(theta, 0)) as in :mod:`.tune`, t_0
and t_N = 1 fixed), log a_k and the lower-triangular w_kj.  Start: of the solvers of :mod:`.bespoke_starts` (Euler and
DPM-Solver++(2M) on five grids, and on a discrete table its Karras sigmas; the midpoint rule, RK4), the one of the lowest loss.  Loss: the path, mean_i |x_N,i - x*_i| (L2 over each sample), x* the model's
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
from ...predictions import SILENT_AT_SNR_0, check_prediction
from ..core.bespoke import BESPOKE, fitted_source, velocity_coefficients
from ..core.gridfile import TunedGrid
from ..core.noise import CounterNormal
from ..core.sampler import per_sample_kwargs
from ..core.schedule import load_schedule
from .bespoke_starts import bespoke_starts
from .paths import reference_frame
from ..core.call_counter import CallCounter
from ..core.discrete_schedule import is_discrete, noisiest_training_time
from .fitting import check_budget, checked_holdout_seed, logits_from_times, reference_samples, \
    times_from_logits

__all__ = ["fit_bespoke", "BespokeSettings", "OPEN_START_LOG_SNR", "start_time"]

#: where a noise or score model's solver starts: the first log snr of the bench's open grid (``logsnr-open:-5,3``,
#: where its classic integrators start on such a model)
OPEN_START_LOG_SNR = -5.0


@dataclass(frozen=True, kw_only=True)
class BespokeSettings:
    """How a bespoke solver is fitted (see the module's docstring).  Iterations, batch and lr were chosen on one
    problem (the bn-mlp28 test bed at 4 NFE: 600 iterations at lr 1e-2 fitted 0.340, 1,200 at 3e-3 0.350, 400 at
    3e-3 0.395) and are reported on the others; the cosine decay of the rate and the step back on gmm:2601,dim=1024
    at 4 NFE (256 noises, 3,000 iterations; path on the bench's held-out noise: constant rate 2.09, cosine 1.93,
    cosine with the step back 1.89)."""

    iterations: int = 600
    batch: int = 64
    lr: float = 1e-2
    check_every: int = 50
    #: "constant", or "cosine": lr_i = lr (1 + cos(pi i / iterations)) / 2, falling to 0 at the last iteration
    lr_schedule: str = "cosine"
    #: at a check whose full-set path exceeds this multiple of the best, go back to the best iterate, halve the
    #: rate and restart Adam's moments (None: never); on gmm4096 at 4 NFE a constant 1e-2 jumped from 6.6 to 20
    #: at iteration 550 and the cosine decay settled at 7.5
    backtrack: float | None = 1.5


class _Solver(torch.nn.Module):
    """The fitted parameters and the solver they define (differentiable through the model's calls) on the velocity
    of ``source``'s ODE read from a ``prediction`` model's output."""

    def __init__(self, times: torch.Tensor, a: torch.Tensor, w: torch.Tensor, source: Any, prediction: str):
        super().__init__()
        self.t0, self.source, self.prediction = float(times[0]), source, prediction
        self.theta = torch.nn.Parameter(logits_from_times(times).to(torch.float32))
        self.log_a = torch.nn.Parameter(torch.log(a).to(torch.float32))
        self.w = torch.nn.Parameter(w.to(torch.float32))
        self.register_buffer("mask", torch.tril(torch.ones_like(w, dtype=torch.bool)))

    def times(self) -> torch.Tensor:
        return times_from_logits(self.theta, self.t0)

    def forward(self, model: Callable, x0: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """v_k = F_k x_k + G_k model(x_k, t_k), x_{k+1} = a_k x_0 + sum_{j <= k} w_kj v_j."""
        times = self.times()
        per_x, per_output = (c.to(x0.dtype) for c in velocity_coefficients(self.source, self.prediction, times[:-1]))
        t, a, w = times.to(x0.dtype), self.log_a.exp().to(x0.dtype), (self.w * self.mask).to(x0.dtype)
        x, calls = x0, []
        for k in range(a.numel()):
            m = model(x, t[k].expand(x0.shape[0]), **kwargs).to(x0.dtype)
            calls.append(per_x[k] * x + per_output[k] * m)
            x = a[k] * x0 + sum(w[k, j] * m for j, m in enumerate(calls))
        return x


def _path(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - ref).flatten(1).norm(dim=1).mean()


class _Problem:
    """The fit's data: per seed the start states x_0 and the reference end points x*, the conditioning, and
    the counted model; ``path(solver, seed)`` is the loss on every sample of that seed."""

    def __init__(self, model, src, prediction: str, t0: float, shape: tuple[int, ...], seeds: tuple[int, ...],
                 reference_steps: int, model_kwargs: dict[str, Any] | None):
        self.counter, self.kwargs, self.samples = CallCounter(model), dict(model_kwargs or {}), shape[0]
        alpha0 = float(src.values(torch.full((1,), t0, dtype=torch.float64)).alpha[0])
        self.refs = {s: reference_samples(self.counter, shape, src, src, prediction, t0, s, reference_steps,
                                          model_kwargs=model_kwargs).to(torch.float32) for s in seeds}
        self.starts = {s: CounterNormal(s, range(shape[0]), shape[1:])(0) * alpha0 for s in seeds}

    def path(self, solver: _Solver, seed: int) -> float:
        with torch.no_grad():
            return float(_path(solver(self.counter, self.starts[seed], self.kwargs), self.refs[seed]))

    def train(self, solver: _Solver, seed: int, settings: BespokeSettings, say: Callable[[str], None]) -> float:
        """Adam on minibatches of ``seed``'s samples, at the rate lr (1 + cos(pi i / iterations)) / 2 (cosine) or
        lr, times 2^-b after b steps back (``settings.backtrack``); the solver is left at the iterate of the
        lowest full-set path, which is returned."""
        best, best_state = self.path(solver, seed), _copy(solver)
        parameters, scale = list(solver.parameters()), 1.0
        optimiser = torch.optim.Adam(parameters, lr=settings.lr)
        generator = torch.Generator().manual_seed(seed)
        for it in range(1, settings.iterations + 1):
            index = torch.randperm(self.samples, generator=generator)[:min(settings.batch, self.samples)]
            with torch.enable_grad():   # the gradient of the solver's parameters only: the model's are left alone
                x = solver(self.counter, self.starts[seed][index], per_sample_kwargs(self.kwargs, self.samples, index))
                loss = _path(x, self.refs[seed][index])
                if not torch.isfinite(loss):
                    say(f"  iteration {it}: the loss is not finite; stopping at the best iterate")
                    break
                for p, g in zip(parameters, torch.autograd.grad(loss, parameters, allow_unused=True)):
                    p.grad = torch.zeros_like(p) if g is None else g
            decay = (1 + math.cos(math.pi * (it - 1) / settings.iterations)) / 2 if settings.lr_schedule == "cosine" else 1
            optimiser.param_groups[0]["lr"] = settings.lr * scale * decay
            optimiser.step()
            if it % settings.check_every == 0 or it == settings.iterations:
                value = self.path(solver, seed)
                if value < best:
                    best, best_state = value, _copy(solver)
                elif settings.backtrack is not None and value > settings.backtrack * best:
                    solver.load_state_dict(best_state)
                    scale, optimiser = scale / 2, torch.optim.Adam(parameters, lr=settings.lr * scale / 2)
                    say(f"  iteration {it}: path {value:.6g}: back to the best iterate, the rate halved")
                    continue
                say(f"  iteration {it}: path {value:.6g} (best {best:.6g})")
        solver.load_state_dict(best_state)
        return best


def _copy(solver: _Solver) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in solver.state_dict().items()}


def fit_bespoke(model, *, model_name: str = "", source: Any = "linear", prediction: str = "velocity",
                nfe: int = 4, samples: int = 128, seed: int = 0, holdout_seed: int | None = None,
                reference_steps: int = 200, model_kwargs: dict[str, Any] | None = None,
                data_shape: tuple[int, ...] | None = None, settings: BespokeSettings = BespokeSettings(),
                log: Callable[[str], None] | None = None) -> TunedGrid:
    """Fit a bespoke solver of ``nfe`` calls to ``model`` (a ``prediction`` model of the deterministic schedule
    ``source``, converted to that schedule's ODE velocity) on ``samples`` samples of ``seed``'s noise; returns it
    as a :class:`TunedGrid` (integrator ``bespoke``) that records the source and prediction it was fitted for."""
    start = time.perf_counter()
    say = log or (lambda text: None)
    src = load_schedule(source)
    check_prediction(prediction, known=src.kernel.PREDICTIONS)
    if src.stochastic or bool(src.point_mass):
        raise LazyflowError("a bespoke solver is fitted to a model of a deterministic schedule with alpha_0 = 1 "
                            f"(got {prediction!r} on {src.describe()})")
    check_budget(nfe, samples)
    holdout_seed = checked_holdout_seed(seed, holdout_seed)
    t0 = start_time(src, prediction)
    shape = (samples, *tuple(data_shape or model.data_shape))
    problem = _Problem(model, src, prediction, t0, shape, (seed, holdout_seed), reference_steps, model_kwargs)
    ref_calls = problem.counter.calls
    starts = bespoke_starts(nfe, src, t0)
    tried = {name: problem.path(_Solver(*tables, src, prediction), seed) for name, tables in starts.items()}
    init = min(tried, key=lambda name: tried[name] if math.isfinite(tried[name]) else math.inf)
    solver = _Solver(*starts[init], src, prediction)
    before, held_before = tried[init], problem.path(solver, holdout_seed)
    if not math.isfinite(before):
        raise LazyflowError(f"the starting solver ({init}) does not give finite samples on this model")
    say(f"reference: Heun, {reference_steps} steps ({ref_calls // 2} model calls per seed); paths of the starts: "
        + ", ".join(f"{name} {value:.6g}" for name, value in tried.items()) + f"; fitting from {init}")
    best = problem.train(solver, seed, settings, say)
    held_after = problem.path(solver, holdout_seed)
    seconds = time.perf_counter() - start
    calls = problem.counter.calls
    tuning = {"loss": "mean path |x - x*| to the ODE end points of the same noise", "init": init, "starts": tried,
              "samples": samples, "seed": seed, "loss_before": before, "loss_after": best,
              "holdout_seed": holdout_seed, "holdout_loss_before": held_before, "holdout_loss_after": held_after,
              "reference": f"heun, {reference_steps} steps uniform in the {_clock(src)} time",
              "optimiser": f"adam lr {settings.lr:g} ({settings.lr_schedule}, back at {settings.backtrack}), "
                           f"{settings.iterations} iterations of "
                           f"{min(settings.batch, samples)} samples", "model_calls": calls, "seconds": round(seconds, 2)}
    say(f"fitted in {seconds:.1f} s ({calls} model calls, each also differentiated): path {before:.6g} -> "
        f"{best:.6g}; held-out seed {holdout_seed}: {held_before:.6g} -> {held_after:.6g}")
    return _as_grid(solver, model_name, nfe, tuning)


def _clock(src: Any) -> str:
    """Whose time the reference's steps are uniform in (:func:`.fitting.reference_samples`)."""
    clock = reference_frame(src)
    return "source" if clock is src else f"{clock.describe()} (a discrete table's ODE)"


def start_time(src: Any, prediction: str) -> float:
    """t_0: on a discrete table its noisiest training timestep (where diffusers' schedulers start; the table's
    virtual pure-noise end before it was never a training input), elsewhere 0; for a noise or score model
    where that is snr 0 (it says nothing there; any continuous schedule's t = 0), the time of log snr
    :data:`OPEN_START_LOG_SNR`."""
    silent_at_snr_0 = prediction in SILENT_AT_SNR_0
    if is_discrete(src):
        t0 = noisiest_training_time(src)
        if not silent_at_snr_0 or bool(torch.isfinite(src.log_snr(torch.tensor([t0], dtype=torch.float64))).all()):
            return t0
    elif not silent_at_snr_0:
        return 0.0
    return float(src.time_of_log_snr(torch.tensor([OPEN_START_LOG_SNR], dtype=torch.float64))[0])


def _as_grid(solver: _Solver, model_name: str, nfe: int, tuning: dict[str, Any]) -> TunedGrid:
    """The fitted solver as a grid file's contents: its times (t_N = 1), a_k and the rows w_k0 ... w_kk, in the
    source schedule's time, with the source (its table's digest for a discrete one) and prediction it was fitted
    for."""
    times = solver.times().detach().to(torch.float64)
    times[-1] = 1.0
    a = solver.log_a.detach().exp().to(torch.float64)
    w = (solver.w.detach() * solver.mask).to(torch.float64)
    return TunedGrid(times=tuple(times.tolist()), schedule=solver.source.describe(), integrator=BESPOKE,
                     model=model_name, source=fitted_source(solver.source), prediction=solver.prediction, nfe=nfe, tuning=tuning, x0_weights=tuple(a.tolist()),
                     call_weights=tuple(tuple(w[k, :k + 1].tolist()) for k in range(nfe)))
