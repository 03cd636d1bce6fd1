"""The single-step integrators (derive/MATH.md §6): each step starts afresh from its own call, and is an
affine update of the state x, the network output m and fresh noise xi, with h = t' - t and, in every
frame, the drift b(t, x) = F x + G m (:class:`~lazyflow.runtime.core.frames.Frame`):

- ``euler``:        x' = x + h b(t, x) + sigma sqrt(h) xi = (1 + h F) x + h G m + sigma sqrt(h) xi
- ``heun``:         x~ = the Euler step; x' = x + h/2 (b(t, x) + b(t', x~)) + sigma sqrt(h) xi
                    (the last step, into t = 1, stays a plain Euler step)
- ``midpoint``:     x~ = x + h/2 b(t, x) + sigma sqrt(h/2) xi;  x' = x + h b(t + h/2, x~) + sigma sqrt(h) xi
- ``exponential``:  x' = A x + B eta_X + C xi = (A + B P) x + B Q m + C xi, with (A, B, C) the exact step for
                    frozen eta_X
- ``exp-midpoint``: an exponential step to the log-snr midpoint t~, then the whole step with eta_X there:
                    x' = A x + B eta_X(t~, x~) + C xi

Two table families hold them, their coefficients combined once per grid (``keep_x`` = 1 + h F, ...) so
that each step is one or two fused multiply-adds: :class:`AffineStep` (one call) and :class:`TwoStageStep`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from .frames import Frame
from .plan import BuildContext, Call, Ops, Step, Tables
from .schedule import Schedule

__all__ = ["AffineStep", "TwoStageStep", "euler", "heun", "midpoint", "exponential", "exp_midpoint",
           "log_snr_midpoints"]


@dataclass(frozen=True)
class AffineStep(Tables):
    """One call per step:  x' = keep_x x + from_output m + noise_scale xi."""

    keep_x: torch.Tensor
    from_output: torch.Tensor
    noise_scale: torch.Tensor

    STATE: ClassVar[tuple[str, ...]] = ("keep_x",)

    def step(self, k: int, x: torch.Tensor, m: torch.Tensor, xi: torch.Tensor, ops: Ops) -> torch.Tensor:
        return ops.affine(x, m, self.keep_x[k], self.from_output[k], self.noise_scale[k], xi)

    def denoised(self, now: Frame) -> "AffineStep":
        """The last step returns eta_X = P x + Q m (no noise)."""
        keep_x, from_output, noise_scale = self.keep_x.clone(), self.from_output.clone(), self.noise_scale.clone()
        keep_x[-1], from_output[-1], noise_scale[-1] = now.eta_per_x[-1], now.eta_per_output[-1], 0.0
        return replace(self, keep_x=keep_x, from_output=from_output, noise_scale=noise_scale)


@dataclass(frozen=True)
class TwoStageStep(AffineStep):
    """Where ``two_calls[k]``: a stage x~ = stage_keep_x x + stage_from_output m + stage_noise_scale xi, a second
    call m~ at (stage_tau, x~ * stage_in_scale), then
    x' = keep_x x + from_output m + from_stage_x x~ + from_stage_output m~ + noise_scale xi;
    elsewhere the one-call step of :class:`AffineStep`."""

    two_calls: tuple[bool, ...]
    stage_keep_x: torch.Tensor
    stage_from_output: torch.Tensor
    stage_noise_scale: torch.Tensor
    stage_tau: torch.Tensor
    stage_in_scale: torch.Tensor
    from_stage_x: torch.Tensor
    from_stage_output: torch.Tensor

    STATE: ClassVar[tuple[str, ...]] = ("keep_x", "stage_keep_x")
    SECOND: ClassVar[tuple[str, ...]] = ("stage_keep_x", "stage_from_output", "stage_noise_scale", "stage_tau",
                                         "stage_in_scale", "from_stage_x", "from_stage_output")

    @property
    def two_stage(self) -> tuple[bool, ...]:
        return self.two_calls

    def second_call_tau(self, k: int) -> torch.Tensor:
        return self.stage_tau[k]

    def step(self, k: int, x: torch.Tensor, m: torch.Tensor, xi: torch.Tensor, ops: Ops) -> Step | torch.Tensor:
        if not self.two_calls[k]:
            return super().step(k, x, m, xi, ops)
        return self._two_stage(k, x, m, xi, ops)

    def _two_stage(self, k: int, x: torch.Tensor, m: torch.Tensor, xi: torch.Tensor, ops: Ops) -> Step:
        x_stage = ops.affine(x, m, self.stage_keep_x[k], self.stage_from_output[k], self.stage_noise_scale[k], xi)
        m_stage = yield Call(x_stage, self.stage_tau[k], self.stage_in_scale[k], k)
        return ops.two_point(x, m, x_stage, m_stage, self.keep_x[k], self.from_output[k], self.from_stage_x[k],
                             self.from_stage_output[k], self.noise_scale[k], xi)

    def denoised(self, now: Frame) -> "TwoStageStep":
        """The last step returns eta_X = P x + Q m (one call, no noise)."""
        return replace(super().denoised(now), two_calls=(*self.two_calls[:-1], False))


def _second_call(at: Frame, h: torch.Tensor, weight: float, *, stage: tuple[torch.Tensor, ...],
                 two_calls: tuple[bool, ...]) -> dict:
    """The tables of a second call at frame ``at`` whose drift enters the step with ``weight`` h:
    from_stage_x = weight h F~, from_stage_output = weight h G~; ``stage`` = (keep_x, from_output, noise_scale) of x~."""
    return dict(two_calls=two_calls, stage_keep_x=stage[0], stage_from_output=stage[1], stage_noise_scale=stage[2],
                stage_tau=at.tau, stage_in_scale=at.in_scale, from_stage_x=weight * h * at.drift_per_x,
                from_stage_output=weight * h * at.drift_per_output)


def euler(ctx: BuildContext) -> AffineStep:
    """x' = (1 + h F) x + h G m + sigma sqrt(h) xi (Euler-Maruyama for an SDE)."""
    now, h = ctx.now, ctx.h
    return AffineStep(keep_x=1 + h * now.drift_per_x, from_output=h * now.drift_per_output,
                      noise_scale=now.sigma * torch.sqrt(h))


def heun(ctx: BuildContext) -> TwoStageStep:
    """x~ = (1 + h F) x + h G m + sigma sqrt(h) xi;  x' = (1 + h F/2) x + (h G/2) m + (h F'/2) x~ + (h G'/2) m~
    + sigma sqrt(h) xi, with F', G' at t' = t + h; the last step (into t = 1, where the model may be
    singular) stays a plain Euler step."""
    now, h = ctx.now, ctx.h
    # a step that starts singular is the probability-flow ODE's Heun step: the corrector's drift at t'
    # is the ODE drift too (the SDE drift there holds an eps s term whose noise the step does not add)
    end = ctx.frame(ctx.t1, ode=ctx.ode)
    noise_scale = now.sigma * torch.sqrt(h)
    keep_x, from_output = 1 + h / 2 * now.drift_per_x, h / 2 * now.drift_per_output
    keep_x[-1], from_output[-1] = 1 + h[-1] * now.drift_per_x[-1], h[-1] * now.drift_per_output[-1]
    stage = (1 + h * now.drift_per_x, h * now.drift_per_output, noise_scale)
    return TwoStageStep(keep_x=keep_x, from_output=from_output, noise_scale=noise_scale,
                        **_second_call(end, h, 0.5, stage=stage, two_calls=(True,) * (h.numel() - 1) + (False,)))


def midpoint(ctx: BuildContext) -> TwoStageStep:
    """x~ = (1 + h F/2) x + (h G/2) m + sigma sqrt(h/2) xi;  x' = x + h F~ x~ + h G~ m~ + sigma sqrt(h) xi,
    with F~, G~ at t + h/2."""
    now, h = ctx.now, ctx.h
    mid = ctx.frame((ctx.t0 + ctx.t1) / 2, ode=ctx.ode)
    stage = (1 + h / 2 * now.drift_per_x, h / 2 * now.drift_per_output, now.sigma * torch.sqrt(h / 2))
    return TwoStageStep(keep_x=torch.ones_like(h), from_output=ctx.zeros(), noise_scale=now.sigma * torch.sqrt(h),
                        **_second_call(mid, h, 1.0, stage=stage, two_calls=(True,) * h.numel()))


def exponential(ctx: BuildContext) -> AffineStep:
    """x' = A x + B eta_X + C xi = (A + B P) x + B Q m + C xi."""
    A, B, C = ctx.exponential(ctx.t0, ctx.t1, ctx.ode)
    return AffineStep(keep_x=A + B * ctx.now.eta_per_x, from_output=B * ctx.now.eta_per_output, noise_scale=C)


def log_snr_midpoints(target: Schedule, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Midpoints in log snr where both ends have a finite log snr, else in t."""
    lam0, lam1 = target.log_snr(t0), target.log_snr(t1)
    finite = torch.isfinite(lam0) & torch.isfinite(lam1)
    lam_mid = torch.where(finite, (lam0 + lam1) / 2, torch.zeros_like(lam0))
    return torch.where(finite, target.time_of_log_snr(lam_mid), (t0 + t1) / 2)


def exp_midpoint(ctx: BuildContext) -> TwoStageStep:
    """x~ = (A~ + B~ P) x + B~ Q m + C~ xi over [t, t~] (t~ the log-snr midpoint);
    x' = A x + B (P~ x~ + Q~ m~) + C xi over the whole step."""
    A, B, C = ctx.exponential(ctx.t0, ctx.t1, ctx.ode)
    mid = ctx.frame(log_snr_midpoints(ctx.target, ctx.t0, ctx.t1), ode=ctx.ode)
    A1, B1, C1 = ctx.exponential(ctx.t0, mid.t, ctx.ode)
    return TwoStageStep(keep_x=A, from_output=ctx.zeros(), noise_scale=C, two_calls=(True,) * ctx.h.numel(),
                        stage_keep_x=A1 + B1 * ctx.now.eta_per_x, stage_from_output=B1 * ctx.now.eta_per_output,
                        stage_noise_scale=C1, stage_tau=mid.tau, stage_in_scale=mid.in_scale,
                        from_stage_x=B * mid.eta_per_x, from_stage_output=B * mid.eta_per_output)
