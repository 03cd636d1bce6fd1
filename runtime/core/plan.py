"""What every integrator is made of: the affine updates, the network call a loop asks for, the
driver that answers it, :class:`Tables` (an integrator's named per-grid coefficients and the step that
reads them), what a coefficient builder gets (:class:`BuildContext`), the :class:`Integrator` registry
entry and the :class:`Plan` of a run.

An integrator is a :class:`Tables` subclass: its fields are the coefficients, computed once per grid
(each of shape (steps, *trailing), where the trailing shape broadcasts against one sample's shape: ()
for a per-step scalar, (C, 1, 1) per channel, the sample's own shape per element, (d,) per direction of
a rotated state), and its :meth:`Tables.step` is the update written as its formula.  The integrators
themselves are in :mod:`lazyflow.runtime.core.integrators`, :mod:`lazyflow.runtime.core.data_frame` and
:mod:`lazyflow.runtime.core.bespoke`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Generator, NamedTuple

import torch

from ...errors import LazyflowError
from .data_stats import ConditionalStats, DataStats
from .frames import Frame, frame
from .schedule import Schedule

__all__ = ["affine", "two_point", "Ops", "EAGER", "compiled_ops", "Call", "Loop", "Step", "StepInfo", "Callback",
           "drive", "observe", "Tables", "BuildContext", "Integrator", "Plan"]


# --- one step's arithmetic and the network call it asks for -----------------------------------------

def affine(x, m, keep_x, from_output, noise_scale, xi):
    """x' = keep_x x + from_output m + noise_scale xi."""
    return keep_x * x + from_output * m + noise_scale * xi


def two_point(x, m, x_stage, m_stage, keep_x, from_output, from_stage_x, from_stage_output, noise_scale, xi):
    """x' = keep_x x + from_output m + from_stage_x x~ + from_stage_output m~ + noise_scale xi."""
    return keep_x * x + from_output * m + from_stage_x * x_stage + from_stage_output * m_stage + noise_scale * xi


class Ops(NamedTuple):
    """The two updates a loop applies (eager, or compiled by :func:`compiled_ops`)."""

    affine: Callable[..., torch.Tensor]
    two_point: Callable[..., torch.Tensor]


EAGER = Ops(affine, two_point)


def compiled_ops() -> Ops:
    """The updates through ``torch.compile`` (each fuses its multiply-adds into one kernel)."""
    return Ops(torch.compile(affine), torch.compile(two_point))


class Call(NamedTuple):
    """A network evaluation the loop asks for: the model sees ``x * in_scale`` at source time ``tau``."""

    x: torch.Tensor
    tau: torch.Tensor
    in_scale: torch.Tensor
    step: int

    def model_input(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(x * in_scale, tau per sample) in the model's ``dtype``: the frame's rescaling c(t)^-1 and time map tau(t)."""
        return (self.x * self.in_scale).to(dtype), self.tau.to(dtype).expand(self.x.shape[0])

    @classmethod
    def at(cls, where: Frame, k: int, x: torch.Tensor) -> "Call":
        """The call on state x at step k's time of the frame ``where``."""
        return cls(x, where.tau[k], where.in_scale[k], k)


#: a whole run: yields the network calls it needs, is sent their outputs, returns the final state
Loop = Generator[Call, torch.Tensor, torch.Tensor]
#: one step: the same, returning the state at the step's end
Step = Generator[Call, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What a per-step callback sees at step k, before the step: target time t, state x, the
    converted eta_X(t, x) and the drift b(t, x) of the sampling frame."""

    step: int
    t: float
    x: torch.Tensor
    eta_x: torch.Tensor
    drift: torch.Tensor


Callback = Callable[[StepInfo], None]


def drive(loop: Loop, evaluate: Callable[[Call], torch.Tensor]) -> torch.Tensor:
    """Run a loop to its end, answering each Call with ``evaluate(call)``; returns the final state.  The
    loops are generators so that one loop serves ``sample`` (which calls the model itself) and a
    scheduler that a pipeline calls once per network evaluation."""
    try:
        call = next(loop)
        while True:
            call = loop.send(evaluate(call))
    except StopIteration as done:
        return done.value


def observe(callback: Callback | None, plan: "Plan", k: int, x: torch.Tensor, eta: torch.Tensor) -> None:
    """Report step k's state, the eta_X the integrator uses there and the frame's drift."""
    if callback is not None:
        now = plan.now
        callback(StepInfo(k, plan.times[k].item(), x, eta, now.linear_drift[k] * x + now.drift_per_eta[k] * eta))


class Tables:
    """An integrator's coefficients on one grid (a frozen dataclass of named tables, computed once per grid)
    and its :meth:`step`.  The shared :meth:`loop` calls the network at each step's start and hands the
    output to :meth:`step`; families whose calls fall elsewhere (multistep, data frames, bespoke) override it.
    Fields may be tensors, tuples of tensors or whole :class:`Frame` s (the frame of a second call)."""

    #: the tables that multiply the state x (set to 0 at the point-mass start, where x = 0 and they may be inf)
    STATE: ClassVar[tuple[str, ...]] = ()
    #: the tables only read on two-stage steps
    SECOND: ClassVar[tuple[str, ...]] = ()
    #: the :class:`Frame` field at whose times every step makes its second call (None: one call per step)
    SECOND_CALL: ClassVar[str | None] = None
    #: 1 where the loop makes no call at the first step (its value there is known)
    first_call: ClassVar[int] = 0

    @property
    def steps(self) -> int:
        return next(iter(self.tables().values())).shape[0]

    @property
    def two_stage(self) -> tuple[bool, ...]:
        """Whether step k makes a second network call."""
        return (self.SECOND_CALL is not None,) * self.steps

    def second_call_tau(self, k: int) -> torch.Tensor:
        """The model time of step k's second call (where :attr:`two_stage`)."""
        return getattr(self, self.SECOND_CALL).tau[k]

    def step(self, k: int, x: torch.Tensor, m: torch.Tensor, xi: torch.Tensor, ops: Ops) -> Step | torch.Tensor:
        """Step k from state x, given the network output m at (tau_k, x) and the step's noise xi: x_k+1, or a
        generator that asks for more calls (``m2 = yield Call.at(frame, k, x2)``) and returns x_k+1."""
        raise NotImplementedError(f"{type(self).__name__} runs its own loop")

    def loop(self, x: torch.Tensor, plan: "Plan", noise: Callable[[int], torch.Tensor], ops: Ops,
             callback: Callback | None, progress: Callable[[int], None] | None) -> Loop:
        """Integrate from x: per step one call at (tau_k, x_k * in_scale_k), then :meth:`step`."""
        now = plan.now
        for k in range(plan.steps):
            xi = noise(k)
            m = yield Call(x, now.tau[k], now.in_scale[k], k)
            if callback is not None:
                observe(callback, plan, k, x, now.eta(k, x, m))
            x = self.step(k, x, m, xi, ops)
            if not isinstance(x, torch.Tensor):   # a step that makes more calls
                x = yield from x
            if progress is not None:
                progress(1)
        return x

    def denoised(self, now: Frame) -> "Tables":
        """The same tables whose last step returns eta_X (``final_step="denoise"``)."""
        raise LazyflowError(f"{type(self).__name__} has no denoising last step: final_step='denoise' is not for it")

    def tables(self) -> dict[str, torch.Tensor]:
        """Every table by name (tuples of tables as ``name[j]``, a frame's as ``name.field``)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value
            elif isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
                out.update({f"{f.name}[{j}]": v for j, v in enumerate(value)})
            elif isinstance(value, Frame):
                out.update({f"{f.name}.{read}": getattr(value, read) for read in Frame.READ})
        return out

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        """The same coefficients with ``fn`` applied to every table."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
            elif isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
                changes[f.name] = tuple(fn(v) for v in value)
            elif hasattr(value, "map_tensors"):
                changes[f.name] = value.map_tensors(fn)
        return replace(self, **changes)

    def for_batch(self, model_kwargs: dict[str, Any]):
        """The tables one batch runs with (the same for every batch, except per-label data statistics)."""
        return self

    def at_point_mass_start(self, zero: torch.Tensor):
        """The tables of x zeroed where ``zero`` (the point-mass start, x = 0)."""
        changes = {name: torch.where(zero, torch.zeros_like(v), v) for name in self.STATE
                   if (v := getattr(self, name)) is not None}
        return replace(self, **changes)


# --- what a builder gets, what it is registered as, the plan it makes ----------------------------

@dataclass
class BuildContext:
    """The inputs every coefficient builder gets (float64 on the sampling device): the target and source
    schedules, the model's prediction, the grid t, the steps whose start is singular (``ode``: use the
    probability-flow ODE there), the integrator, the data statistics (for the data frames; else None)
    and the :class:`Frame` at each step's start (``now``)."""

    target: Schedule
    source: Schedule
    prediction: str
    t: torch.Tensor
    ode: torch.Tensor
    integrator: "Integrator"
    data_stats: DataStats | ConditionalStats | None = None     # for the data frames
    now: Frame = field(init=False)

    def __post_init__(self) -> None:
        self.now = self.frame(self.t0, ode=self.ode)

    @property
    def t0(self) -> torch.Tensor:
        return self.t[:-1]

    @property
    def t1(self) -> torch.Tensor:
        return self.t[1:]

    @property
    def h(self) -> torch.Tensor:
        return self.t1 - self.t0

    def frame(self, t: torch.Tensor, ode: torch.Tensor | None = None) -> Frame:
        """The :class:`Frame` (model time, input scale, eta_X and drift coefficients) at times t."""
        return frame(self.target, self.source, self.prediction, t, ode=ode)

    def exponential(self, t0: torch.Tensor, t1: torch.Tensor, ode: torch.Tensor):
        """(A, B, C) of the exact step with eta_X frozen over [t0, t1] (the ODE's where ``ode``)."""
        A, B, C = self.target.exponential(t0, t1)
        if ode.any():
            A0, B0, C0 = self.target.exponential(t0, t1, ode=True)
            A, B, C = torch.where(ode, A0, A), torch.where(ode, B0, B), torch.where(ode, C0, C)
        return A, B, C

    def zeros(self) -> torch.Tensor:
        return torch.zeros_like(self.h)

    def one_call_per_step(self) -> tuple[bool, ...]:
        return (False,) * self.h.numel()


@dataclass(frozen=True, kw_only=True)
class Integrator:
    """One integrator: what differs between integrators is a field.  ``build`` turns a
    :class:`BuildContext` into the coefficient tables of one loop family; ``calls_per_step`` network
    calls per step (2: a two-stage method); ``exponential``: it needs the schedule's exact step;
    ``history``: the past evaluations a multistep step combines; ``corrector``: the next call also
    corrects the step just taken; ``plain_last_step``: the last step makes one call (Heun).  A new
    integrator is one builder and one :func:`~lazyflow.runtime.core.integrators.register_integrator` call."""

    name: str
    order: int
    build: Callable[[BuildContext], Tables] = field(repr=False)
    calls_per_step: int = 1
    exponential: bool = False
    history: int = 1
    corrector: bool = False
    plain_last_step: bool = False
    #: on grids of fewer steps than this it makes no call at the first step (a data frame knows its
    #: residual there): N calls buy N + 1 steps
    skip_first_call_below: int = 0
    #: it needs the data's statistics (``sample(data_stats=...)``; without them, N(E[X | c], I))
    needs_data_stats: bool = False
    #: it integrates the SDE itself (a stochastic data frame, ``data-sde*``: it needs linear-sde or vp-sde),
    #: where the classic integrators follow whichever equation the schedule gives
    stochastic: bool = False
    #: its tables are fitted to one model and come from a solver file given as the grid (``bespoke``)
    needs_solver_file: bool = False
    description: str = ""

    @property
    def classic(self) -> bool:
        """Its tables come from the schedules and the grid alone (no data statistics, no solver file)."""
        return not (self.needs_data_stats or self.needs_solver_file)

    def nfe(self, steps: int, final_step: str = "euler") -> int:
        """Network calls of a run of ``steps`` steps."""
        if self.calls_per_step == 1:
            return steps - int(self.skips_first_call(steps))
        plain_last = self.plain_last_step or final_step == "denoise"
        return self.calls_per_step * steps - (1 if plain_last else 0)

    def skips_first_call(self, steps: int) -> bool:
        """Whether a run of ``steps`` steps makes no call at its first step."""
        return steps < self.skip_first_call_below

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose calls fit in ``nfe`` (final_step="euler"), at least 1."""
        if self.calls_per_step == 1:
            return max(1, nfe + 1 if self.skips_first_call(nfe + 1) else nfe)
        return max(1, (nfe + 1) // 2 if self.plain_last_step else nfe // self.calls_per_step)


# --- the plan: everything one run needs -------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Everything one run needs, built before the loop on the sampling device.

    Step k calls the model at (now.tau[k], x * now.in_scale[k]); ``now`` is the :class:`Frame` at each step's
    start (eta_X and the drift there, for callbacks); ``coefficients`` are the integrator's tables and run
    its loop."""

    integrator: Integrator
    times: torch.Tensor                  # (steps + 1,) float64 on the CPU (for messages)
    now: Frame
    coefficients: Tables

    @property
    def tau(self) -> torch.Tensor:
        """The model time of each step's first call."""
        return self.now.tau

    @property
    def in_scale(self) -> torch.Tensor:
        """The input scale of each step's first call."""
        return self.now.in_scale

    @property
    def steps(self) -> int:
        return self.now.tau.numel()

    @property
    def two_stage(self) -> tuple[bool, ...]:
        """Whether step k makes a second network call."""
        return self.coefficients.two_stage

    @property
    def nfe(self) -> int:
        """Network evaluations the plan makes."""
        return self.steps - self.coefficients.first_call + sum(self.two_stage)

    def call_times(self) -> torch.Tensor:
        """The source times of the network calls, in the order the loop makes them."""
        times = []
        for k in range(self.coefficients.first_call, self.steps):
            times.append(self.tau[k])
            if self.two_stage[k]:
                times.append(self.coefficients.second_call_tau(k))
        return torch.stack(times)

    def for_batch(self, model_kwargs: dict[str, Any]) -> "Plan":
        """The plan of one batch with conditioning ``model_kwargs`` (itself unless its tables depend on it)."""
        coefficients = self.coefficients.for_batch(model_kwargs)
        return self if coefficients is self.coefficients else replace(self, coefficients=coefficients)

    def loop(self, x: torch.Tensor, noise: Callable[[int], torch.Tensor], ops: Ops = EAGER,
             callback: Callback | None = None, progress: Callable[[int], None] | None = None) -> Loop:
        """The integrator's loop from ``x`` (a generator of :class:`Call`; see :func:`drive`); ``noise(k)`` is
        step k's xi."""
        return self.coefficients.loop(x, self, noise, ops, callback, progress)
