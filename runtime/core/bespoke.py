"""Bespoke solvers: a few-step solver fitted to one model (``lazyflow tune-grid --integrator bespoke``).

N network calls at times t_0 < ... < t_{N-1} (t_N = 1 ends the grid), each on a state that is a free
linear combination of the start and the velocities so far,

    v_k = F_k x_k + G_k model(x_k, t_k),        x_{k+1} = a_k x_0 + sum_{j <= k} w_kj v_j,        the sample is x_N,

in the model's own frame (the schedule it was trained on), v_k the velocity of that schedule's ODE read from
the model's own prediction by the runtime's conversion (:func:`velocity_coefficients`; (F, G) = (0, 1) for a
velocity model).  Euler, the midpoint rule and
every explicit Adams or Runge-Kutta method on a grid are points of this family (with a_k = 1 and w their
step weights for a velocity model); a fit moves the times, the a_k and the w_kj to bring x_N to the
model's own converged ODE solution from the same noise (in the spirit of the bespoke non-stationary
solvers of Shaul et al., 2024).  The weights travel in a tuned grid file (:class:`.gridfile.TunedGrid`,
``x0_weights`` and ``call_weights``) and run through :func:`bespoke_integrator`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import LazyflowError
from .discrete_schedule import is_discrete
from .frames import Frame, frame
from .gridfile import TunedGrid
from .plan import BuildContext, Call, Callback, Integrator, Loop, Ops, Plan, Tables, observe
from .schedule import Schedule

__all__ = ["BespokeCoefficients", "velocity_coefficients", "fitted_source", "bespoke_integrator", "integrator_for_grid", "holds_solver", "refuse_outside_sample", "midpoint_weights", "rk4_weights",
           "euler_weights", "BESPOKE"]

#: the name a bespoke solver runs under (``integrator="bespoke"`` with its grid file)
BESPOKE = "bespoke"


def velocity_coefficients(schedule: Schedule, prediction: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, G) at times t with v = F x + G m the velocity of ``schedule``'s probability-flow ODE, m the output of a
    ``prediction`` model trained on it: the drift of its own frame (:func:`.frames.frame`), F = K_x + K_e p,
    G = K_e q with eta_X = p x + q m; (0, 1) exactly for a velocity model (its output is that velocity).
    Differentiable in t (the fit moves the times)."""
    if prediction == "velocity":
        return torch.zeros_like(t), torch.ones_like(t)
    own = frame(schedule, schedule, prediction, t, ode=torch.ones_like(t, dtype=torch.bool))
    return own.drift_per_x, own.drift_per_output


def fitted_source(schedule: Schedule) -> str:
    """The source schedule a solver file records: ``describe()``, with the table's digest for a discrete one (its
    name, e.g. ``discrete-scaled_linear``, does not identify the table; a run's manifest records it so too)."""
    return f"{schedule.describe()} table {schedule.kernel.digest}" if is_discrete(schedule) else schedule.describe()


@dataclass(frozen=True)
class BespokeCoefficients(Tables):
    """v_k = velocity_per_x[k] x_k + velocity_per_output[k] m_k (the source ODE's velocity from call k's output),
    x_{k+1} = x0_weight[k] x_0 + sum_{j <= k} call_weight[k, j] v_j (``call_weight`` lower triangular;
    ``call_weight[k, j]`` multiplies the velocity of call j in the state of call k + 1)."""

    x0_weight: torch.Tensor          # (steps,)
    call_weight: torch.Tensor        # (steps, steps)
    velocity_per_x: torch.Tensor     # (steps,)
    velocity_per_output: torch.Tensor  # (steps,)

    STATE = ("x0_weight", "velocity_per_x")

    def loop(self, x: torch.Tensor, plan: Plan, noise: Callable[[int], torch.Tensor], ops: Ops,
             callback: Callback | None, progress: Callable[[int], None] | None) -> Loop:
        """One call per step; each state is the start's and the calls' combination of its row."""
        x0, calls, now = x, [], plan.now
        for k in range(plan.steps):
            m = yield Call.at(now, k, x)
            if callback is not None:
                observe(callback, plan, k, x, now.eta(k, x, m))
            calls.append(self.velocity_per_x[k] * x + self.velocity_per_output[k] * m)
            x = self.x0_weight[k] * x0
            for j, m_j in enumerate(calls):
                x = x + self.call_weight[k, j] * m_j
            if progress is not None:
                progress(1)
        return x

    def denoised(self, now: Frame) -> "BespokeCoefficients":
        raise LazyflowError("a bespoke solver was fitted to end at t = 1: final_step='denoise' is not for it")


@dataclass(frozen=True)
class _SolverTables:
    """The builder of one fitted solver (hashable, so equal solvers share a cached plan)."""

    times: tuple[float, ...]
    x0_weights: tuple[float, ...]
    call_weights: tuple[tuple[float, ...], ...]
    prediction: str
    source: str

    def __call__(self, context: BuildContext) -> BespokeCoefficients:
        t = context.t
        if t.numel() != len(self.times) or not torch.allclose(t.cpu(), torch.tensor(self.times, dtype=t.dtype), atol=1e-12):
            raise LazyflowError("a bespoke solver runs on the times it was fitted on (steps and grid from its file)")
        now, source = context.now, fitted_source(context.source)
        if self.source and source != self.source:
            raise LazyflowError(f"a bespoke solver runs on the model it was fitted for: it was fitted on source "
                                f"schedule {self.source}, prediction {self.prediction!r}; this model's source is "
                                f"{source}, prediction {context.prediction!r}: fit one for it")
        if context.prediction != self.prediction or not (torch.allclose(now.tau, t[:-1]) and
                                                        torch.allclose(now.in_scale, torch.ones_like(now.in_scale))):
            raise LazyflowError(f"a bespoke solver runs in the frame it was fitted in: schedule = the model's source "
                                f"schedule, prediction {self.prediction!r} (got {context.target.describe()} on "
                                f"{context.source.describe()}, {context.prediction!r})")
        steps = len(self.x0_weights)
        w = torch.zeros(steps, steps, dtype=t.dtype, device=t.device)
        for k, row in enumerate(self.call_weights):
            w[k, :k + 1] = torch.tensor(row, dtype=t.dtype)
        per_x, per_output = velocity_coefficients(context.source, self.prediction, t[:-1])
        return BespokeCoefficients(x0_weight=torch.tensor(self.x0_weights, dtype=t.dtype, device=t.device),
                                   call_weight=w, velocity_per_x=per_x, velocity_per_output=per_output)


def _needs_file(context: BuildContext) -> BespokeCoefficients:
    raise LazyflowError("integrator 'bespoke' runs a fitted solver: give its file as the grid (grid='solver.json', "
                        "--grid solver.json; lazyflow tune-grid --integrator bespoke writes one)")


#: the registered name: its tables come from a solver file (:func:`integrator_for_grid`)
BESPOKE_PLACEHOLDER = Integrator(name=BESPOKE, order=1, build=_needs_file, needs_solver_file=True,
                                 description="a solver fitted to the model (its grid file holds the weights)")


def bespoke_integrator(grid: TunedGrid) -> Integrator:
    """The integrator that runs the solver held in ``grid`` (its times, x0_weights and call_weights)."""
    if not grid.x0_weights:
        raise LazyflowError(f"{grid.describe()}: holds no bespoke solver (tuned for {grid.integrator!r})")
    return Integrator(name=BESPOKE, order=1, needs_solver_file=True, description=f"bespoke solver {grid.path or '(in memory)'}",
                      build=_SolverTables(grid.times, grid.x0_weights, grid.call_weights, grid.prediction,
                                                         grid.source))


def integrator_for_grid(method: Integrator, grid: object) -> Integrator:
    """The integrator a run uses on ``grid``: a solver file's own (asked for as ``bespoke``), else ``method``;
    a solver file under another integrator, or ``bespoke`` without one, is refused."""
    has_weights = isinstance(grid, TunedGrid) and bool(grid.x0_weights)
    if has_weights and method.name != BESPOKE:
        raise LazyflowError(f"{grid.describe()} holds a bespoke solver: run it with integrator 'bespoke', "
                            f"not {method.name!r}")
    return bespoke_integrator(grid) if has_weights else method


def holds_solver(method: Integrator) -> bool:
    """Whether ``method`` runs a solver read from its file (not the registered placeholder)."""
    return isinstance(method.build, _SolverTables)


def refuse_outside_sample(method: Integrator, where: str) -> None:
    """One line for an integration that has its own grid (k-diffusion's or ComfyUI's sigmas)."""
    if method.needs_solver_file:
        raise LazyflowError(f"{where}: a bespoke solver runs on the times it was fitted on, which this integration "
                            "does not take; sample it with lazyflow.sample or lazyflow sample --integrator bespoke "
                            "--grid FILE.json")


def euler_weights(times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, w) of Euler on ``times`` for a velocity model: x_{k+1} = x_0 + sum_{j <= k} h_j m_j."""
    h = (times[1:] - times[:-1]).to(torch.float64)
    n = h.numel()
    w = torch.tril(h.expand(n, n).clone())
    return torch.ones(n, dtype=torch.float64), w


def midpoint_weights(steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(times, a, w) of the midpoint rule of steps / 2 uniform steps of size h for a velocity model, as
    ``steps`` calls on the uniform grid of step h / 2: x~ = x + h/2 m(x), x' = x + h m(x~)."""
    if steps % 2:
        raise LazyflowError(f"the midpoint rule makes two calls a step: {steps} calls is not a whole number of steps")
    h = 2.0 / steps
    w = torch.zeros(steps, steps, dtype=torch.float64)
    for k in range(steps):
        for r in range(k // 2):
            w[k, 2 * r + 1] = h           # the full steps taken so far, each with its midpoint's call
        w[k, k] = h / 2 if k % 2 == 0 else h
    return torch.linspace(0, 1, steps + 1, dtype=torch.float64), torch.ones(steps, dtype=torch.float64), w


def rk4_weights(steps: int, gap: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(times, a, w) of classic RK4 with steps / 4 uniform steps of size H for a velocity model: per step
    k1 at (x, t), k2 at (x + H/2 k1, t + H/2), k3 at (x + H/2 k2, t + H/2), k4 at (x + H k3, t + H),
    x' = x + H/6 (k1 + 2 k2 + 2 k3 + k4).  The times of a solver file increase strictly and its last call is
    before t = 1, so calls that RK4 makes at one time are ``gap`` H apart (k3 after k2, k4 before the next
    step's k1): RK4 up to O(gap H) in each stage's time."""
    if steps % 4:
        raise LazyflowError(f"RK4 makes four calls a step: {steps} calls is not a whole number of steps")
    h, eps = 4.0 / steps, gap * 4.0 / steps
    w = torch.zeros(steps, steps, dtype=torch.float64)
    times = []
    for s in range(steps // 4):
        k = 4 * s
        times += [s * h, s * h + h / 2 - eps, s * h + h / 2 + eps, (s + 1) * h - eps]
        for r in range(s):              # the state at the step's start: the steps taken so far
            w[k:k + 4, 4 * r:4 * r + 4] = torch.tensor([1, 2, 2, 1], dtype=torch.float64) * h / 6
        w[k, k], w[k + 1, k + 1], w[k + 2, k + 2] = h / 2, h / 2, h
        w[k + 3, k:k + 4] = torch.tensor([1, 2, 2, 1], dtype=torch.float64) * h / 6
    times = torch.tensor([*times, 1.0], dtype=torch.float64)
    return times, torch.ones(steps, dtype=torch.float64), w
