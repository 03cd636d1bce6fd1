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
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np
import torch

from ...errors import LazyflowError
from .data_stats import Directions
from .plan import BuildContext, Call, Callback, Integrator, Loop, Ops, Plan, Tables, observe

__all__ = ["DataFrameCoefficients", "data_frame_integrator", "without_skip", "ANCHORS_BELOW", "DATA_FRAME_INTEGRATORS", "QUADRATURE_NODES"]

#: Gauss-Legendre nodes per step for the weights (64 vs 128 changes them by < 1e-13 on the tests' grids)
QUADRATURE_NODES = 64


@dataclass(frozen=True)
class DataFrameCoefficients(Tables):
    """One network call per step (none at the first step with ``first_call`` = 1).  Per step k:
    ``A`` the propagator sqrt(r(t_k+1)/r(t_k)), ``predictor[j]`` the weight of f_k-j, ``corrector[j]``
    the weight of f_k+1 (j = 0) and f_k+1-j; ``a`` = r'/(2r) at t_k; v = F x + G m the model's velocity
    in the target frame; ``beta``, ``d_beta`` the target's beta and beta' at t_k (beta also at t_N)."""

    A: torch.Tensor
    predictor: tuple[torch.Tensor, ...]
    corrector: tuple[torch.Tensor, ...] | None
    a: torch.Tensor
    F: torch.Tensor
    G: torch.Tensor
    beta: torch.Tensor
    d_beta: torch.Tensor
    directions: Directions
    skip_first: bool = False

    STATE = ()

    @property
    def first_call(self) -> int:
        return int(self.skip_first)

    @property
    def two_stage(self) -> tuple[bool, ...]:
        return (False,) * self.A.shape[0]

    def residual(self, k: int, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """f_k = R (v - beta' mu) - a ⊙ y with v = F x + G m."""
        v = self.F[k] * x + self.G[k] * m - self.d_beta[k] * self.directions.mean
        return self.directions.to(v) - self.a[k] * y

    def state(self, k: int, y: torch.Tensor) -> torch.Tensor:
        """x = R^-1 y + beta(t_k) mu."""
        return self.directions.back(y) + self.beta[k] * self.directions.mean

    def loop(self, x: torch.Tensor, plan: Plan, noise: Callable[[int], torch.Tensor], ops: Ops,
             callback: Callback | None, progress: Callable[[int], None] | None) -> Loop:
        """Integrate from x (an ODE: ``noise`` is not used)."""
        dirs = self.directions
        y = dirs.to(x - self.beta[0] * dirs.mean)
        history = [torch.zeros_like(y)] * len(self.predictor)
        if self.skip_first:   # the residual is 0 at t = 0 and eta_X = E[X]
            f = torch.zeros_like(y)
            observe(callback, plan, 0, x, dirs.mean.expand_as(x))
        else:
            m = yield Call(x, plan.tau[0], plan.in_scale[0], 0)
            f = self.residual(0, x, y, m)
            observe(callback, plan, 0, x, plan.P[0] * x + plan.Q[0] * m)
        for k in range(plan.steps):
            history = [f, *history[:-1]]
            y_next = self.A[k] * y + _weighted(self.predictor, k, history)
            x_next = self.state(k + 1, y_next)
            if k + 1 < plan.steps:
                m = yield Call(x_next, plan.tau[k + 1], plan.in_scale[k + 1], k + 1)
                f = self.residual(k + 1, x_next, y_next, m)
                observe(callback, plan, k + 1, x_next, plan.P[k + 1] * x_next + plan.Q[k + 1] * m)
                if self.corrector is not None:   # the step redone with the residual just seen at its end
                    y_next = self.A[k] * y + _weighted(self.corrector, k, [f, *history[:-1]])
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


def _propagators(b: BuildContext, lam: torch.Tensor):
    """r = alpha^2 + lam beta^2 per direction at the grid (steps + 1, *lam) and a = r'/(2r) at the step starts."""
    v = b.target.values(b.t)
    shape = (-1, *[1] * lam.dim())
    alpha, beta, d_alpha, d_beta = (u.reshape(shape) for u in (v.alpha, v.beta, v.d_alpha, v.d_beta))
    r = alpha**2 + lam * beta**2
    a = (alpha * d_alpha + lam * beta * d_beta) / r
    return r, a[:-1]


def _quadrature_kernel(b: BuildContext, lam: torch.Tensor, r_end: torch.Tensor):
    """Gauss-Legendre points s (steps, G), weights (steps, G) and sqrt(r(t_k+1)/r(s)) (steps, G, *lam)."""
    nodes, weights = (torch.as_tensor(u, dtype=b.t.dtype, device=b.t.device)
                      for u in np.polynomial.legendre.leggauss(QUADRATURE_NODES))
    h = b.h[:, None]
    points = b.t0[:, None] + (nodes[None, :] + 1) / 2 * h
    v = b.target.values(points.reshape(-1))
    shape = (*points.shape, *[1] * lam.dim())
    r = v.alpha.reshape(shape) ** 2 + lam * v.beta.reshape(shape) ** 2
    return points, weights[None, :] * h / 2, torch.sqrt(r_end[:, None] / r)


def _build(b: BuildContext, *, history: int, corrector: bool, anchor_below: int) -> DataFrameCoefficients:
    """The data frame's tables on the grid b.t (float64); the t = 1 anchor on grids of fewer than
    ``anchor_below`` steps."""
    _check_frame(b)
    dirs = b.data_stats.directions(device=b.t.device, dtype=b.t.dtype)
    lam = dirs.lam
    r, a = _propagators(b, lam)
    points, gauss_w, kernel = _quadrature_kernel(b, lam, r[1:])
    t, steps = b.t.tolist(), b.h.numel()
    pred, corr = [], []
    for k in range(steps):
        nodes = [t[k - j] if k - j >= 0 else None for j in range(history)]
        extra = [t[-1]] if steps < anchor_below and k == steps - 1 else []
        pred.append(_step_weights(kernel[k], points[k], gauss_w[k], nodes, extra))
        if corrector:
            nodes = [t[k + 1 - j] if k + 1 - j >= 0 else None for j in range(history)]
            corr.append(_step_weights(kernel[k], points[k], gauss_w[k], nodes, []))
    stack = lambda rows: tuple(torch.stack([row[j] for row in rows]) for j in range(history))  # noqa: E731
    values = b.target.values(b.t)
    return DataFrameCoefficients(A=torch.sqrt(r[1:] / r[:-1]), predictor=stack(pred),
                                 corrector=stack(corr) if corrector else None, a=a, F=b.now.F, G=b.now.G,
                                 beta=values.beta, d_beta=values.d_beta[:-1], directions=dirs,
                                 skip_first=b.integrator.skips_first_call(steps))


def _check_frame(b: BuildContext) -> None:
    """The data frames integrate the probability-flow ODE of a standard schedule from t = 0 with statistics
    of the samples' shape."""
    name = b.integrator.name
    if b.data_stats is None:
        raise LazyflowError(f"integrator {name!r} integrates in the data's frame: give data_stats "
                            "(DataStats.from_samples(...) or DataStats.load(path); CLI: --data-stats FILE)")
    if b.target.stochastic or b.target.point_mass:
        raise LazyflowError(f"integrator {name!r} integrates the probability-flow ODE: use an ODE schedule "
                            f"(e.g. linear or vp), not {b.target.describe()}")
    if b.integrator.skips_first_call(b.h.numel()) and float(b.t[0]) > 0:
        raise LazyflowError(f"integrator {name!r} skips the call at t = 0, where the residual vanishes; this grid "
                            f"starts at t = {float(b.t[0]):g}")


#: below this many steps the data frames skip the t = 0 call and anchor t = 1 (fixed from the prototype's
#: measurement on the digits network, where the anchored sampler crossed the plain one near 32 NFE: both
#: facts hold only approximately for a learned network or an estimated mean, so they cost O(h) and the
#: sampler converges at its order only without them)
ANCHORS_BELOW = 32


def data_frame_integrator(*, order: int = 2, corrector: bool = True, skip_start: bool | None = None,
                          anchor: bool | None = None, name: str | None = None) -> Integrator:
    """A data-frame integrator of ``order`` (1 to 3: the residual held, extrapolated linearly or
    quadratically in t), with a ``corrector`` that reuses the next call, skipping the call at t = 0
    (``skip_start``: the residual is 0 there with the data's true mean) and anchoring the residual at 0
    at t = 1 on the last step (``anchor``).  ``None`` (the default): each on grids of fewer than
    :data:`ANCHORS_BELOW` steps.  Pass it to ``sample(integrator=...)`` or register it."""
    if order not in (1, 2, 3):
        raise LazyflowError(f"a data-frame integrator has order 1, 2 or 3, got {order!r}")
    if corrector and order == 1:
        raise LazyflowError("a first-order data-frame integrator has no corrector")
    below = {None: ANCHORS_BELOW, True: 1 << 62, False: 0}
    base = {1: "data-euler", 2: "data-multistep", 3: "data-multistep3"}[order] + ("-pc" if corrector else "")
    options = [f"{label}={'on' if value else 'off'}" for label, value in (("skip", skip_start), ("anchor", anchor))
               if value is not None]
    return Integrator(name=name or base + (f"[{','.join(options)}]" if options else ""), order=order,
                      build=partial(_build, history=order, corrector=corrector, anchor_below=below[anchor]),
                      history=order, corrector=corrector, skip_first_call_below=below[skip_start],
                      needs_data_stats=True,
                      description=f"data frame, residual {['held', 'linear', 'quadratic'][order - 1]} in t"
                                  + (" with a corrector" if corrector else ""))


def without_skip(integrator: Integrator) -> Integrator:
    """The same data-frame integrator calling the model at t = 0 too (for a pipeline, which makes that call)."""
    if integrator.skip_first_call_below <= 0:
        return integrator
    return replace(integrator, skip_first_call_below=0, name=f"{integrator.name}[call-at-0]")


#: the registered data-frame integrators (the t = 0 skip and t = 1 anchor below ANCHORS_BELOW steps)
DATA_FRAME_INTEGRATORS = tuple(data_frame_integrator(order=order, corrector=pc)
                               for order, pc in ((1, False), (2, False), (2, True), (3, False), (3, True)))
