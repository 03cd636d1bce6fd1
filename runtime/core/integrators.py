"""The integrators, as a registry of small objects; each builds per-step coefficient tables once per
grid and runs one of two loops over them (derive/MATH.md §6).

Every step is an affine update of the state x, the network output m and fresh noise xi, with h = t' - t:

- ``euler``:        x' = (1 + h F) x + h G m + sigma sqrt(h) xi   (Euler-Maruyama for an SDE)
- ``heun``:         x~ = Euler step; x' = (1 + h F/2) x + (h G/2) m + (h F~/2) x~ + (h G~/2) m~ + sigma sqrt(h) xi
                    (the last step, into t = 1, stays a plain step)
- ``midpoint``:     x~ = x + h/2 b(t, x) + sigma sqrt(h/2) xi;  x' = x + h b(t + h/2, x~) + sigma sqrt(h) xi
- ``exponential``:  x' = (A + B P) x + B Q m + C xi, with (A, B, C) the exact step for frozen eta_X
- ``exp-midpoint``: an exponential step to the log-snr midpoint, then the whole step with its eta_X
- ``multistep``:    x' = A x + B (w eta_k - u eta_k-1) + C xi: eta_X extrapolated linearly in log snr
                    with the exact weight phi = B2 / (B h) (u = phi h_k / h_k-1, w = 1 + u)
- ``multistep-pc``: the multistep predictor, then x' = A x + B (eta_k + phi (eta_k+1 - eta_k)) + C xi
                    with eta_k+1 from the next step's network call (no extra evaluation)
- ``multistep3``:   x' = A x + B (w eta_k - u eta_k-1 + z eta_k-2) + C xi: eta_X extrapolated quadratically
                    in log snr, exact weights from the moments phi = B2 / (B h), chi = B3 / (B h^2)
- ``multistep3-pc``: the multistep3 predictor, then x' = A x + B (eta_k + v (eta_k+1 - eta_k) - y (eta_k - eta_k-1))
                    + C xi (the quadratic through the last three evaluations, the next one included)

``final_step="denoise"`` makes the last step return eta_X.  Where eps is infinite at t = 0 (eps* of a
standard schedule) the first step is the probability-flow ODE step; a point-mass run starts at x = 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator, NamedTuple

import numpy as np
import torch

from ...errors import LazyflowError, SamplingError
from .frames import Frame, frame
from .schedule import Schedule

__all__ = ["Integrator", "INTEGRATORS", "FINAL_STEPS", "Plan", "StepInfo", "Call", "build_plan", "get_integrator",
           "drive"]

FINAL_STEPS = ("euler", "denoise")


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


@dataclass(frozen=True)
class Plan:
    """Everything one run needs, built before the loop on the sampling device.

    Step k calls the model at (tau[k], x * in_scale[k]); the integrator's ``columns`` hold its
    coefficients (``two_stage[k]`` says whether step k makes a second call); ``P, Q, K_x, K_e`` give
    eta_X = P x + Q m and the drift b = K_x x + K_e eta_X at the step's start (for callbacks)."""

    integrator: "Integrator"
    times: torch.Tensor                  # (steps + 1,) float64 on the CPU (for messages)
    tau: torch.Tensor
    in_scale: torch.Tensor
    two_stage: tuple[bool, ...]
    columns: dict[str, torch.Tensor]
    P: torch.Tensor
    Q: torch.Tensor
    K_x: torch.Tensor
    K_e: torch.Tensor

    @property
    def steps(self) -> int:
        return self.tau.numel()

    @property
    def nfe(self) -> int:
        """Network evaluations the plan makes."""
        return self.steps + sum(self.two_stage)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.columns[name]

    def call_times(self) -> torch.Tensor:
        """The source times of the network calls, in the order the loop makes them."""
        times = []
        for k in range(self.steps):
            times.append(self.tau[k])
            if self.two_stage[k]:
                times.append(self.columns["tau2"][k])
        return torch.stack(times)


@dataclass
class _Build:
    """The inputs every coefficient builder gets (float64 on the sampling device)."""

    target: Schedule
    source: Schedule
    prediction: str
    t: torch.Tensor
    ode: torch.Tensor                    # steps whose start is singular: use the ODE there
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
        return frame(self.target, self.source, self.prediction, t, ode=ode)

    def exponential(self, t0: torch.Tensor, t1: torch.Tensor, ode: torch.Tensor):
        A, B, C = self.target.exponential(t0, t1)
        if ode.any():
            A0, B0, C0 = self.target.exponential(t0, t1, ode=True)
            A, B, C = torch.where(ode, A0, A), torch.where(ode, B0, B), torch.where(ode, C0, C)
        return A, B, C

    def zeros(self) -> torch.Tensor:
        return torch.zeros_like(self.h)


# --- coefficient builders: each returns (columns, two_stage) ------------------------------------------

def _euler(b: _Build):
    now, h = b.now, b.h
    return {"a": 1 + h * now.F, "b": h * now.G, "c": now.sigma * torch.sqrt(h)}, [False] * h.numel()


def _heun(b: _Build):
    now, h = b.now, b.h
    # a step that starts singular is the probability-flow ODE's Heun step: the corrector's drift at t'
    # is the ODE drift too (the SDE drift there holds an eps s term whose noise the step does not add)
    nxt = b.frame(b.t1, ode=b.ode)
    noise = now.sigma * torch.sqrt(h)
    a, bb = 1 + h / 2 * now.F, h / 2 * now.G
    # the last step (into t = 1, where the model may be singular) stays a plain Euler step
    a[-1], bb[-1] = 1 + h[-1] * now.F[-1], h[-1] * now.G[-1]
    cols = {"a": a, "b": bb, "c": noise, "a1": 1 + h * now.F, "b1": h * now.G, "c1": noise,
            "tau2": nxt.tau, "in_scale2": nxt.in_scale, "d": h / 2 * nxt.F, "e": h / 2 * nxt.G}
    return cols, [True] * (h.numel() - 1) + [False]


def _midpoint(b: _Build):
    now, h = b.now, b.h
    mid = b.frame((b.t0 + b.t1) / 2, ode=b.ode)
    cols = {"a1": 1 + h / 2 * now.F, "b1": h / 2 * now.G, "c1": now.sigma * torch.sqrt(h / 2),
            "tau2": mid.tau, "in_scale2": mid.in_scale, "a": torch.ones_like(h), "b": b.zeros(),
            "d": h * mid.F, "e": h * mid.G, "c": now.sigma * torch.sqrt(h)}
    return cols, [True] * h.numel()


def _exponential(b: _Build):
    A, B, C = b.exponential(b.t0, b.t1, b.ode)
    return {"a": A + B * b.now.P, "b": B * b.now.Q, "c": C}, [False] * b.h.numel()


def _log_snr_midpoints(target: Schedule, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Midpoints in log snr where both ends have a finite log snr, else in t."""
    lam0, lam1 = target.log_snr(t0), target.log_snr(t1)
    finite = torch.isfinite(lam0) & torch.isfinite(lam1)
    lam_mid = torch.where(finite, (lam0 + lam1) / 2, torch.zeros_like(lam0))
    return torch.where(finite, target.time_of_log_snr(lam_mid), (t0 + t1) / 2)


def _exp_midpoint(b: _Build):
    A, B, C = b.exponential(b.t0, b.t1, b.ode)
    tm = _log_snr_midpoints(b.target, b.t0, b.t1)
    mid = b.frame(tm, ode=b.ode)
    A1, B1, C1 = b.exponential(b.t0, tm, b.ode)
    cols = {"a1": A1 + B1 * b.now.P, "b1": B1 * b.now.Q, "c1": C1, "tau2": mid.tau, "in_scale2": mid.in_scale,
            "a": A, "b": b.zeros(), "d": B * mid.P, "e": B * mid.Q, "c": C}
    return cols, [True] * b.h.numel()


#: Gauss-Legendre nodes and weights on [-1, 1] for the multistep weights (the kernel's moments)
_GAUSS = np.polynomial.legendre.leggauss(12)


def _kernel_moments(b: _Build, lam: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi_k = B2 / (B h) and chi_k = B3 / (B h^2) with B_j = int B(t(l), t_k+1) (l - lam_k)^(j-2) dl over
    [lam_k, lam_k+1] (12-point Gauss-Legendre); NaN where lam is infinite.  For small h phi -> 1/2 and
    chi -> 1/6 (B vanishes linearly at lam_k+1); closed forms in MATH.md §6."""
    t0 = b.t0
    nodes, weights = (torch.as_tensor(v, dtype=t0.dtype, device=t0.device) for v in _GAUSS)
    lam0, lam1 = lam[:-1], lam[1:]
    finite = torch.isfinite(lam0) & torch.isfinite(lam1)
    lo = torch.where(finite, lam0, torch.zeros_like(lam0))
    hi = torch.where(finite, lam1, torch.ones_like(lam1))
    h = hi - lo
    offsets = (nodes[None, :] + 1) / 2 * h[:, None]                           # l - lam_k at the nodes
    times = b.target.time_of_log_snr(lo[:, None] + offsets)
    ends = b.t1[:, None].expand_as(times)
    step_ode = b.ode[:, None].expand_as(times)
    B_inner = b.exponential(times.reshape(-1), ends.reshape(-1), step_ode.reshape(-1))[1].reshape(times.shape)
    B2 = (B_inner * weights[None, :]).sum(1) * h / 2
    B3 = (B_inner * offsets * weights[None, :]).sum(1) * h / 2
    nan = torch.full_like(h, float("nan"))
    return torch.where(finite, B2 / (B * h), nan), torch.where(finite, B3 / (B * h * h), nan)


def _multistep(b: _Build):
    A, B, C = b.exponential(b.t0, b.t1, b.ode)
    lam = b.target.log_snr(b.t)
    h_lam = lam[1:] - lam[:-1]
    phi = _kernel_moments(b, lam, B)[0]   # the slope weight B2 / (B h); chi is for multistep3
    zeros = b.zeros()
    u = torch.zeros_like(h_lam)
    u[1:] = phi[1:] * h_lam[1:] / h_lam[:-1]
    usable = torch.isfinite(u) & torch.isfinite(phi)
    usable[0] = False      # no previous evaluation
    usable[-1] = False     # lower order on the last step, into t = 1
    u = torch.where(usable, u, zeros)
    # an infinite log-snr step (from snr = 0) puts all the weight at its far end: phi -> 1
    v = torch.where(torch.isfinite(phi), phi, torch.ones_like(phi))
    cols = {"a": A, "b": B, "c": C, "p": b.now.P, "q": b.now.Q, "u": u, "w": 1 + u, "v": v}
    return cols, [False] * b.h.numel()


def _multistep3(b: _Build):
    """Third-order exponential multistep (MATH.md §6).  With h = lam_k+1 - lam_k, h1 = lam_k - lam_k-1,
    h2 = lam_k-1 - lam_k-2 and eta(l) the quadratic through the last three evaluations,
    int B(s, t') d eta = c1 D1 + c2 D2 (Newton divided differences D1, D2 at lam_k, lam_k-1, lam_k-2) with
    c1 = phi h B, c2 = (2 chi h^2 + phi h h1) B; so w = 1 + c1/h1 + c2/(h1 (h1 + h2)), u = c1/h1 + c2/(h1 h2),
    z = c2/(h2 (h1 + h2)) (w - u + z = 1).  Order 2 (multistep's u) where h2 is not finite; order 1 where
    h1 or h is not (the first step, the step after one from snr = 0) and on a step into t = 1.
    Corrector (the quadratic through lam_k+1, lam_k, lam_k-1): v = phi + (2 chi - phi) h / (h + h1),
    y = (2 chi - phi) h^2 / (h1 (h + h1)); v = phi, y = 0 where h1 is not finite; v = 1 from snr = 0."""
    A, B, C = b.exponential(b.t0, b.t1, b.ode)
    lam = b.target.log_snr(b.t)
    h = lam[1:] - lam[:-1]
    phi, chi = _kernel_moments(b, lam, B)
    steps, zeros = h.numel(), b.zeros()
    h1, h2 = torch.full_like(h, float("nan")), torch.full_like(h, float("nan"))
    h1[1:], h2[2:] = h[:-1], h[:-2]
    ok1 = torch.isfinite(h1) & torch.isfinite(phi) & torch.isfinite(chi) & (h1 > 0)
    # into t = 1 lambda is +inf (or float-rounding large, e.g. vp's cos(pi/2) = 6e-17): a first-order step
    ok1 = ok1 & (b.t1 < 1)
    ok2 = ok1 & torch.isfinite(h2) & (h2 > 0)
    s1, s2 = torch.where(ok1, h1, torch.ones_like(h)), torch.where(ok2, h2, torch.ones_like(h))
    c1 = phi * h
    c2 = 2 * chi * h * h + phi * h * s1
    u2 = c1 / s1                                  # order 2: multistep's u = phi h / h1
    w3, u3, z3 = 1 + c1 / s1 + c2 / (s1 * (s1 + s2)), c1 / s1 + c2 / (s1 * s2), c2 / (s2 * (s1 + s2))
    w = torch.where(ok2, w3, torch.where(ok1, 1 + u2, torch.ones_like(h)))
    u = torch.where(ok2, u3, torch.where(ok1, u2, zeros))
    z = torch.where(ok2, z3, zeros)
    # corrector: an infinite log-snr step (from snr = 0) puts all the weight at its far end (v = 1, y = 0)
    finite = torch.isfinite(phi) & torch.isfinite(chi)
    cc = (2 * chi - phi) * h * h
    v = torch.where(finite, torch.where(ok1, phi + cc / (h * (h + s1)), phi), torch.ones_like(h))
    y = torch.where(finite & ok1, cc / (s1 * (h + s1)), zeros)
    cols = {"a": A, "b": B, "c": C, "p": b.now.P, "q": b.now.Q, "u": u, "w": w, "z": z, "v": v, "y": y}
    return cols, [False] * steps


# --- the two loops -------------------------------------------------------------------------------
# Each loop is a generator: it yields a Call for every network evaluation and receives the output,
# so that one loop serves both drivers: ``sample`` (which calls the model itself, see ``drive``) and a
# scheduler that a pipeline calls once per network evaluation.

class Call(NamedTuple):
    """A network evaluation the loop asks for: the model sees ``x * in_scale`` at source time ``tau``."""

    x: torch.Tensor
    tau: torch.Tensor
    in_scale: torch.Tensor
    step: int


Loop = Generator[Call, torch.Tensor, torch.Tensor]


def drive(loop: Loop, evaluate: Callable[[Call], torch.Tensor]) -> torch.Tensor:
    """Run a loop to its end, answering each Call with ``evaluate(call)``; returns the final state."""
    try:
        call = next(loop)
        while True:
            call = loop.send(evaluate(call))
    except StopIteration as done:
        return done.value


def _observe(callback: Callback | None, plan: Plan, k: int, x: torch.Tensor, eta: torch.Tensor) -> None:
    """Report step k's state, the eta_X the integrator uses there and the frame's drift."""
    if callback is not None:
        callback(StepInfo(k, plan.times[k].item(), x, eta, plan.K_x[k] * x + plan.K_e[k] * eta))


def _run_stages(x, plan: Plan, noise, ops, callback, progress) -> Loop:
    """One or two network calls per step; each step one affine update.  ``ops`` = (affine, two_point):
    x' = a x + b m + c xi and x' = a x + b m + d x~ + e m~ + c xi (eager or compiled)."""
    affine, two_point = ops
    c = plan.columns
    for k in range(plan.steps):
        xi = noise(k)
        m = yield Call(x, plan.tau[k], plan.in_scale[k], k)
        if callback is not None:
            _observe(callback, plan, k, x, plan.P[k] * x + plan.Q[k] * m)
        if plan.two_stage[k]:
            x2 = affine(x, m, c["a1"][k], c["b1"][k], c["c1"][k], xi)
            m2 = yield Call(x2, c["tau2"][k], c["in_scale2"][k], k)
            x = two_point(x, m, x2, m2, c["a"][k], c["b"][k], c["d"][k], c["e"][k], c["c"][k], xi)
        else:
            x = affine(x, m, c["a"][k], c["b"][k], c["c"][k], xi)
        if progress is not None:
            progress(1)
    return x


def _denoise_stages(cols: dict, now: Frame, two_stage: list[bool]) -> None:
    cols["a"][-1], cols["b"][-1], cols["c"][-1] = now.P[-1], now.Q[-1], 0.0
    two_stage[-1] = False


def _run_multistep(x, plan: Plan, noise, ops, callback, progress) -> Loop:
    """x' = a x + b (w eta - u eta_prev) + c xi; with a corrector (``v`` present) the next point's
    call also corrects the step just taken: x' = a x + b (eta + v (eta_next - eta)) + c xi."""
    affine = ops[0]
    c = plan.columns
    correct = plan.integrator.name == "multistep-pc"
    eta_prev = torch.zeros_like(x)
    eta = c["p"][0] * x + c["q"][0] * (yield Call(x, plan.tau[0], plan.in_scale[0], 0))
    _observe(callback, plan, 0, x, eta)
    for k in range(plan.steps):
        xi = noise(k)
        x_next = affine(x, c["w"][k] * eta - c["u"][k] * eta_prev, c["a"][k], c["b"][k], c["c"][k], xi)
        if k + 1 < plan.steps:
            m = yield Call(x_next, plan.tau[k + 1], plan.in_scale[k + 1], k + 1)
            eta_next = c["p"][k + 1] * x_next + c["q"][k + 1] * m
            if correct:
                x_next = affine(x, eta + c["v"][k] * (eta_next - eta), c["a"][k], c["b"][k], c["c"][k], xi)
            _observe(callback, plan, k + 1, x_next, eta_next)
            eta_prev, eta = eta, eta_next
        x = x_next
        if progress is not None:
            progress(1)
    return x


def _denoise_multistep(cols: dict, now: Frame, two_stage: list[bool]) -> None:
    cols["a"][-1], cols["b"][-1], cols["w"][-1], cols["u"][-1], cols["c"][-1] = 0.0, 1.0, 1.0, 0.0, 0.0


def _run_multistep3(x, plan: Plan, noise, ops, callback, progress) -> Loop:
    """x' = a x + b (w eta - u eta_prev + z eta_prev2) + c xi; the ``-pc`` variant corrects each step with
    the next point's call: x' = a x + b (eta + v (eta_next - eta) - y (eta - eta_prev)) + c xi."""
    affine = ops[0]
    c = plan.columns
    correct = plan.integrator.name.endswith("-pc")
    eta_prev2 = eta_prev = torch.zeros_like(x)
    eta = c["p"][0] * x + c["q"][0] * (yield Call(x, plan.tau[0], plan.in_scale[0], 0))
    _observe(callback, plan, 0, x, eta)
    for k in range(plan.steps):
        xi = noise(k)
        mix = c["w"][k] * eta - c["u"][k] * eta_prev + c["z"][k] * eta_prev2
        x_next = affine(x, mix, c["a"][k], c["b"][k], c["c"][k], xi)
        if k + 1 < plan.steps:
            m = yield Call(x_next, plan.tau[k + 1], plan.in_scale[k + 1], k + 1)
            eta_next = c["p"][k + 1] * x_next + c["q"][k + 1] * m
            if correct:
                mix = eta + c["v"][k] * (eta_next - eta) - c["y"][k] * (eta - eta_prev)
                x_next = affine(x, mix, c["a"][k], c["b"][k], c["c"][k], xi)
            _observe(callback, plan, k + 1, x_next, eta_next)
            eta_prev2, eta_prev, eta = eta_prev, eta, eta_next
        x = x_next
        if progress is not None:
            progress(1)
    return x


def _denoise_multistep3(cols: dict, now: Frame, two_stage: list[bool]) -> None:
    _denoise_multistep(cols, now, two_stage)
    cols["z"][-1] = 0.0


# --- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Integrator:
    """One integrator: its name, order, network calls per step, whether it needs the kernel's exact
    exponential step, how it builds its coefficients, and its loop.  All of them take noise (SDE)."""

    name: str
    order: int
    calls_per_step: int
    exponential: bool
    build: Callable[[_Build], tuple[dict, list]] = field(repr=False)
    run: Callable = field(repr=False)
    denoise: Callable = field(repr=False)
    plain_last_step: bool = False        # the last step makes one call (Heun)
    description: str = ""

    def nfe(self, steps: int, final_step: str = "euler") -> int:
        """Network calls of a run of ``steps`` steps."""
        if self.calls_per_step == 1:
            return steps
        plain_last = self.plain_last_step or final_step == "denoise"
        return self.calls_per_step * steps - (1 if plain_last else 0)

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose calls fit in ``nfe`` (final_step="euler"), at least 1."""
        if self.calls_per_step == 1:
            return max(1, nfe)
        return max(1, (nfe + 1) // 2 if self.plain_last_step else nfe // self.calls_per_step)


INTEGRATORS: dict[str, Integrator] = {i.name: i for i in (
    Integrator("euler", 1, 1, False, _euler, _run_stages, _denoise_stages, description="Euler / Euler-Maruyama"),
    Integrator("heun", 2, 2, False, _heun, _run_stages, _denoise_stages, plain_last_step=True,
               description="Heun (trapezoidal predictor-corrector), plain last step"),
    Integrator("midpoint", 2, 2, False, _midpoint, _run_stages, _denoise_stages, description="explicit midpoint"),
    Integrator("exponential", 1, 1, True, _exponential, _run_stages, _denoise_stages,
               description="exact linear part with eta_X frozen (DDIM for VP, Brownian bridge for the point mass)"),
    Integrator("exp-midpoint", 2, 2, True, _exp_midpoint, _run_stages, _denoise_stages,
               description="two-stage exponential, midpoint in log snr"),
    Integrator("multistep", 2, 1, True, _multistep, _run_multistep, _denoise_multistep,
               description="exponential with eta_X extrapolated linearly in log snr, exact weight"),
    Integrator("multistep-pc", 2, 1, True, _multistep, _run_multistep, _denoise_multistep,
               description="multistep plus a corrector that reuses the next call (as UniPC)"),
    Integrator("multistep3", 3, 1, True, _multistep3, _run_multistep3, _denoise_multistep3,
               description="exponential with eta_X extrapolated quadratically in log snr, exact weights"),
    Integrator("multistep3-pc", 3, 1, True, _multistep3, _run_multistep3, _denoise_multistep3,
               description="multistep3 plus a third-order corrector that reuses the next call"),
)}


def get_integrator(name: str | Integrator) -> Integrator:
    if isinstance(name, Integrator):
        return name
    try:
        return INTEGRATORS[name]
    except (KeyError, TypeError):
        raise LazyflowError(f"unknown integrator {name!r}; choose one of {', '.join(INTEGRATORS)}") from None


def build_plan(target: Schedule, source: Schedule, times: torch.Tensor, *, integrator: str | Integrator,
               final_step: str, prediction: str, device: torch.device | str | None, dtype: torch.dtype) -> Plan:
    """Coefficient tables for ``integrator`` on ``times`` (float64 math, cast to ``dtype`` on ``device``)."""
    method = get_integrator(integrator)
    if final_step not in FINAL_STEPS:
        raise LazyflowError(f"unknown final_step {final_step!r}; choose one of {', '.join(FINAL_STEPS)}")
    if method.exponential and not target.has_exponential:
        raise LazyflowError(f"integrator {method.name!r}: {target.kernel.EXPONENTIAL}")
    work = torch.float64 if torch.device(device or "cpu").type != "mps" else torch.float32
    t = times.to(device=device, dtype=work)
    _check_informative_start(target, prediction, t)
    # where eps is infinite at t = 0 (eps* of a standard schedule) the first step is the ODE step
    ode = (t[:-1] <= 0) & target.singular_start
    b = _Build(target, source, prediction, t, ode)
    cols, two_stage = method.build(b)
    if final_step == "denoise":
        method.denoise(cols, b.now, two_stage)
    zero = b.now.zero
    for name in ("a", "a1"):
        if name in cols:
            cols[name] = torch.where(zero, torch.zeros_like(cols[name]), cols[name])
    _check_finite(cols, two_stage, b.now, times, method.name)
    cast = {k: v.to(dtype) for k, v in cols.items()}
    _check_finite(cast, two_stage, b.now, times, method.name, after=f"the cast to {dtype}")
    now = b.now
    return Plan(method, times, now.tau.to(dtype), now.in_scale.to(dtype), tuple(two_stage), cast,
                *(v.to(dtype) for v in (now.P, now.Q, now.K_x, now.K_e)))


def _check_informative_start(target: Schedule, prediction: str, t: torch.Tensor) -> None:
    """Refuse a run whose first call is at snr = 0 with a noise or score model: there I = alpha Z, the
    output is a function of x alone and eta_X = E[X] cannot be read from it (p, q hold 1/beta; MATH.md §2)."""
    if prediction not in ("noise", "score") or not bool(target.log_snr(t[:1]).isneginf().all()):
        return
    if target.point_mass:
        fix = ("a point-mass schedule must start there, so sample this model with a standard schedule "
               "(e.g. schedule='linear' or 'vp') and a grid starting at t_0 > 0")
    else:
        fix = (f"start the grid after t = {t[0].item():g}, e.g. grid=[0.01, ...] (explicit times; the run then "
               "starts from alpha(t_0) Z)")
    raise SamplingError(f"a {prediction}-prediction model does not determine eta_X at snr = 0 (t = {t[0].item():g}, "
                        f"where this grid starts): its output there carries no information on the data; {fix}")


_SECOND_STAGE = ("tau2", "in_scale2", "a1", "b1", "c1", "d", "e")


def _check_finite(cols: dict, two_stage: list[bool], now: Frame, times: torch.Tensor, integrator: str,
                  after: str = "") -> None:
    """One host synchronisation per run, before the loop: refuse non-finite coefficients (``after`` names
    the cast that made a finite float64 value overflow)."""
    mask = torch.tensor(two_stage, device=now.t.device)
    used = {"model time": now.tau, "input scale": now.in_scale}
    for name, values in cols.items():
        used[name] = torch.where(mask, values, torch.zeros_like(values)) if name in _SECOND_STAGE else values
    steps = now.t.numel()
    for name, values in used.items():
        bad = ~torch.isfinite(values)
        if bad.any():
            k = int(bad.nonzero()[0, 0])
            if after:
                raise SamplingError(f"{integrator} coefficient {name!r} at step {k} (t = {times[k].item():.6g}) "
                                    f"overflows after {after}; sample with dtype=torch.float64 or another grid")
            raise SamplingError(f"{integrator} coefficient {name!r} is not finite at step {k} "
                                f"(t = {times[k].item():.6g} -> {times[min(k + 1, steps)].item():.6g}): the schedule "
                                "is singular there; try final_step='denoise' or a grid that avoids that time")
