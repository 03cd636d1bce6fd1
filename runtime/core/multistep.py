"""The exponential multistep integrators (derive/MATH.md §6): each step is the exact step of the
linear part, x' = A x + B eta + C xi, with eta_X extrapolated in log snr from the past evaluations,
and, with a corrector, redone with the next step's evaluation (which costs no extra call):

- ``multistep``:     x' = A x + B (w eta_k - u eta_k-1) + C xi: eta_X extrapolated linearly in log snr
                     with the exact weight phi = B2 / (B h) (u = phi h_k / h_k-1, w = 1 + u)
- ``multistep-pc``:  the multistep predictor, then x' = A x + B (eta_k + phi (eta_k+1 - eta_k)) + C xi
                     with eta_k+1 from the next step's network call (no extra evaluation)
- ``multistep3``:    x' = A x + B (w eta_k - u eta_k-1 + z eta_k-2) + C xi: eta_X extrapolated quadratically
                     in log snr, exact weights from the moments phi = B2 / (B h), chi = B3 / (B h^2)
- ``multistep3-pc``: the multistep3 predictor, then
                     x' = A x + B (eta_k + v (eta_k+1 - eta_k) - y (eta_k - eta_k-1)) + C xi
                     (the quadratic through the last three evaluations, the next one included)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import numpy as np
import torch

from .frames import Frame
from .plan import BuildContext, Call, Callback, Loop, Ops, Plan, Tables, observe

__all__ = ["MultistepTables", "multistep", "multistep3", "kernel_moments"]


@dataclass(frozen=True)
class MultistepTables(Tables):
    """One network call per step, eta_k = P x_k + Q m_k at each (the plan's frame).  The predictor

        x_k+1 = keep_x x_k + from_eta (sum_j extrapolation[j] eta_k-j) + noise_scale xi

    over the last ``len(extrapolation)`` evaluations; with a ``correction`` (v,) or (v, y) the next step's
    call redoes the step just taken:

        x_k+1 = keep_x x_k + from_eta (eta_k + v (eta_k+1 - eta_k) - y (eta_k - eta_k-1)) + noise_scale xi."""

    keep_x: torch.Tensor
    from_eta: torch.Tensor
    noise_scale: torch.Tensor
    extrapolation: tuple[torch.Tensor, ...]
    correction: tuple[torch.Tensor, ...] | None = None

    STATE: ClassVar[tuple[str, ...]] = ("keep_x",)

    def extrapolated(self, k: int, eta: torch.Tensor, past: list[torch.Tensor]) -> torch.Tensor:
        """``sum_j extrapolation[j][k] eta_k-j`` (``past`` = [eta_k-1, eta_k-2, ...])."""
        mix = self.extrapolation[0][k] * eta
        for weight, earlier in zip(self.extrapolation[1:], past):
            mix = mix + weight[k] * earlier
        return mix

    def corrected(self, k: int, eta: torch.Tensor, eta_next: torch.Tensor, past: list[torch.Tensor]) -> torch.Tensor:
        """eta_k + v (eta_k+1 - eta_k) - y (eta_k - eta_k-1)."""
        mix = eta + self.correction[0][k] * (eta_next - eta)
        if len(self.correction) > 1:
            mix = mix - self.correction[1][k] * (eta - past[0])
        return mix

    def loop(self, x: torch.Tensor, plan: Plan, noise: Callable[[int], torch.Tensor], ops: Ops,
             callback: Callback | None, progress: Callable[[int], None] | None) -> Loop:
        """Integrate from x: one call per step, made at the predicted x_k+1; its eta_k+1 corrects that step
        and is kept for the next steps' extrapolation."""
        now = plan.now
        past = [torch.zeros_like(x)] * (len(self.extrapolation) - 1)
        eta = now.eta(0, x, (yield Call.at(now, 0, x)))
        if callback is not None:
            observe(callback, plan, 0, x, eta)
        for k in range(plan.steps):
            xi = noise(k)
            keep_x, from_eta, noise_scale = self.keep_x[k], self.from_eta[k], self.noise_scale[k]
            x_next = ops.affine(x, self.extrapolated(k, eta, past), keep_x, from_eta, noise_scale, xi)
            if k + 1 < plan.steps:
                eta_next = now.eta(k + 1, x_next, (yield Call.at(now, k + 1, x_next)))
                if self.correction is not None:
                    x_next = ops.affine(x, self.corrected(k, eta, eta_next, past), keep_x, from_eta, noise_scale, xi)
                if callback is not None:
                    observe(callback, plan, k + 1, x_next, eta_next)
                past = [eta, *past[:-1]]
                eta = eta_next
            x = x_next
            if progress is not None:
                progress(1)
        return x

    def denoised(self, now: Frame) -> "MultistepTables":
        """The last step returns its eta_k (keep_x = 0, from_eta = 1, no extrapolation, no noise)."""
        keep_x, from_eta, noise_scale = self.keep_x.clone(), self.from_eta.clone(), self.noise_scale.clone()
        keep_x[-1], from_eta[-1], noise_scale[-1] = 0.0, 1.0, 0.0
        extrapolation = tuple(w.clone() for w in self.extrapolation)
        extrapolation[0][-1] = 1.0
        for w in extrapolation[1:]:
            w[-1] = 0.0
        return replace(self, keep_x=keep_x, from_eta=from_eta, noise_scale=noise_scale, extrapolation=extrapolation)


#: Gauss-Legendre nodes and weights on [-1, 1] for the multistep weights (the kernel's moments)
_GAUSS = np.polynomial.legendre.leggauss(12)


def kernel_moments(ctx: BuildContext, lam: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi_k = B2 / (B h) and chi_k = B3 / (B h^2) with B_j = int B(t(l), t_k+1) (l - lam_k)^(j-2) dl over
    [lam_k, lam_k+1] (12-point Gauss-Legendre); NaN where lam is infinite.  For small h phi -> 1/2 and
    chi -> 1/6 (B vanishes linearly at lam_k+1); closed forms in MATH.md §6."""
    t0 = ctx.t0
    nodes, weights = (torch.as_tensor(v, dtype=t0.dtype, device=t0.device) for v in _GAUSS)
    lam0, lam1 = lam[:-1], lam[1:]
    finite = torch.isfinite(lam0) & torch.isfinite(lam1)
    lo = torch.where(finite, lam0, torch.zeros_like(lam0))
    hi = torch.where(finite, lam1, torch.ones_like(lam1))
    h = hi - lo
    offsets = (nodes[None, :] + 1) / 2 * h[:, None]                           # l - lam_k at the nodes
    times = ctx.target.time_of_log_snr(lo[:, None] + offsets)
    ends = ctx.t1[:, None].expand_as(times)
    step_ode = ctx.ode[:, None].expand_as(times)
    B_inner = ctx.exponential(times.reshape(-1), ends.reshape(-1), step_ode.reshape(-1))[1].reshape(times.shape)
    B2 = (B_inner * weights[None, :]).sum(1) * h / 2
    B3 = (B_inner * offsets * weights[None, :]).sum(1) * h / 2
    nan = torch.full_like(h, float("nan"))
    return torch.where(finite, B2 / (B * h), nan), torch.where(finite, B3 / (B * h * h), nan)


def multistep(ctx: BuildContext) -> MultistepTables:
    """Second-order exponential multistep: w = 1 + u, u = phi h_k / h_k-1 (first order on the first step,
    the last one and where a weight is not finite); corrector v = phi (1 from snr = 0)."""
    A, B, C = ctx.exponential(ctx.t0, ctx.t1, ctx.ode)
    lam = ctx.target.log_snr(ctx.t)
    h_lam = lam[1:] - lam[:-1]
    phi = kernel_moments(ctx, lam, B)[0]   # the slope weight B2 / (B h); chi is for multistep3
    zeros = ctx.zeros()
    u = torch.zeros_like(h_lam)
    u[1:] = phi[1:] * h_lam[1:] / h_lam[:-1]
    usable = torch.isfinite(u) & torch.isfinite(phi)
    usable[0] = False      # no previous evaluation
    usable[-1] = False     # lower order on the last step, into t = 1
    u = torch.where(usable, u, zeros)
    # an infinite log-snr step (from snr = 0) puts all the weight at its far end: phi -> 1
    v = torch.where(torch.isfinite(phi), phi, torch.ones_like(phi))
    return MultistepTables(keep_x=A, from_eta=B, noise_scale=C, extrapolation=(1 + u, -u),
                           correction=(v,) if ctx.integrator.corrector else None)


def multistep3(ctx: BuildContext) -> MultistepTables:
    """Third-order exponential multistep (MATH.md §6).  With h = lam_k+1 - lam_k, h1 = lam_k - lam_k-1,
    h2 = lam_k-1 - lam_k-2 and eta(l) the quadratic through the last three evaluations,
    int B(s, t') d eta = c1 D1 + c2 D2 (Newton divided differences D1, D2 at lam_k, lam_k-1, lam_k-2) with
    c1 = phi h B, c2 = (2 chi h^2 + phi h h1) B; so w = 1 + c1/h1 + c2/(h1 (h1 + h2)), u = c1/h1 + c2/(h1 h2),
    z = c2/(h2 (h1 + h2)) (w - u + z = 1).  Order 2 (multistep's u) where h2 is not finite; order 1 where
    h1 or h is not (the first step, the step after one from snr = 0) and on a step into t = 1.
    Corrector (the quadratic through lam_k+1, lam_k, lam_k-1): v = phi + (2 chi - phi) h / (h + h1),
    y = (2 chi - phi) h^2 / (h1 (h + h1)); v = phi, y = 0 where h1 is not finite; v = 1 from snr = 0."""
    A, B, C = ctx.exponential(ctx.t0, ctx.t1, ctx.ode)
    lam = ctx.target.log_snr(ctx.t)
    h = lam[1:] - lam[:-1]
    phi, chi = kernel_moments(ctx, lam, B)
    zeros = ctx.zeros()
    h1, h2 = torch.full_like(h, float("nan")), torch.full_like(h, float("nan"))
    h1[1:], h2[2:] = h[:-1], h[:-2]
    ok1 = torch.isfinite(h1) & torch.isfinite(phi) & torch.isfinite(chi) & (h1 > 0)
    # into t = 1 lambda is +inf (or float-rounding large, e.g. vp's cos(pi/2) = 6e-17): a first-order step
    ok1 = ok1 & (ctx.t1 < 1)
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
    return MultistepTables(keep_x=A, from_eta=B, noise_scale=C, extrapolation=(w, -u, z),
                           correction=(v, y) if ctx.integrator.corrector else None)
