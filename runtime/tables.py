"""Per-step coefficient tables: every integrator step is an affine update of (x, model outputs, noise).

Built once per time grid on the sampler's device, from a kernel's closed forms:
the model (trained on the kernel's source schedule) is called at source time tau(t) on x / c(t),
and eta_X(t, x) = P x + Q m with P = p(tau) / c, Q = q(tau); the drift is b = F x + G m with
F = K_x + K_e P, G = K_e Q.  Then, with h = t' - t:

- euler:       x' = (1 + h F) x + h G m + sigma sqrt(h) xi
- heun:        x~ = euler step;  x' = (1 + h F/2) x + (h G/2) m + (h F'/2) x~ + (h G'/2) m~ + sigma sqrt(h) xi
- exponential: x' = (A + B P) x + B Q m + C xi  with (A, B, C) from ``kernel.exponential``
- denoise:     x' = P x + Q m  (the last step returns eta_X)

Where the diffusion is infinite at t = 0 (eps* of a standard schedule) the first step is the
probability-flow ODE step; a point-mass schedule starts at x = 0, where the x-coefficients are set to 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from .grids import invert_log_snr

__all__ = ["Plan", "build_plan", "INTEGRATORS", "FINAL_STEPS", "SamplingError"]

INTEGRATORS = ("euler", "heun", "exponential")
FINAL_STEPS = ("euler", "denoise")


class SamplingError(RuntimeError):
    """A sampling run that cannot go on; the message names the step and time."""


@dataclass(frozen=True)
class Plan:
    """Tables for one run (each of length ``steps``; Heun's second-stage columns hold the k+1 evaluation)."""

    integrator: str
    times: torch.Tensor          # (steps + 1,) target times, float64 on CPU (for messages)
    tau: torch.Tensor            # (steps + 1,) source times at which the model is called
    in_scale: torch.Tensor       # (steps + 1,) 1 / c(t): the model sees x / c
    a: torch.Tensor              # coefficient of x
    b: torch.Tensor              # coefficient of the model output at t_k
    c: torch.Tensor              # coefficient of the noise
    # Heun only: predictor coefficients and the corrector's x~ and m~ coefficients
    a1: torch.Tensor | None = None
    b1: torch.Tensor | None = None
    d: torch.Tensor | None = None
    e: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        return self.a.numel()

    @property
    def nfe(self) -> int:
        """Network evaluations the plan makes."""
        return 2 * self.steps - 1 if self.integrator == "heun" else self.steps


def _conversion(kernel: ModuleType, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, c) on the grid, from the closed forms or by numeric inversion of the source snr."""
    if kernel.time_map is not None:
        tau, c = kernel.time_map(t), kernel.scale(t)
    else:
        tau = invert_log_snr(kernel.source_log_snr, kernel.log_snr(t))
        alpha, beta = kernel.schedule(t)[:2]
        alpha_s, beta_s = kernel.source_schedule(tau)
        c = (alpha + beta) / (alpha_s + beta_s)
    # ends of the grid: the limits, not 0/0
    tau = torch.where(t <= 0, torch.zeros_like(tau), torch.where(t >= 1, torch.ones_like(tau), tau))
    return tau, c


def build_plan(kernel: ModuleType, times: torch.Tensor, *, integrator: str, final_step: str, prediction: str,
               device: torch.device | str | None, dtype: torch.dtype) -> Plan:
    """Coefficient tables for ``integrator`` on ``times`` (float64 math, cast to ``dtype`` on ``device``)."""
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {', '.join(INTEGRATORS)}")
    if final_step not in FINAL_STEPS:
        raise ValueError(f"unknown final_step {final_step!r}; choose one of {', '.join(FINAL_STEPS)}")
    if prediction not in kernel.PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(kernel.PREDICTIONS)}")
    if integrator == "exponential" and kernel.exponential is None:
        raise ValueError(f"{kernel.EXPONENTIAL}")
    work = torch.float64 if torch.device(device or "cpu").type != "mps" else torch.float32
    t = times.to(device=device, dtype=work)
    t0, t1 = t[:-1], t[1:]
    h = t1 - t0
    steps = h.numel()
    tau, c = _conversion(kernel, t)
    start_at_zero = torch.zeros_like(t, dtype=torch.bool)
    if kernel.POINT_MASS:
        start_at_zero[0] = True
    in_scale = torch.where(start_at_zero, torch.zeros_like(c), 1 / c)
    p, q = getattr(kernel, f"eta_{prediction}")(tau)
    P, Q = p * in_scale, q
    K_x, K_e = kernel.drift(t)
    if kernel.SINGULAR_START:
        K_x0, K_e0 = kernel.ode_drift(t[:1])
        K_x, K_e = torch.cat([K_x0, K_x[1:]]), torch.cat([K_e0, K_e[1:]])
    F = torch.where(start_at_zero, torch.zeros_like(K_x), K_x + K_e * P)
    G = K_e * Q
    sigma = kernel.schedule(t0)[4]
    if kernel.SINGULAR_START:
        sigma = torch.cat([torch.zeros_like(sigma[:1]), sigma[1:]])
    noise = sigma * torch.sqrt(h)
    extra: dict[str, torch.Tensor] = {}
    if integrator == "exponential":
        A, B, C = kernel.exponential(t0, t1)
        if kernel.SINGULAR_START:
            A0, B0, C0 = kernel.ode_exponential(t0[:1], t1[:1])
            A, B, C = torch.cat([A0, A[1:]]), torch.cat([B0, B[1:]]), torch.cat([C0, C[1:]])
        a = torch.where(start_at_zero[:-1], torch.zeros_like(A), A + B * P[:-1])
        b, cc = B * Q[:-1], C
    else:
        a, b, cc = 1 + h * F[:-1], h * G[:-1], noise
        if integrator == "heun":
            extra = {"a1": a.clone(), "b1": b.clone(), "d": h / 2 * F[1:], "e": h / 2 * G[1:]}
            a, b = 1 + h / 2 * F[:-1], h / 2 * G[:-1]
            # the last step (to t = 1, where the model may be singular) is a plain Euler step
            extra["d"][-1], extra["e"][-1] = 0.0, 0.0
            a[-1], b[-1] = extra["a1"][-1], extra["b1"][-1]
    if final_step == "denoise":
        a[-1], b[-1], cc[-1] = torch.where(start_at_zero[-2], 0.0, P[-2]), Q[-2], 0.0
        if integrator == "heun":
            extra["d"][-1], extra["e"][-1] = 0.0, 0.0
    a = torch.where(start_at_zero[:-1], torch.zeros_like(a), a)
    columns = {"a": a, "b": b, "c": cc, **extra}
    _check_finite({**columns, "model time": tau[:steps], "input scale": in_scale[:steps]}, times, steps, integrator)
    cast = {k: v.to(dtype) for k, v in columns.items()}
    return Plan(integrator, times, tau.to(dtype), in_scale.to(dtype), **cast)


def _check_finite(columns: dict[str, torch.Tensor], times: torch.Tensor, steps: int, integrator: str) -> None:
    """One host synchronisation per run, before the loop: refuse non-finite coefficients."""
    for name, values in columns.items():
        bad = ~torch.isfinite(values)
        if bad.any():
            k = int(bad.nonzero()[0, 0])
            raise SamplingError(f"{integrator} coefficient {name!r} is not finite at step {k} "
                                f"(t = {times[k].item():.6g} -> {times[min(k + 1, steps)].item():.6g}): the schedule "
                                "is singular there; try final_step='denoise' or a grid that avoids that time")
