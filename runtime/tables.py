"""Per-step coefficient tables: every integrator step is an affine update of (x, model outputs, noise).

Built once per time grid on the sampler's device, from a kernel's closed forms:
the model (trained on the kernel's source schedule) is called at source time tau(t) on x / c(t),
and eta_X(t, x) = P x + Q m with P = p(tau) / c, Q = q(tau); the drift is b = F x + G m with
F = K_x + K_e P, G = K_e Q.  Then, with h = t' - t:

- euler:       x' = (1 + h F) x + h G m + sigma sqrt(h) xi
- heun:        x~ = euler step;  x' = (1 + h F/2) x + (h G/2) m + (h F'/2) x~ + (h G'/2) m~ + sigma sqrt(h) xi
- midpoint:    x~ = x + h/2 b(t, x) + sigma sqrt(h/2) xi;  x' = x + h b(t + h/2, x~) + sigma sqrt(h) xi
- exponential: x' = (A + B P) x + B Q m + C xi  with (A, B, C) from ``kernel.exponential``
- exp-midpoint: an exponential step to the log-snr midpoint, then the full exponential step with
               the midpoint's eta_X (second order, as DPM-Solver-2)
- multistep:   the exponential step with eta_X extrapolated linearly in log snr from the previous
               step (second order, as DPM-Solver++(2M) but with the exact weight phi instead of 1/2):
               x' = A x + B (w eta_k - u eta_{k-1}) + C xi, u = phi h_k / h_{k-1}, w = 1 + u,
               eta_k = P x + Q m; first order on the first and last steps.
- multistep-pc: the multistep predictor, then a corrector that reuses the next step's model call:
               x' = A x + B (eta_k + phi (eta_{k+1} - eta_k)) + C xi, eta_{k+1} from the predicted point
               (eta_X linear in log snr over the step, as UniPC's corrector; no extra network evaluation)
- denoise:     x' = P x + Q m  (the last step returns eta_X)

Where the diffusion is infinite at t = 0 (eps* of a standard schedule) the first step is the
probability-flow ODE step; a point-mass schedule starts at x = 0, where the x-coefficients are set to 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from .grids import invert_log_snr

__all__ = ["Plan", "build_plan", "steps_for_nfe", "INTEGRATORS", "FINAL_STEPS", "TWO_STAGE", "MULTISTEP",
           "SamplingError"]

INTEGRATORS = ("euler", "heun", "midpoint", "exponential", "exp-midpoint", "multistep", "multistep-pc")
MULTISTEP = ("multistep", "multistep-pc")
FINAL_STEPS = ("euler", "denoise")
TWO_STAGE = ("heun", "midpoint", "exp-midpoint")


def steps_for_nfe(integrator: str, nfe: int) -> int:
    """The most steps whose network evaluations fit in ``nfe`` (final_step="euler"): Heun makes
    2 steps - 1 calls (its last step is a plain step), midpoint and exp-midpoint 2 per step."""
    if integrator == "heun":
        return max(1, (nfe + 1) // 2)
    return max(1, nfe // 2) if integrator in TWO_STAGE else nfe


class SamplingError(RuntimeError):
    """A sampling run that cannot go on; the message names the step and time."""


@dataclass(frozen=True)
class Plan:
    """Tables for one run, each of length ``steps``.

    Step k calls the model at (tau[k], x * in_scale[k]) -> m.  A one-stage step is
    x' = a x + b m + c xi; a multistep step is x' = a x + b (w eta - u eta_prev) + c xi with
    eta = p x + q m (the corrector of multistep-pc uses b (eta + eta_next) / 2).  A two-stage step
    first predicts x2 = a1 x + b1 m + c1 xi, calls the model at (tau2[k], x2 * in_scale2[k]) -> m2,
    and sets x' = a x + b m + d x2 + e m2 + c xi.
    """

    integrator: str
    times: torch.Tensor          # (steps + 1,) target times, float64 on CPU (for messages)
    two_stage: tuple[bool, ...]
    tau: torch.Tensor
    in_scale: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    tau2: torch.Tensor
    in_scale2: torch.Tensor
    a1: torch.Tensor
    b1: torch.Tensor
    c1: torch.Tensor
    d: torch.Tensor
    e: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    u: torch.Tensor
    w: torch.Tensor
    v: torch.Tensor              # multistep-pc: corrector weight of eta_next

    @property
    def steps(self) -> int:
        return self.a.numel()

    @property
    def nfe(self) -> int:
        """Network evaluations the plan makes."""
        return self.steps + sum(self.two_stage)


def _conversion(kernel: ModuleType, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, c) at times t, from the closed forms or by numeric inversion of the source snr."""
    if kernel.time_map is not None:
        tau, c = kernel.time_map(t), kernel.scale(t)
    else:
        tau = invert_log_snr(kernel.source_log_snr, kernel.log_snr(t))
        alpha, beta = kernel.schedule(t)[:2]
        alpha_s, beta_s = kernel.source_schedule(tau)
        c = (alpha + beta) / (alpha_s + beta_s)
    # a 0/0 at an end of [0, 1] takes its limit (tau = 0 at snr 0, tau = 1 at snr infinity)
    bad = ~torch.isfinite(tau)
    tau = torch.where(bad & (t <= 0), torch.zeros_like(tau), torch.where(bad & (t >= 1), torch.ones_like(tau), tau))
    return tau, c


@dataclass(frozen=True)
class _Frame:
    """Everything a step needs at a set of times: model time and input scale, eta_X = P x + Q m,
    drift b = F x + G m, and sigma; ``zero`` marks the point-mass start where x = 0."""

    t: torch.Tensor
    tau: torch.Tensor
    in_scale: torch.Tensor
    P: torch.Tensor
    Q: torch.Tensor
    F: torch.Tensor
    G: torch.Tensor
    sigma: torch.Tensor
    zero: torch.Tensor


def _frame(kernel: ModuleType, t: torch.Tensor, prediction: str, *, ode: torch.Tensor) -> _Frame:
    tau, c = _conversion(kernel, t)
    zero = (t <= 0) & bool(kernel.POINT_MASS)
    in_scale = torch.where(zero, torch.zeros_like(c), 1 / c)
    p, q = getattr(kernel, f"eta_{prediction}")(tau)
    P = torch.where(zero, torch.zeros_like(p), p * in_scale)
    K_x, K_e = kernel.drift(t)
    if ode.any():
        K_x0, K_e0 = kernel.ode_drift(t)
        K_x, K_e = torch.where(ode, K_x0, K_x), torch.where(ode, K_e0, K_e)
    sigma = torch.where(ode, torch.zeros_like(t), kernel.schedule(t)[4])
    F = torch.where(zero, torch.zeros_like(K_x), K_x + K_e * P)
    return _Frame(t, tau, in_scale, P, q, F, K_e * q, sigma, zero)


def _exponential(kernel: ModuleType, t0: torch.Tensor, t1: torch.Tensor, ode: torch.Tensor):
    A, B, C = kernel.exponential(t0, t1)
    if ode.any():
        A0, B0, C0 = kernel.ode_exponential(t0, t1)
        A, B, C = torch.where(ode, A0, A), torch.where(ode, B0, B), torch.where(ode, C0, C)
    return A, B, C


def _log_snr_midpoints(kernel: ModuleType, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Midpoints in log snr where both ends have a finite log snr, else in t."""
    mid = (t0 + t1) / 2
    lam0, lam1 = kernel.log_snr(t0), kernel.log_snr(t1)
    finite = torch.isfinite(lam0) & torch.isfinite(lam1)
    lam_mid = torch.where(finite, (lam0 + lam1) / 2, torch.zeros_like(lam0))
    return torch.where(finite, invert_log_snr(kernel.log_snr, lam_mid), mid)


#: Gauss-Legendre nodes and weights on [-1, 1] for the slope weight
_GAUSS = np.polynomial.legendre.leggauss(12)


def _slope_weight(kernel: ModuleType, t0: torch.Tensor, t1: torch.Tensor, lam: torch.Tensor, B: torch.Tensor,
                  ode: torch.Tensor) -> torch.Tensor:
    """phi_k = B2 / (B h) with B2 = int B(t(l), t_k+1) dl over [lam_k, lam_k+1]; NaN where lam is infinite.

    For small h, phi -> 1/2 (DPM-Solver++'s approximation); it is exact for any frame and diffusion."""
    nodes, weights = (torch.as_tensor(v, dtype=t0.dtype, device=t0.device) for v in _GAUSS)
    lam0, lam1 = lam[:-1], lam[1:]
    finite = torch.isfinite(lam0) & torch.isfinite(lam1)
    lo = torch.where(finite, lam0, torch.zeros_like(lam0))
    hi = torch.where(finite, lam1, torch.ones_like(lam1))
    h = hi - lo
    points = lo[:, None] + (nodes[None, :] + 1) / 2 * h[:, None]            # (steps, nodes) in log snr
    times = invert_log_snr(kernel.log_snr, points)
    ends = t1[:, None].expand_as(times)
    step_ode = ode[:, None].expand_as(times)
    B_inner = _exponential(kernel, times.reshape(-1), ends.reshape(-1), step_ode.reshape(-1))[1].reshape(times.shape)
    B2 = (B_inner * weights[None, :]).sum(1) * h / 2
    phi = B2 / (B * h)
    return torch.where(finite, phi, torch.full_like(phi, float("nan")))


def build_plan(kernel: ModuleType, times: torch.Tensor, *, integrator: str, final_step: str, prediction: str,
               device: torch.device | str | None, dtype: torch.dtype) -> Plan:
    """Coefficient tables for ``integrator`` on ``times`` (float64 math, cast to ``dtype`` on ``device``)."""
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {', '.join(INTEGRATORS)}")
    if final_step not in FINAL_STEPS:
        raise ValueError(f"unknown final_step {final_step!r}; choose one of {', '.join(FINAL_STEPS)}")
    if prediction not in kernel.PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(kernel.PREDICTIONS)}")
    if integrator in ("exponential", "exp-midpoint", *MULTISTEP) and kernel.exponential is None:
        raise ValueError(f"{kernel.EXPONENTIAL}")
    work = torch.float64 if torch.device(device or "cpu").type != "mps" else torch.float32
    t = times.to(device=device, dtype=work)
    t0, t1 = t[:-1], t[1:]
    h = t1 - t0
    steps = h.numel()
    # where eps is infinite at t = 0 (eps* of a standard schedule) the first step is the ODE step
    ode = torch.zeros_like(t0, dtype=torch.bool)
    if kernel.SINGULAR_START:
        ode = t0 <= 0
    now = _frame(kernel, t0, prediction, ode=ode)
    zeros = torch.zeros_like(h)
    col = {name: zeros.clone() for name in ("a", "b", "c", "a1", "b1", "c1", "d", "e", "p", "q", "u", "w", "v")}
    col["tau2"], col["in_scale2"] = now.tau.clone(), now.in_scale.clone()
    two_stage = [integrator in TWO_STAGE] * steps
    if integrator in ("euler", "heun", "midpoint"):
        noise = now.sigma * torch.sqrt(h)
        col["a"], col["b"], col["c"] = 1 + h * now.F, h * now.G, noise
        if integrator == "heun":
            # the last step (into t = 1, where the model may be singular) stays a plain Euler step
            two_stage[-1] = False
            nxt = _frame(kernel, t1, prediction, ode=torch.zeros_like(ode))
            col["a1"], col["b1"], col["c1"] = col["a"].clone(), col["b"].clone(), noise
            col["tau2"], col["in_scale2"] = nxt.tau, nxt.in_scale
            col["d"], col["e"] = h / 2 * nxt.F, h / 2 * nxt.G
            col["a"], col["b"] = 1 + h / 2 * now.F, h / 2 * now.G
            col["a"][-1], col["b"][-1] = 1 + h[-1] * now.F[-1], h[-1] * now.G[-1]
        elif integrator == "midpoint":
            mid = _frame(kernel, (t0 + t1) / 2, prediction, ode=ode)
            col["a1"], col["b1"], col["c1"] = 1 + h / 2 * now.F, h / 2 * now.G, now.sigma * torch.sqrt(h / 2)
            col["tau2"], col["in_scale2"] = mid.tau, mid.in_scale
            col["a"], col["b"], col["d"], col["e"] = torch.ones_like(h), zeros, h * mid.F, h * mid.G
    else:
        A, B, C = _exponential(kernel, t0, t1, ode)
        col["c"] = C
        if integrator == "exp-midpoint":
            tm = _log_snr_midpoints(kernel, t0, t1)
            mid = _frame(kernel, tm, prediction, ode=ode)
            A1, B1, C1 = _exponential(kernel, t0, tm, ode)
            col["a1"], col["b1"], col["c1"] = A1 + B1 * now.P, B1 * now.Q, C1
            col["tau2"], col["in_scale2"] = mid.tau, mid.in_scale
            col["a"], col["b"], col["d"], col["e"] = A, zeros, B * mid.P, B * mid.Q
        elif integrator == "exponential":
            col["a"], col["b"] = A + B * now.P, B * now.Q
        else:
            lam = kernel.log_snr(t)
            h_lam = lam[1:] - lam[:-1]
            # phi = B2 / (B h): eta_X linear in log snr over a step adds B2 * slope, where by parts
            # B2 = int_{lam_k}^{lam_k+1} B(t(lam), t_k+1) dlam (exact for any kernel; Gauss-Legendre)
            phi = _slope_weight(kernel, t0, t1, lam, B, ode)
            u = torch.zeros_like(h_lam)
            u[1:] = phi[1:] * h_lam[1:] / h_lam[:-1]
            usable = torch.isfinite(u) & torch.isfinite(phi)
            usable[0] = False      # no previous evaluation
            usable[-1] = False     # lower order on the last step, into t = 1
            u = torch.where(usable, u, zeros)
            # an infinite log-snr step (from snr = 0) puts all the weight at its far end: phi -> 1
            col["v"] = torch.where(torch.isfinite(phi), phi, torch.ones_like(phi))
            col["p"], col["q"], col["u"], col["w"] = now.P, now.Q, u, 1 + u
            col["a"], col["b"] = A, B
    if final_step == "denoise":
        two_stage[-1] = False
        if integrator in MULTISTEP:
            col["a"][-1], col["b"][-1], col["w"][-1] = 0.0, 1.0, 1.0
        else:
            col["a"][-1], col["b"][-1] = now.P[-1], now.Q[-1]
        col["c"][-1], col["u"][-1] = 0.0, 0.0
    col["a"] = torch.where(now.zero, zeros, col["a"])
    col["a1"] = torch.where(now.zero, zeros, col["a1"])
    used = dict(col)
    used["model time"], used["input scale"] = now.tau, now.in_scale
    for name in ("tau2", "in_scale2", "a1", "b1", "c1", "d", "e"):
        used[name] = torch.where(torch.tensor(two_stage, device=h.device), col[name], zeros)
    _check_finite(used, times, steps, integrator)
    cast = {k: v.to(dtype) for k, v in col.items()}
    return Plan(integrator, times, tuple(two_stage), now.tau.to(dtype), now.in_scale.to(dtype), **cast)


def _check_finite(columns: dict[str, torch.Tensor], times: torch.Tensor, steps: int, integrator: str) -> None:
    """One host synchronisation per run, before the loop: refuse non-finite coefficients."""
    for name, values in columns.items():
        bad = ~torch.isfinite(values)
        if bad.any():
            k = int(bad.nonzero()[0, 0])
            raise SamplingError(f"{integrator} coefficient {name!r} is not finite at step {k} "
                                f"(t = {times[k].item():.6g} -> {times[min(k + 1, steps)].item():.6g}): the schedule "
                                "is singular there; try final_step='denoise' or a grid that avoids that time")
