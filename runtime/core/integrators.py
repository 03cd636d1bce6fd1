"""Every integrator step in one place: its coefficient tables, its affine update, the network call it
asks for and the registry of integrators (derive/MATH.md §6).

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

Two loop families run these tables: :class:`StageCoefficients` (one or two calls per step) and
:class:`MultistepCoefficients` (one call per step, a history of past eta_X).  Every table has the
shape (steps, *trailing), where the trailing shape broadcasts against one sample's shape: () for a
per-step scalar, (C, 1, 1) per channel, the sample's own shape per element.  A new integrator is one
builder ``BuildContext -> coefficients`` and one :func:`register_integrator` call.

``final_step="denoise"`` makes the last step return eta_X.  Where eps is infinite at t = 0 (eps* of a
standard schedule) the first step is the probability-flow ODE step; a point-mass run starts at x = 0.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import numpy as np
import torch

from ...errors import LazyflowError, SamplingError
from . import data_frame
from .bespoke import BESPOKE_PLACEHOLDER
from .data_stats import DataStats
from .frames import Frame
from .plan import BuildContext, Call, Callback, Integrator, Loop, Ops, Plan, Tables, observe
from .schedule import Schedule

__all__ = ["INTEGRATORS", "FINAL_STEPS", "StageCoefficients", "MultistepCoefficients", "build_plan",
           "check_plan_options", "get_integrator", "register_integrator", "kernel_moments", "log_snr_midpoints"]

FINAL_STEPS = ("euler", "denoise")


# --- the two loop families: typed coefficient tables with their loop ---------------------------------

@dataclass(frozen=True)
class StageCoefficients(Tables):
    """One or two network calls per step.  One call: x' = a x + b m + c xi.  Where ``two_stage[k]`` a
    second call at source time ``tau2`` on x~ * ``in_scale2``, x~ = a1 x + b1 m + c1 xi, and then
    x' = a x + b m + d x~ + e m~ + c xi."""

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    two_stage: tuple[bool, ...]
    a1: torch.Tensor | None = None
    b1: torch.Tensor | None = None
    c1: torch.Tensor | None = None
    tau2: torch.Tensor | None = None
    in_scale2: torch.Tensor | None = None
    d: torch.Tensor | None = None
    e: torch.Tensor | None = None

    STATE: ClassVar[tuple[str, ...]] = ("a", "a1")
    SECOND: ClassVar[tuple[str, ...]] = ("tau2", "in_scale2", "a1", "b1", "c1", "d", "e")

    def loop(self, x: torch.Tensor, plan: "Plan", noise: Callable[[int], torch.Tensor], ops: Ops,
             callback: Callback | None, progress: Callable[[int], None] | None) -> Loop:
        """Integrate from x: each step one or two calls and one affine update."""
        for k in range(plan.steps):
            xi = noise(k)
            m = yield Call(x, plan.tau[k], plan.in_scale[k], k)
            if callback is not None:
                observe(callback, plan, k, x, plan.P[k] * x + plan.Q[k] * m)
            if self.two_stage[k]:
                x2 = ops.affine(x, m, self.a1[k], self.b1[k], self.c1[k], xi)
                m2 = yield Call(x2, self.tau2[k], self.in_scale2[k], k)
                x = ops.two_point(x, m, x2, m2, self.a[k], self.b[k], self.d[k], self.e[k], self.c[k], xi)
            else:
                x = ops.affine(x, m, self.a[k], self.b[k], self.c[k], xi)
            if progress is not None:
                progress(1)
        return x

    def denoised(self, now: Frame) -> "StageCoefficients":
        """The last step returns eta_X = P x + Q m (one call, no noise)."""
        a, b, c = self.a.clone(), self.b.clone(), self.c.clone()
        a[-1], b[-1], c[-1] = now.P[-1], now.Q[-1], 0.0
        return replace(self, a=a, b=b, c=c, two_stage=(*self.two_stage[:-1], False))


@dataclass(frozen=True)
class MultistepCoefficients(Tables):
    """One network call per step, eta_X = p x + q m at each.  Predictor:
    x' = a x + b (sum_j predictor[j] eta_k-j) + c xi over the last ``len(predictor)`` evaluations.
    With a ``corrector`` (v,) or (v, y), the next step's call also corrects the step just taken:
    x' = a x + b (eta_k + v (eta_k+1 - eta_k) - y (eta_k - eta_k-1)) + c xi."""

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    predictor: tuple[torch.Tensor, ...]
    corrector: tuple[torch.Tensor, ...] | None = None

    @property
    def two_stage(self) -> tuple[bool, ...]:
        return (False,) * self.steps

    def extrapolate(self, k: int, eta: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
        """``sum_j predictor[j][k] eta_k-j`` (``history`` = [eta_k-1, eta_k-2, ...])."""
        mix = self.predictor[0][k] * eta
        for weight, past in zip(self.predictor[1:], history):
            mix = mix + weight[k] * past
        return mix

    def correct(self, k: int, eta: torch.Tensor, eta_next: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
        """eta_k + v (eta_k+1 - eta_k) - y (eta_k - eta_k-1)."""
        mix = eta + self.corrector[0][k] * (eta_next - eta)
        if len(self.corrector) > 1:
            mix = mix - self.corrector[1][k] * (eta - history[0])
        return mix

    def loop(self, x: torch.Tensor, plan: "Plan", noise: Callable[[int], torch.Tensor], ops: Ops,
             callback: Callback | None, progress: Callable[[int], None] | None) -> Loop:
        """Integrate from x: one call per step, its eta_X kept for the next steps' extrapolation."""
        history = [torch.zeros_like(x)] * (len(self.predictor) - 1)
        eta = self.p[0] * x + self.q[0] * (yield Call(x, plan.tau[0], plan.in_scale[0], 0))
        observe(callback, plan, 0, x, eta)
        for k in range(plan.steps):
            xi = noise(k)
            x_next = ops.affine(x, self.extrapolate(k, eta, history), self.a[k], self.b[k], self.c[k], xi)
            if k + 1 < plan.steps:
                m = yield Call(x_next, plan.tau[k + 1], plan.in_scale[k + 1], k + 1)
                eta_next = self.p[k + 1] * x_next + self.q[k + 1] * m
                if self.corrector is not None:
                    x_next = ops.affine(x, self.correct(k, eta, eta_next, history), self.a[k], self.b[k], self.c[k], xi)
                observe(callback, plan, k + 1, x_next, eta_next)
                history = [eta, *history[:-1]]
                eta = eta_next
            x = x_next
            if progress is not None:
                progress(1)
        return x

    def denoised(self, now: Frame) -> "MultistepCoefficients":
        """The last step returns its eta_k (a = 0, b = 1, no extrapolation, no noise)."""
        a, b, c = self.a.clone(), self.b.clone(), self.c.clone()
        a[-1], b[-1], c[-1] = 0.0, 1.0, 0.0
        predictor = tuple(w.clone() for w in self.predictor)
        predictor[0][-1] = 1.0
        for w in predictor[1:]:
            w[-1] = 0.0
        return replace(self, a=a, b=b, c=c, predictor=predictor)


Coefficients = StageCoefficients | MultistepCoefficients


# --- coefficient builders ---------------------------------------------------------------------------

def _euler(b: BuildContext) -> StageCoefficients:
    now, h = b.now, b.h
    return StageCoefficients(a=1 + h * now.F, b=h * now.G, c=now.sigma * torch.sqrt(h), two_stage=b.one_call_per_step())


def _heun(b: BuildContext) -> StageCoefficients:
    now, h = b.now, b.h
    # a step that starts singular is the probability-flow ODE's Heun step: the corrector's drift at t'
    # is the ODE drift too (the SDE drift there holds an eps s term whose noise the step does not add)
    nxt = b.frame(b.t1, ode=b.ode)
    noise = now.sigma * torch.sqrt(h)
    a, bb = 1 + h / 2 * now.F, h / 2 * now.G
    # the last step (into t = 1, where the model may be singular) stays a plain Euler step
    a[-1], bb[-1] = 1 + h[-1] * now.F[-1], h[-1] * now.G[-1]
    return StageCoefficients(a=a, b=bb, c=noise, a1=1 + h * now.F, b1=h * now.G, c1=noise, tau2=nxt.tau,
                             in_scale2=nxt.in_scale, d=h / 2 * nxt.F, e=h / 2 * nxt.G,
                             two_stage=(True,) * (h.numel() - 1) + (False,))


def _midpoint(b: BuildContext) -> StageCoefficients:
    now, h = b.now, b.h
    mid = b.frame((b.t0 + b.t1) / 2, ode=b.ode)
    return StageCoefficients(a1=1 + h / 2 * now.F, b1=h / 2 * now.G, c1=now.sigma * torch.sqrt(h / 2), tau2=mid.tau,
                             in_scale2=mid.in_scale, a=torch.ones_like(h), b=b.zeros(), d=h * mid.F, e=h * mid.G,
                             c=now.sigma * torch.sqrt(h), two_stage=(True,) * h.numel())


def _exponential(b: BuildContext) -> StageCoefficients:
    A, B, C = b.exponential(b.t0, b.t1, b.ode)
    return StageCoefficients(a=A + B * b.now.P, b=B * b.now.Q, c=C, two_stage=b.one_call_per_step())


def log_snr_midpoints(target: Schedule, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Midpoints in log snr where both ends have a finite log snr, else in t."""
    lam0, lam1 = target.log_snr(t0), target.log_snr(t1)
    finite = torch.isfinite(lam0) & torch.isfinite(lam1)
    lam_mid = torch.where(finite, (lam0 + lam1) / 2, torch.zeros_like(lam0))
    return torch.where(finite, target.time_of_log_snr(lam_mid), (t0 + t1) / 2)


def _exp_midpoint(b: BuildContext) -> StageCoefficients:
    A, B, C = b.exponential(b.t0, b.t1, b.ode)
    tm = log_snr_midpoints(b.target, b.t0, b.t1)
    mid = b.frame(tm, ode=b.ode)
    A1, B1, C1 = b.exponential(b.t0, tm, b.ode)
    return StageCoefficients(a1=A1 + B1 * b.now.P, b1=B1 * b.now.Q, c1=C1, tau2=mid.tau, in_scale2=mid.in_scale,
                             a=A, b=b.zeros(), d=B * mid.P, e=B * mid.Q, c=C, two_stage=(True,) * b.h.numel())


#: Gauss-Legendre nodes and weights on [-1, 1] for the multistep weights (the kernel's moments)
_GAUSS = np.polynomial.legendre.leggauss(12)


def kernel_moments(b: BuildContext, lam: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _multistep(b: BuildContext) -> MultistepCoefficients:
    """Second-order exponential multistep: w = 1 + u, u = phi h_k / h_k-1 (first order on the first step,
    the last one and where a weight is not finite); corrector v = phi (1 from snr = 0)."""
    A, B, C = b.exponential(b.t0, b.t1, b.ode)
    lam = b.target.log_snr(b.t)
    h_lam = lam[1:] - lam[:-1]
    phi = kernel_moments(b, lam, B)[0]   # the slope weight B2 / (B h); chi is for multistep3
    zeros = b.zeros()
    u = torch.zeros_like(h_lam)
    u[1:] = phi[1:] * h_lam[1:] / h_lam[:-1]
    usable = torch.isfinite(u) & torch.isfinite(phi)
    usable[0] = False      # no previous evaluation
    usable[-1] = False     # lower order on the last step, into t = 1
    u = torch.where(usable, u, zeros)
    # an infinite log-snr step (from snr = 0) puts all the weight at its far end: phi -> 1
    v = torch.where(torch.isfinite(phi), phi, torch.ones_like(phi))
    return MultistepCoefficients(a=A, b=B, c=C, p=b.now.P, q=b.now.Q, predictor=(1 + u, -u),
                                 corrector=(v,) if b.integrator.corrector else None)


def _multistep3(b: BuildContext) -> MultistepCoefficients:
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
    phi, chi = kernel_moments(b, lam, B)
    zeros = b.zeros()
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
    return MultistepCoefficients(a=A, b=B, c=C, p=b.now.P, q=b.now.Q, predictor=(w, -u, z),
                                 corrector=(v, y) if b.integrator.corrector else None)


# --- the registry ------------------------------------------------------------------------------

INTEGRATORS: dict[str, Integrator] = {}


def register_integrator(integrator: Integrator, *, replace_existing: bool = False) -> Integrator:
    """Add ``integrator`` to :data:`INTEGRATORS`, which ``sample``, the CLI's choices, the bench and the
    diffusers scheduler read; a name already taken is refused unless ``replace_existing``."""
    if not isinstance(integrator, Integrator):
        raise LazyflowError(f"register_integrator takes an Integrator, got {type(integrator).__name__}")
    if integrator.name in INTEGRATORS and not replace_existing:
        raise LazyflowError(f"an integrator named {integrator.name!r} is registered already")
    INTEGRATORS[integrator.name] = integrator
    return integrator


for _integrator in (
    Integrator(name="euler", order=1, build=_euler, description="Euler / Euler-Maruyama"),
    Integrator(name="heun", order=2, build=_heun, calls_per_step=2, plain_last_step=True,
               description="Heun (trapezoidal predictor-corrector), plain last step"),
    Integrator(name="midpoint", order=2, build=_midpoint, calls_per_step=2, description="explicit midpoint"),
    Integrator(name="exponential", order=1, build=_exponential, exponential=True,
               description="exact linear part with eta_X frozen (DDIM for VP, Brownian bridge for the point mass)"),
    Integrator(name="exp-midpoint", order=2, build=_exp_midpoint, calls_per_step=2, exponential=True,
               description="two-stage exponential, midpoint in log snr"),
    Integrator(name="multistep", order=2, build=_multistep, exponential=True, history=2,
               description="exponential with eta_X extrapolated linearly in log snr, exact weight"),
    Integrator(name="multistep-pc", order=2, build=_multistep, exponential=True, history=2, corrector=True,
               description="multistep plus a corrector that reuses the next call (as UniPC)"),
    Integrator(name="multistep3", order=3, build=_multistep3, exponential=True, history=3,
               description="exponential with eta_X extrapolated quadratically in log snr, exact weights"),
    Integrator(name="multistep3-pc", order=3, build=_multistep3, exponential=True, history=3, corrector=True,
               description="multistep3 plus a third-order corrector that reuses the next call"),
    *data_frame.DATA_FRAME_INTEGRATORS,
    BESPOKE_PLACEHOLDER,
):
    register_integrator(_integrator)
del _integrator


def get_integrator(name: str | Integrator) -> Integrator:
    if isinstance(name, Integrator):
        return name
    try:
        return INTEGRATORS[name]
    except (KeyError, TypeError):
        raise LazyflowError(f"unknown integrator {name!r}; choose one of {', '.join(INTEGRATORS)}") from None


def build_plan(target: Schedule, source: Schedule, times: torch.Tensor, *, integrator: str | Integrator,
               final_step: str, prediction: str, device: torch.device | str | None, dtype: torch.dtype,
               data_stats: DataStats | None = None) -> Plan:
    """Coefficient tables for ``integrator`` on ``times`` (float64 math, cast to ``dtype`` on ``device``);
    ``data_stats`` for the data-frame integrators."""
    method = get_integrator(integrator)
    check_plan_options(target, method, final_step)
    work = torch.float64 if torch.device(device or "cpu").type != "mps" else torch.float32
    t = times.to(device=device, dtype=work)
    _check_informative_start(target, prediction, t)
    # where eps is infinite at t = 0 (eps* of a standard schedule) the first step is the ODE step
    ode = (t[:-1] <= 0) & target.singular_start
    context = BuildContext(target, source, prediction, t, ode, method, data_stats)
    now = context.now
    coefficients = method.build(context)
    if final_step == "denoise":
        coefficients = coefficients.denoised(now)
    coefficients = coefficients.at_point_mass_start(now.zero)
    _check_finite(coefficients, now, times, method.name)
    cast = coefficients.map(lambda v: v.to(dtype))
    _check_finite(cast, now, times, method.name, after=f"the cast to {dtype}")
    return Plan(method, times, now.tau.to(dtype), now.in_scale.to(dtype), cast,
                *(v.to(dtype) for v in (now.P, now.Q, now.K_x, now.K_e)))


def check_plan_options(target: Schedule, integrator: Integrator, final_step: str) -> None:
    """Refuse an unknown ``final_step`` or an exponential integrator on a schedule without an exact step
    (the checks :func:`build_plan` makes, for callers that settle these before they have a grid)."""
    if final_step not in FINAL_STEPS:
        raise LazyflowError(f"unknown final_step {final_step!r}; choose one of {', '.join(FINAL_STEPS)}")
    if integrator.exponential and not target.has_exponential:
        raise LazyflowError(f"integrator {integrator.name!r}: {target.kernel.EXPONENTIAL}")
    if integrator.needs_data_stats and final_step != "euler":
        raise LazyflowError(f"integrator {integrator.name!r} ends with its own last step (anchored at t = 1): "
                            f"final_step {final_step!r} does not apply")


def _check_informative_start(target: Schedule, prediction: str, t: torch.Tensor) -> None:
    """Refuse a run whose first call is at snr = 0 with a noise or score model: there I = alpha Z, the
    output is a function of x alone and eta_X = E[X] cannot be read from it (p, q hold 1/beta; MATH.md §2)."""
    if prediction not in ("noise", "score") or not bool(target.log_snr(t[:1]).isneginf().all()):
        return
    if target.point_mass:
        fix = ("a point-mass schedule must start there, so sample this model with a standard schedule "
               "(e.g. schedule='linear' or 'vp', --schedule linear) and a grid starting at t_0 > 0")
    else:
        fix = (f"start the grid after t = {t[0].item():g}, e.g. grid=[0.01, ...] (--grid 0.01,...,1: explicit "
               "times; the run then starts from alpha(t_0) Z), or grid='logsnr-open:-6,8' (--grid logsnr-open:-6,8)")
    raise SamplingError(f"a {prediction}-prediction model does not determine eta_X at snr = 0 (t = {t[0].item():g}, "
                        f"where this grid starts): its output there carries no information on the data; {fix}")


def _check_finite(coefficients: Coefficients, now: Frame, times: torch.Tensor, integrator: str,
                  after: str = "") -> None:
    """One host synchronisation per run, before the loop: refuse non-finite coefficients (``after`` names
    the cast that made a finite float64 value overflow); second-stage tables count only where used."""
    mask = torch.tensor(coefficients.two_stage, device=now.t.device)
    used = {"model time": now.tau, "input scale": now.in_scale}
    for name, values in coefficients.tables().items():
        if name in coefficients.SECOND:
            values = torch.where(mask.reshape(-1, *[1] * (values.dim() - 1)), values, torch.zeros_like(values))
        used[name] = values
    steps = now.t.numel()
    for name, values in used.items():
        bad = ~torch.isfinite(values)
        if bad.any():
            k = int(bad.nonzero()[0, 0])
            if after:
                raise SamplingError(f"{integrator} coefficient {name!r} at step {k} (t = {times[k].item():.6g}) "
                                    f"overflows after {after}; sample with dtype=torch.float64 or another grid")
            last = k == times.numel() - 2   # the last step: returning eta_X there needs no drift
            fix = ("return the denoised mean there instead, final_step='denoise' (--final-step denoise), or use a "
                   "grid that avoids that time") if last else "use a grid that avoids that time"
            raise SamplingError(f"{integrator} coefficient {name!r} is not finite at step {k} "
                                f"(t = {times[k].item():.6g} -> {times[min(k + 1, steps)].item():.6g}): the schedule "
                                f"is singular there; {fix}")
