"""Frames exact for the data's own Gaussian (derive/MATH.md §10): the linear part of the
probability-flow ODE for data N(mu, Sigma) is integrated exactly per direction of Sigma, and only the
residual of the network's velocity against that Gaussian velocity is approximated.

In the target schedule (alpha, beta), per direction i of the covariance (variance lam_i, coordinates
y = R (x - beta mu), R from :meth:`DataStats.directions`) the Gaussian velocity is
v_G = beta' mu + R^-1 (a ⊙ y) with a_i = r_i' / (2 r_i), r_i = alpha^2 + lam_i beta^2, so
dy/dt = a ⊙ y + f with the residual f = R (v - beta' mu) - a ⊙ y, and over a step

    y' = sqrt(r(t') / r(t)) ⊙ y + sum_j W_j ⊙ f_j,   W_j = int_t^t' sqrt(r(t') / r(s)) l_j(s) ds,

where l_j is the Lagrange basis through the times of the residuals used (the last ``history`` ones;
with a corrector the next call's residual too).  The weights are computed per direction by
Gauss-Legendre quadrature once per grid.  Two facts come free: with the data's true mean the residual
vanishes at t = 0 (no call is needed there: N calls buy N + 1 steps) and, for any data, at t = 1 (the
``anchor``: a node with value 0 on the last step); both are used on grids of fewer than
:data:`ANCHORS_BELOW` steps.  On Gaussian data f = 0 and every step is exact.

The stochastic variant (``data-sde*``, MATH.md §10) integrates the SDE of a schedule with the optimal
diffusion eps = lambda^2 eps*, eps* = alpha^2 (log snr)' (lambda: the diffusion scale).  Per direction
dy = (a - eps/r) y dt + f dt + sqrt(2 eps) dW, with the residual f = (1 + lambda^2) (v - v_G), and the
Gaussian part has the exact transition

    y' = sqrt(r(t')/r(t)) D ⊙ y + sum_j W_j ⊙ f_j + sqrt(r(t') (1 - D^2)) ⊙ R xi,
    D(t, t') = (beta(t)^2 r(t') / (beta(t')^2 r(t)))^(lambda^2 / 2)

(int eps*/r dt = [log(beta^2/r)]/2 in closed form), W_j with the kernel sqrt(r(t')/r(s)) D(s, t').
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np
import torch

from ...errors import LazyflowError
from .data_stats import ConditionalStats, DataStats, Directions
from .plan import BuildContext, Call, Callback, Integrator, Loop, Ops, Plan, Tables, observe

__all__ = ["DataFrameTables", "data_frame_integrator", "without_skip", "frame_for_run", "stochastic_data_frame",
           "ANCHORS_BELOW", "DATA_FRAME_INTEGRATORS", "DATA_2M", "DATA_2M_PC", "QUADRATURE_NODES"]

#: Gauss-Legendre nodes per step for the weights (64 vs 128 changes them by < 1e-13 on the tests' grids)
QUADRATURE_NODES = 64


@dataclass(frozen=True)
class DataFrameTables(Tables):
    """One network call per step (none at the first step with ``skip_first``), in the rotated coordinates
    y = R (x - beta mu) of the data's directions.  Per step k:

        f_k   = residual_scale (R (v_k - beta'_k mu) - gaussian_rate_k ⊙ y_k),    v_k = velocity_per_x x_k + velocity_per_output m_k
        y_k+1 = propagator_k ⊙ y_k [+ noise_scale_k ⊙ R xi] + sum_j residual_weights[j]_k ⊙ f_k-j
        x_k+1 = R^-1 y_k+1 + beta_k+1 mu

    and with ``corrected_weights`` the step redone with f_k+1 from the next call (j = 0: f_k+1, then f_k+1-j).
    ``propagator`` = sqrt(r(t_k+1)/r(t_k)) D per direction, ``gaussian_rate`` = r'/(2r) at t_k, v the model's
    probability-flow velocity in the target frame, ``beta``, ``d_beta`` the target's beta (also at t_N) and
    beta' at t_k.  The stochastic variant: ``noise_scale`` = sqrt(r(t_k+1) (1 - D^2)) per direction and
    ``residual_scale`` = 1 + lambda^2 (the SDE's residual is that multiple of the ODE's)."""

    propagator: torch.Tensor
    residual_weights: tuple[torch.Tensor, ...]
    corrected_weights: tuple[torch.Tensor, ...] | None
    gaussian_rate: torch.Tensor
    velocity_per_x: torch.Tensor
    velocity_per_output: torch.Tensor
    beta: torch.Tensor
    d_beta: torch.Tensor
    directions: Directions
    skip_first: bool = False
    noise_scale: torch.Tensor | None = None
    residual_scale: float = 1.0
    first_call_mean: bool = False
    first_gain: torch.Tensor | None = None

    STATE = ()
    #: the tables with an axis per direction (per label: the label axis first)
    PER_DIRECTION = ("propagator", "residual_weights", "corrected_weights", "gaussian_rate", "noise_scale")

    @property
    def conditional_key(self) -> str | None:
        """The conditioning keyword whose labels pick each sample's statistics (None: one set for all)."""
        return self.directions.key if self.directions.conditions is not None else None

    def for_batch(self, model_kwargs: dict) -> "DataFrameTables":
        """Per-label statistics: the tables of the batch whose conditioning is ``model_kwargs``."""
        key = self.conditional_key
        if key is None:
            return self
        values = model_kwargs.get(key)
        if not isinstance(values, torch.Tensor):
            raise LazyflowError(f"the statistics are per {key}: the model call needs {key} in model_kwargs")
        return self.for_labels(values)

    def for_labels(self, values: torch.Tensor) -> "DataFrameTables":
        """The tables of one batch whose samples have labels ``values``: each sample's label's row of every
        per-direction table (steps, batch, ...), and its mean and rotation."""
        rows = self.directions.label_rows(values.to(self.propagator.device))
        changes = {}
        for name in self.PER_DIRECTION:
            value = getattr(self, name)
            if isinstance(value, tuple):
                changes[name] = tuple(v[:, rows] for v in value)
            elif value is not None:
                changes[name] = value[:, rows]
        return replace(self, directions=self.directions.select(rows), **changes)

    @property
    def first_call(self) -> int:
        return int(self.skip_first)

    def residual(self, k: int, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """f_k = s (R (v - beta' mu) - a ⊙ y) with v = F x + G m the probability-flow velocity, s = residual_scale."""
        v = self.velocity_per_x[k] * x + self.velocity_per_output[k] * m - self.d_beta[k] * self.directions.mean
        f = self.directions.to(v) - self.gaussian_rate[k] * y
        return f if self.residual_scale == 1 else self.residual_scale * f

    def mean_of_first_call(self, x: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """The mean mu for which the Gaussian's eta_X at (t_0, x) is the model's ``eta``.  Per direction
        eta_G - mu = g (x - beta mu) with the gain g = beta lam / r, so R mu = (R eta - g R x) / (1 - beta g)
        (``first_gain`` = g at t_0): at snr = 0 (beta = 0) mu = eta = E[X | c] exactly; later (a grid from a
        finite sigma_max, img2img) it is exact for Gaussian data of this covariance."""
        if self.first_gain is None:
            return eta
        dirs = self.directions
        return dirs.back((dirs.to(eta) - self.first_gain * dirs.to(x)) / (1 - self.beta[0] * self.first_gain))

    def state(self, k: int, y: torch.Tensor) -> torch.Tensor:
        """x = R^-1 y + beta(t_k) mu."""
        return self.directions.back(y) + self.beta[k] * self.directions.mean

    def loop(self, x: torch.Tensor, plan: Plan, noise: Callable[[int], torch.Tensor], ops: Ops,
             callback: Callback | None, progress: Callable[[int], None] | None) -> Loop:
        """Integrate from x (``noise(k)``, step k's xi, only where ``noise_scale`` is set: the stochastic variant)."""
        dirs, now = self.directions, plan.now
        if self.skip_first:   # the residual is 0 at t = 0 and eta_X = E[X]
            y = dirs.to(x - self.beta[0] * dirs.mean)
            f = torch.zeros_like(y)
            if callback is not None:
                observe(callback, plan, 0, x, dirs.mean.expand_as(x))
        else:
            m = yield Call.at(now, 0, x)
            eta = now.eta(0, x, m)
            if self.first_call_mean:   # each sample's own mean: the one whose Gaussian has this eta_X here
                dirs = replace(dirs, mean=self.mean_of_first_call(x, eta))
                self = replace(self, directions=dirs)
            y = dirs.to(x - self.beta[0] * dirs.mean)
            f = self.residual(0, x, y, m)
            if callback is not None:
                observe(callback, plan, 0, x, eta)
        history = [torch.zeros_like(y)] * len(self.residual_weights)
        for k in range(plan.steps):
            history = [f, *history[:-1]]
            start = self.propagator[k] * y
            if self.noise_scale is not None:
                start = start + self.noise_scale[k] * dirs.to(noise(k))
            y_next = start + _weighted(self.residual_weights, k, history)
            x_next = self.state(k + 1, y_next)
            if k + 1 < plan.steps:
                m = yield Call.at(now, k + 1, x_next)
                f = self.residual(k + 1, x_next, y_next, m)
                if callback is not None:
                    observe(callback, plan, k + 1, x_next, now.eta(k + 1, x_next, m))
                if self.corrected_weights is not None:   # the step redone with the residual just seen at its end
                    y_next = start + _weighted(self.corrected_weights, k, [f, *history[:-1]])
                    x_next = self.state(k + 1, y_next)
            y, x = y_next, x_next
            if progress is not None:
                progress(1)
        return x


def _weighted(weights: tuple[torch.Tensor, ...], k: int, values: list[torch.Tensor]) -> torch.Tensor:
    """sum_j weights[j][k] ⊙ values[j]."""
    total = weights[0][k] * values[0]
    for w, value in zip(weights[1:], values[1:]):
        total = total + w[k] * value
    return total


def _lagrange(points: torch.Tensor, nodes: list[float]) -> torch.Tensor:
    """l_j(points) for the Lagrange basis through ``nodes``: shape (len(points), len(nodes))."""
    basis = torch.ones((points.numel(), len(nodes)), dtype=points.dtype, device=points.device)
    for j, tj in enumerate(nodes):
        for l, tl in enumerate(nodes):
            if l != j:
                basis[:, j] = basis[:, j] * (points - tl) / (tj - tl)
    return basis


def _step_weights(kernel: torch.Tensor, points: torch.Tensor, gauss_w: torch.Tensor, nodes: list[float | None],
                  extra: list[float]) -> list[torch.Tensor]:
    """W_j = int kernel(s) l_j(s) ds over one step for the present ``nodes`` (None: absent, weight 0),
    with ``extra`` nodes whose value is known to be 0 (their weights are not needed)."""
    present = [t for t in nodes if t is not None] + extra
    basis = _lagrange(points, present)                                       # (G, nodes)
    weights, column = [], 0
    for t in nodes:
        if t is None:
            weights.append(torch.zeros_like(kernel[0]))
            continue
        weights.append(torch.einsum("g,g...->...", gauss_w * basis[:, column], kernel))
        column += 1
    return weights


def _propagators(ctx: BuildContext, lam: torch.Tensor):
    """r = alpha^2 + lam beta^2 per direction at the grid (steps + 1, *lam), a = r'/(2r) at the step starts
    and log q = log(beta^2 / r) at the grid (the SDE's damping is exp(lambda^2 (log q(t) - log q(t'))/2))."""
    v = ctx.target.values(ctx.t)
    shape = (-1, *[1] * lam.dim())
    alpha, beta, d_alpha, d_beta = (u.reshape(shape) for u in (v.alpha, v.beta, v.d_alpha, v.d_beta))
    r = alpha**2 + lam * beta**2
    a = (alpha * d_alpha + lam * beta * d_beta) / r
    return r, a[:-1], 2 * torch.log(beta) - torch.log(r)


def _damping(log_q: torch.Tensor, log_q_end: torch.Tensor, scale2: float) -> torch.Tensor:
    """D(s, t') = exp(-lambda^2 int_s^t' eps*/r) = exp(lambda^2 (log q(s) - log q(t'))/2): 1 for the ODE,
    0 from s = 0 (beta = 0, where the optimal diffusion is infinite) for lambda > 0."""
    if scale2 == 0:
        return torch.ones_like(log_q + log_q_end)
    return torch.exp(scale2 / 2 * (log_q - log_q_end))


def _quadrature_kernel(ctx: BuildContext, lam: torch.Tensor, r_end: torch.Tensor, log_q_end: torch.Tensor,
                       scale2: float):
    """Gauss-Legendre points s (steps, G), weights (steps, G) and the kernel sqrt(r(t_k+1)/r(s)) D(s, t_k+1)
    (steps, G, *lam)."""
    nodes, weights = (torch.as_tensor(u, dtype=ctx.t.dtype, device=ctx.t.device)
                      for u in np.polynomial.legendre.leggauss(QUADRATURE_NODES))
    h = ctx.h[:, None]
    points = ctx.t0[:, None] + (nodes[None, :] + 1) / 2 * h
    v = ctx.target.values(points.reshape(-1))
    shape = (*points.shape, *[1] * lam.dim())
    beta = v.beta.reshape(shape)
    r = v.alpha.reshape(shape) ** 2 + lam * beta**2
    damping = _damping(2 * torch.log(beta) - torch.log(r), log_q_end[:, None], scale2)
    return points, weights[None, :] * h / 2, torch.sqrt(r_end[:, None] / r) * damping


def _weights(ctx: BuildContext, kernel: torch.Tensor, points: torch.Tensor, gauss_w: torch.Tensor, *, history: int,
             corrector: bool, anchored: bool) -> tuple[list, list]:
    """Per step the predictor's (and corrector's) weights W_j = int kernel(s) l_j(s) ds; the anchor f(1) = 0 on
    the last step where ``anchored``."""
    t, steps = ctx.t.tolist(), ctx.h.numel()
    pred, corr = [], []
    for k in range(steps):
        extra = [t[-1]] if anchored and k == steps - 1 else []
        nodes = [t[k - j] if k - j >= 0 else None for j in range(history)]
        pred.append(_step_weights(kernel[k], points[k], gauss_w[k], nodes, extra))
        if corrector:
            nodes = [t[k + 1 - j] if k + 1 - j >= 0 else None for j in range(history)]
            corr.append(_step_weights(kernel[k], points[k], gauss_w[k], nodes, []))
    return pred, corr


Clock = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float]]


def _frame_clock(ctx: BuildContext, r: torch.Tensor) -> Clock:
    """On the grid: alpha, the frame's clock u = beta / sqrt(r), sqrt(r) u' = alpha (alpha beta' - beta alpha') / r
    (per direction: shaped like r) and the log snr l = log(beta / alpha) at each time."""
    values = ctx.target.values(ctx.t)
    shape = (-1, *[1] * (r.dim() - 1))
    alpha, beta, d_alpha, d_beta = (u.reshape(shape) for u in (values.alpha, values.beta, values.d_alpha,
                                                                values.d_beta))
    per_residual = alpha * (alpha * d_beta - beta * d_alpha) / r
    return alpha, beta / torch.sqrt(r), per_residual, ctx.target.log_snr(ctx.t).tolist()


def _log_snr_2m_weights(ctx: BuildContext, r: torch.Tensor, clock: Clock, history: int) -> list[list[torch.Tensor]]:
    """DPM-Solver++(2M)'s rule in the frame (MATH.md §10).  With y_n = (x - beta mu) / sqrt(r) per direction
    and u = beta / sqrt(r), the ODE is dy_n = q du with q = f / (sqrt(r) u'), u' = alpha (alpha beta' - beta
    alpha') / r^(3/2); q is bounded at t = 1 (where the velocity residual f is not).  Over a step, with the
    log-snr steps h_k and rho = h_k-1 / h_k, q is taken as (1 + 1/(2 rho)) q_k - q_k-1 / (2 rho)
    (DPM-Solver++(2M)'s coefficient; q_k alone on the first step and on a step to t = 1), so

        W_0 = sqrt(r_k+1) (u_k+1 - u_k) (1 + 1/(2 rho)) / (sqrt(r_k) u'_k),
        W_1 = -sqrt(r_k+1) (u_k+1 - u_k) / (2 rho) / (sqrt(r_k-1) u'_k-1)

    (and W_j = 0 for j < ``history``; ``clock``: :func:`_frame_clock`).  With the frame's variance -> 0 and mu = 0
    this is DPM-Solver++(2M)."""
    _, u, per_residual, log_snr = clock
    t, pred = ctx.t.tolist(), []
    for k in range(ctx.h.numel()):
        gain = torch.sqrt(r[k + 1]) * (u[k + 1] - u[k])
        zero = torch.zeros_like(gain)
        to_data = t[k + 1] >= 1 or not math.isfinite(log_snr[k + 1])     # (vp's alpha(1) is 6e-17, not 0)
        if k == 0 or to_data or not math.isfinite(log_snr[k - 1]):
            pred.append([gain / per_residual[k]] + [zero] * (history - 1))
            continue
        half_over_rho = (log_snr[k + 1] - log_snr[k]) / (log_snr[k] - log_snr[k - 1]) / 2
        pred.append([gain * (1 + half_over_rho) / per_residual[k], -gain * half_over_rho / per_residual[k - 1]]
                    + [zero] * (history - 2))
    return pred


#: Gauss-Legendre nodes the corrector's kernel is evaluated at together (bounds its temporaries to this many
#: times the per-direction table)
_KERNEL_BLOCK = 16


def _log_snr_corrector_weights(ctx: BuildContext, r: torch.Tensor, lam: torch.Tensor, clock: Clock,
                               pred: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """The corrector of ``data-2m-pc``: step k redone, after the call at its predicted end, with the residual
    w = q alpha / sqrt(r) interpolated in log snr l through l_k+1, l_k and l_k-1 (from the second step), so

        dy_n = w K dl,   K = e^l / (1 + lam e^2l),   W_j = sqrt(r_k+1) alpha_j / (r_j u'_j) int_l_k^l_k+1 L_j K dl

    per direction of variance ``lam`` (L_j the Lagrange basis through the nodes; Gauss-Legendre in l).  w is the
    data-prediction residual D - D_G where the noise level s = e^-l has s^2 >> lam (DPM-Solver++'s variable) and
    sqrt(lam) (D - x) / s, a noise-prediction residual, where s^2 << lam: O(1) in both, where q = O(lam / s) on
    data with less variance than the frame's.  A step from snr 0 and the step to t = 1 keep their prediction
    (``pred``, shifted to the corrected history [f_k+1, f_k, ...]; ``clock``: :func:`_frame_clock`)."""
    alpha, _, per_residual, log_snr = clock
    to_w = alpha / torch.sqrt(r) / per_residual                       # w_j = to_w[j] f_j
    nodes, gauss = (torch.as_tensor(w, dtype=ctx.t.dtype, device=ctx.t.device)
                    for w in np.polynomial.legendre.leggauss(QUADRATURE_NODES))
    steps, corr = ctx.h.numel(), []
    for k in range(steps):
        row = [torch.zeros_like(pred[k][0]), *pred[k][:-1]]
        if k + 1 < steps and math.isfinite(log_snr[k]) and math.isfinite(log_snr[k + 1]):
            used = [k + 1, k] + ([k - 1] if k >= 1 and math.isfinite(log_snr[k - 1]) else [])
            at = log_snr[k] + (nodes + 1) / 2 * (log_snr[k + 1] - log_snr[k])
            e = torch.exp(at)
            step_weights = e * gauss * (log_snr[k + 1] - log_snr[k]) / 2
            per_node = _lagrange(at, [log_snr[j] for j in used]) * step_weights[:, None]      # (G, nodes)
            integrals = [torch.zeros_like(lam) for _ in used]          # int L_j K dl per direction
            for g in range(0, len(at), _KERNEL_BLOCK):
                inverse = 1 / (1 + lam * e[g:g + _KERNEL_BLOCK].reshape(-1, *[1] * lam.dim()) ** 2)
                for j in range(len(used)):
                    integrals[j] = integrals[j] + torch.einsum("g,g...->...", per_node[g:g + _KERNEL_BLOCK, j], inverse)
            row = [torch.sqrt(r[k + 1]) * integrals[j] * to_w[node] for j, node in enumerate(used)]
            row += [torch.zeros_like(row[0])] * (len(pred[k]) - len(used))
        corr.append(row)
    return corr


def _build(ctx: BuildContext, *, history: int, corrector: bool, anchor_below: int,
           stochastic: bool = False, log_snr_2m: bool = False) -> DataFrameTables:
    """The data frame's tables on the grid ctx.t (float64); the t = 1 anchor on grids of fewer than
    ``anchor_below`` steps; ``stochastic``: the SDE of the target's (optimal) diffusion."""
    _check_frame(ctx, stochastic)
    dirs = ctx.data_stats.directions(device=ctx.t.device, dtype=ctx.t.dtype)
    lam = dirs.lam
    scale2 = ctx.target.diffusion_scale**2 if stochastic and ctx.target.stochastic else 0.0
    r, a, log_q = _propagators(ctx, lam)
    D = _damping(log_q[:-1], log_q[1:], scale2)
    steps = ctx.h.numel()
    if log_snr_2m:   # closed-form predictor weights; the corrector's quadrature runs per step, in blocks
        clock = _frame_clock(ctx, r)
        pred = _log_snr_2m_weights(ctx, r, clock, history)
        corr = _log_snr_corrector_weights(ctx, r, lam, clock, pred) if corrector else []
    else:
        points, gauss_w, kernel = _quadrature_kernel(ctx, lam, r[1:], log_q[1:], scale2)
        pred, corr = _weights(ctx, kernel, points, gauss_w, history=history, corrector=corrector,
                              anchored=steps < anchor_below)
    stack = lambda rows: tuple(torch.stack([row[j] for row in rows]) for j in range(history))  # noqa: E731
    values = ctx.target.values(ctx.t)
    ode = ctx.frame(ctx.t0, ode=torch.ones_like(ctx.ode)) if stochastic else ctx.now   # the probability-flow velocity
    skip = ctx.integrator.skips_first_call(steps)
    per_x, per_output = (_unread_start(v) if skip else v for v in (ode.drift_per_x, ode.drift_per_output))
    return DataFrameTables(propagator=torch.sqrt(r[1:] / r[:-1]) * D, residual_weights=stack(pred),
                           corrected_weights=stack(corr) if corrector else None, gaussian_rate=a,
                           velocity_per_x=per_x, velocity_per_output=per_output,
                           beta=values.beta, d_beta=values.d_beta[:-1], directions=dirs,
                           skip_first=skip,
                           noise_scale=torch.sqrt(r[1:] * (1 - D * D)) if stochastic else None,
                           residual_scale=1 + scale2, first_call_mean=ctx.data_stats.first_call_mean,
                           first_gain=values.beta[0] * lam / r[0] if float(values.beta[0]) > 0 else None)


def _unread_start(values: torch.Tensor) -> torch.Tensor:
    """``values`` with a non-finite entry at t_0 set to 0: a run that skips the call at t = 0 never reads it (a noise
    or score model's conversion at snr = 0, 1/beta); every other entry unchanged."""
    first = values[:1]
    return torch.cat([torch.where(torch.isfinite(first), first, torch.zeros_like(first)), values[1:]])


def _check_frame(ctx: BuildContext, stochastic: bool = False) -> None:
    """The data frames integrate the probability-flow ODE of a standard schedule from t = 0 with statistics
    of the samples' shape; the stochastic variant the SDE of a schedule with the optimal diffusion."""
    name = ctx.integrator.name
    if ctx.data_stats is None:
        raise LazyflowError(f"integrator {name!r} integrates in the data's frame: give data_stats "
                            "(DataStats.from_samples(...) or DataStats.load(path); CLI: --data-stats FILE)")
    if stochastic:
        if ctx.target.point_mass or getattr(ctx.target.kernel, "DIFFUSION", None) != "optimal":
            raise LazyflowError(f"integrator {name!r} integrates the SDE of the optimal diffusion eps* (scaled by "
                                f"the diffusion scale): use linear-sde or vp-sde, not {ctx.target.describe()}")
    elif ctx.target.stochastic or ctx.target.point_mass:
        raise LazyflowError(f"integrator {name!r} integrates the probability-flow ODE: use an ODE schedule "
                            f"(e.g. linear or vp), not {ctx.target.describe()}")
    if ctx.data_stats.first_call_mean and ctx.integrator.skips_first_call(ctx.h.numel()):
        raise LazyflowError(f"integrator {name!r} skips the call at t = 0, where statistics with the first call's "
                            "mean read it: use without_skip(integrator) (sample() does)")
    if not ctx.data_stats.first_call_mean and ctx.integrator.skips_first_call(ctx.h.numel()) and float(ctx.t[0]) > 0:
        raise LazyflowError(f"integrator {name!r} skips the call at t = 0, where the residual vanishes; this grid "
                            f"starts at t = {float(ctx.t[0]):g}")


#: below this many steps the data frames skip the t = 0 call and anchor t = 1 (fixed from the prototype's
#: measurement on the digits network, where the anchored sampler crossed the plain one near 32 NFE: both
#: facts hold only approximately for a learned network or an estimated mean, so they cost O(h) and the
#: sampler converges at its order only without them)
ANCHORS_BELOW = 32


def data_frame_integrator(*, order: int = 2, corrector: bool = True, skip_start: bool | None = None,
                          anchor: bool | None = None, stochastic: bool = False, name: str | None = None) -> Integrator:
    """A data-frame integrator of ``order`` (1 to 3: the residual held, extrapolated linearly or
    quadratically in t), with a ``corrector`` that reuses the next call, skipping the call at t = 0
    (``skip_start``: the residual is 0 there with the data's true mean) and anchoring the residual at 0
    at t = 1 on the last step (``anchor``).  ``None`` (the default): each on grids of fewer than
    :data:`ANCHORS_BELOW` steps.  ``stochastic``: the SDE of a schedule with the optimal diffusion (linear-sde,
    vp-sde; any diffusion scale), its Gaussian part's transition exact.  Pass it to ``sample(integrator=...)``
    or register it."""
    if order not in (1, 2, 3):
        raise LazyflowError(f"a data-frame integrator has order 1, 2 or 3, got {order!r}")
    if corrector and order == 1:
        raise LazyflowError("a first-order data-frame integrator has no corrector")
    below = {None: ANCHORS_BELOW, True: 1 << 62, False: 0}
    names = {1: "data-sde", 2: "data-sde-multistep", 3: "data-sde-multistep3"} if stochastic else \
        {1: "data-euler", 2: "data-multistep", 3: "data-multistep3"}
    base = names[order] + ("-pc" if corrector else "")
    options = [f"{label}={'on' if value else 'off'}" for label, value in (("skip", skip_start), ("anchor", anchor))
               if value is not None]
    return Integrator(name=name or base + (f"[{','.join(options)}]" if options else ""), order=order,
                      build=partial(_build, history=order, corrector=corrector, anchor_below=below[anchor],
                                    stochastic=stochastic),
                      history=order, corrector=corrector, skip_first_call_below=below[skip_start],
                      needs_data_stats=True, stochastic=stochastic,
                      description=f"data frame{' SDE (exact Gaussian transition)' if stochastic else ''}, residual "
                                  f"{['held', 'linear', 'quadratic'][order - 1]} in t"
                                  + (" with a corrector" if corrector else ""))


def stochastic_data_frame(integrator: Integrator) -> bool:
    """Whether ``integrator`` is a stochastic data frame (``data-sde*``: it needs linear-sde or vp-sde)."""
    return integrator.needs_data_stats and integrator.stochastic


def without_skip(integrator: Integrator) -> Integrator:
    """The same data-frame integrator calling the model at t = 0 too (for a pipeline, which makes that call)."""
    if integrator.skip_first_call_below <= 0:
        return integrator
    return replace(integrator, skip_first_call_below=0, name=f"{integrator.name}[call-at-0]")


def frame_for_run(method: Integrator, data_stats: "DataStats | ConditionalStats | None", *, t0: float,
                  data_shape: tuple[int, ...], variance: float = 1.0
                  ) -> tuple[Integrator, "DataStats | ConditionalStats | None"]:
    """The integrator and statistics of a run from time ``t0`` on samples of ``data_shape``: a data frame given
    no statistics integrates in N(E[X | c], ``variance`` I) (:meth:`DataStats.isotropic`: the mean read from the
    first call, exact on any Gaussian data of that variance, whatever the grid); one that starts after t = 0 or
    reads its mean at its first call makes that call (:func:`without_skip`).  Other integrators pass through."""
    if not method.needs_data_stats:
        return method, data_stats
    if data_stats is None:
        data_stats = DataStats.isotropic(tuple(data_shape), var=variance)
    if t0 > 0 or data_stats.first_call_mean:
        method = without_skip(method)
    return method, data_stats


#: DPM-Solver++(2M)'s rule in the data frame: the residual extrapolated in log snr (no skip, no anchor)
DATA_2M = Integrator(name="data-2m", order=2,
                     build=partial(_build, history=2, corrector=False, anchor_below=0, log_snr_2m=True),
                     history=2, needs_data_stats=True,
                     description="data frame, residual extrapolated in log snr with DPM-Solver++(2M)'s "
                                 "coefficient (held on the first step and on a step to t = 1)")


#: data-2m with a corrector that reuses the next call (chosen on Karras sigmas without statistics:
#: docs/k-diffusion.md, "Which default")
DATA_2M_PC = Integrator(name="data-2m-pc", order=2,
                        build=partial(_build, history=3, corrector=True, anchor_below=0, log_snr_2m=True),
                        history=3, corrector=True, needs_data_stats=True,
                        description="data-2m with a corrector: the residual w = q alpha / sqrt(r) interpolated in log "
                                    "snr through the step's ends and the step before (no extra call)")

#: the registered data-frame integrators (the t = 0 skip and t = 1 anchor below ANCHORS_BELOW steps)
DATA_FRAME_INTEGRATORS = tuple(data_frame_integrator(order=order, corrector=pc)
                               for order, pc in ((1, False), (2, False), (2, True), (3, False), (3, True))) + (
    DATA_2M, DATA_2M_PC) + tuple(data_frame_integrator(order=order, corrector=False, stochastic=True)
                                 for order in (1, 2))
#: the stochastic frames have no registered corrector: measured at 4 NFE on gmm:101/102 (1,000 samples,
#: full statistics, uniform grid) data-sde-multistep-pc's nll_gap was 250 and 1069 nats at lambda = 1 and
#: 23 and 90 at lambda = 0.25, against 28/103 and 2.2/8.2 without it; at 16 NFE still 11.9 against -0.17 (a
#: corrector that reuses a call made at a state holding the step's own noise); data_frame_integrator(
#: stochastic=True, corrector=True) builds it
