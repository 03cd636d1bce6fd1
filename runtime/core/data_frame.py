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

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np
import torch

from ...errors import LazyflowError
from .data_stats import ConditionalStats, DataStats, Directions
from .plan import BuildContext, Call, Callback, Integrator, Loop, Ops, Plan, Tables, observe

__all__ = ["DataFrameCoefficients", "data_frame_integrator", "without_skip", "frame_for_run", "stochastic_data_frame", "ANCHORS_BELOW", "DATA_FRAME_INTEGRATORS", "QUADRATURE_NODES"]

#: Gauss-Legendre nodes per step for the weights (64 vs 128 changes them by < 1e-13 on the tests' grids)
QUADRATURE_NODES = 64


@dataclass(frozen=True)
class DataFrameCoefficients(Tables):
    """One network call per step (none at the first step with ``first_call`` = 1).  Per step k:
    ``A`` the propagator sqrt(r(t_k+1)/r(t_k)), ``predictor[j]`` the weight of f_k-j, ``corrector[j]``
    the weight of f_k+1 (j = 0) and f_k+1-j; ``a`` = r'/(2r) at t_k; v = F x + G m the model's velocity
    in the target frame; ``beta``, ``d_beta`` the target's beta and beta' at t_k (beta also at t_N).  The
    stochastic variant: ``C`` the noise scale sqrt(r(t_k+1) (1 - D^2)) per direction and ``residual_scale``
    1 + lambda^2 (the SDE's residual is that multiple of the ODE's)."""

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
    C: torch.Tensor | None = None
    residual_scale: float = 1.0
    first_call_mean: bool = False
    first_gain: torch.Tensor | None = None

    STATE = ()
    #: the tables with an axis per direction (per label: the label axis first)
    PER_DIRECTION = ("A", "predictor", "corrector", "a", "C")

    @property
    def conditional_key(self) -> str | None:
        """The conditioning keyword whose labels pick each sample's statistics (None: one set for all)."""
        return self.directions.key if self.directions.conditions is not None else None

    def for_batch(self, model_kwargs: dict) -> "DataFrameCoefficients":
        """Per-label statistics: the tables of the batch whose conditioning is ``model_kwargs``."""
        key = self.conditional_key
        if key is None:
            return self
        values = model_kwargs.get(key)
        if not isinstance(values, torch.Tensor):
            raise LazyflowError(f"the statistics are per {key}: the model call needs {key} in model_kwargs")
        return self.for_labels(values)

    def for_labels(self, values: torch.Tensor) -> "DataFrameCoefficients":
        """The tables of one batch whose samples have labels ``values``: each sample's label's row of every
        per-direction table (steps, batch, ...), and its mean and rotation."""
        rows = self.directions.label_rows(values.to(self.A.device))
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

    @property
    def two_stage(self) -> tuple[bool, ...]:
        return (False,) * self.A.shape[0]

    def residual(self, k: int, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """f_k = s (R (v - beta' mu) - a ⊙ y) with v = F x + G m the probability-flow velocity, s = residual_scale."""
        v = self.F[k] * x + self.G[k] * m - self.d_beta[k] * self.directions.mean
        f = self.directions.to(v) - self.a[k] * y
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
        """Integrate from x (``noise(k)``, step k's xi, only where ``C`` is set: the stochastic variant)."""
        dirs = self.directions
        if self.skip_first:   # the residual is 0 at t = 0 and eta_X = E[X]
            y = dirs.to(x - self.beta[0] * dirs.mean)
            f = torch.zeros_like(y)
            observe(callback, plan, 0, x, dirs.mean.expand_as(x))
        else:
            m = yield Call(x, plan.tau[0], plan.in_scale[0], 0)
            eta = plan.P[0] * x + plan.Q[0] * m
            if self.first_call_mean:   # each sample's own mean: the one whose Gaussian has this eta_X here
                dirs = replace(dirs, mean=self.mean_of_first_call(x, eta))
                self = replace(self, directions=dirs)
            y = dirs.to(x - self.beta[0] * dirs.mean)
            f = self.residual(0, x, y, m)
            observe(callback, plan, 0, x, eta)
        history = [torch.zeros_like(y)] * len(self.predictor)
        for k in range(plan.steps):
            history = [f, *history[:-1]]
            start = self.A[k] * y if self.C is None else self.A[k] * y + self.C[k] * dirs.to(noise(k))
            y_next = start + _weighted(self.predictor, k, history)
            x_next = self.state(k + 1, y_next)
            if k + 1 < plan.steps:
                m = yield Call(x_next, plan.tau[k + 1], plan.in_scale[k + 1], k + 1)
                f = self.residual(k + 1, x_next, y_next, m)
                observe(callback, plan, k + 1, x_next, plan.P[k + 1] * x_next + plan.Q[k + 1] * m)
                if self.corrector is not None:   # the step redone with the residual just seen at its end
                    y_next = start + _weighted(self.corrector, k, [f, *history[:-1]])
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
    """r = alpha^2 + lam beta^2 per direction at the grid (steps + 1, *lam), a = r'/(2r) at the step starts
    and log q = log(beta^2 / r) at the grid (the SDE's damping is exp(lambda^2 (log q(t) - log q(t'))/2))."""
    v = b.target.values(b.t)
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


def _quadrature_kernel(b: BuildContext, lam: torch.Tensor, r_end: torch.Tensor, log_q_end: torch.Tensor,
                       scale2: float):
    """Gauss-Legendre points s (steps, G), weights (steps, G) and the kernel sqrt(r(t_k+1)/r(s)) D(s, t_k+1)
    (steps, G, *lam)."""
    nodes, weights = (torch.as_tensor(u, dtype=b.t.dtype, device=b.t.device)
                      for u in np.polynomial.legendre.leggauss(QUADRATURE_NODES))
    h = b.h[:, None]
    points = b.t0[:, None] + (nodes[None, :] + 1) / 2 * h
    v = b.target.values(points.reshape(-1))
    shape = (*points.shape, *[1] * lam.dim())
    beta = v.beta.reshape(shape)
    r = v.alpha.reshape(shape) ** 2 + lam * beta**2
    damping = _damping(2 * torch.log(beta) - torch.log(r), log_q_end[:, None], scale2)
    return points, weights[None, :] * h / 2, torch.sqrt(r_end[:, None] / r) * damping


def _weights(b: BuildContext, kernel: torch.Tensor, points: torch.Tensor, gauss_w: torch.Tensor, *, history: int,
             corrector: bool, anchored: bool) -> tuple[list, list]:
    """Per step the predictor's (and corrector's) weights W_j = int kernel(s) l_j(s) ds; the anchor f(1) = 0 on
    the last step where ``anchored``."""
    t, steps = b.t.tolist(), b.h.numel()
    pred, corr = [], []
    for k in range(steps):
        extra = [t[-1]] if anchored and k == steps - 1 else []
        nodes = [t[k - j] if k - j >= 0 else None for j in range(history)]
        pred.append(_step_weights(kernel[k], points[k], gauss_w[k], nodes, extra))
        if corrector:
            nodes = [t[k + 1 - j] if k + 1 - j >= 0 else None for j in range(history)]
            corr.append(_step_weights(kernel[k], points[k], gauss_w[k], nodes, []))
    return pred, corr


def _build(b: BuildContext, *, history: int, corrector: bool, anchor_below: int,
           stochastic: bool = False) -> DataFrameCoefficients:
    """The data frame's tables on the grid b.t (float64); the t = 1 anchor on grids of fewer than
    ``anchor_below`` steps; ``stochastic``: the SDE of the target's (optimal) diffusion."""
    _check_frame(b, stochastic)
    dirs = b.data_stats.directions(device=b.t.device, dtype=b.t.dtype)
    lam = dirs.lam
    scale2 = b.target.diffusion_scale**2 if stochastic and b.target.stochastic else 0.0
    r, a, log_q = _propagators(b, lam)
    points, gauss_w, kernel = _quadrature_kernel(b, lam, r[1:], log_q[1:], scale2)
    D = _damping(log_q[:-1], log_q[1:], scale2)
    steps = b.h.numel()
    pred, corr = _weights(b, kernel, points, gauss_w, history=history, corrector=corrector,
                          anchored=steps < anchor_below)
    stack = lambda rows: tuple(torch.stack([row[j] for row in rows]) for j in range(history))  # noqa: E731
    values = b.target.values(b.t)
    ode = b.frame(b.t0, ode=torch.ones_like(b.ode)) if stochastic else b.now   # the probability-flow velocity
    return DataFrameCoefficients(A=torch.sqrt(r[1:] / r[:-1]) * D, predictor=stack(pred),
                                 corrector=stack(corr) if corrector else None, a=a, F=ode.F, G=ode.G,
                                 beta=values.beta, d_beta=values.d_beta[:-1], directions=dirs,
                                 skip_first=b.integrator.skips_first_call(steps),
                                 C=torch.sqrt(r[1:] * (1 - D * D)) if stochastic else None,
                                 residual_scale=1 + scale2, first_call_mean=b.data_stats.first_call_mean,
                                 first_gain=values.beta[0] * lam / r[0] if float(values.beta[0]) > 0 else None)


def _check_frame(b: BuildContext, stochastic: bool = False) -> None:
    """The data frames integrate the probability-flow ODE of a standard schedule from t = 0 with statistics
    of the samples' shape; the stochastic variant the SDE of a schedule with the optimal diffusion."""
    name = b.integrator.name
    if b.data_stats is None:
        raise LazyflowError(f"integrator {name!r} integrates in the data's frame: give data_stats "
                            "(DataStats.from_samples(...) or DataStats.load(path); CLI: --data-stats FILE)")
    if stochastic:
        if b.target.point_mass or getattr(b.target.kernel, "DIFFUSION", None) != "optimal":
            raise LazyflowError(f"integrator {name!r} integrates the SDE of the optimal diffusion eps* (scaled by "
                                f"the diffusion scale): use linear-sde or vp-sde, not {b.target.describe()}")
    elif b.target.stochastic or b.target.point_mass:
        raise LazyflowError(f"integrator {name!r} integrates the probability-flow ODE: use an ODE schedule "
                            f"(e.g. linear or vp), not {b.target.describe()}")
    if b.data_stats.first_call_mean and b.integrator.skips_first_call(b.h.numel()):
        raise LazyflowError(f"integrator {name!r} skips the call at t = 0, where statistics with the first call's "
                            "mean read it: use without_skip(integrator) (sample() does)")
    if not b.data_stats.first_call_mean and b.integrator.skips_first_call(b.h.numel()) and float(b.t[0]) > 0:
        raise LazyflowError(f"integrator {name!r} skips the call at t = 0, where the residual vanishes; this grid "
                            f"starts at t = {float(b.t[0]):g}")


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
                  data_shape: tuple[int, ...]) -> tuple[Integrator, "DataStats | ConditionalStats | None"]:
    """The integrator and statistics of a run from time ``t0`` on samples of ``data_shape``: a data frame given
    no statistics integrates in N(E[X | c], I) (:meth:`DataStats.isotropic`: the mean read from the first call,
    exact on any Gaussian data of unit variance, whatever the grid); one that starts after t = 0 or reads its
    mean at its first call makes that call (:func:`without_skip`).  Other integrators pass through."""
    if not method.needs_data_stats:
        return method, data_stats
    if data_stats is None:
        data_stats = DataStats.isotropic(tuple(data_shape))
    if t0 > 0 or data_stats.first_call_mean:
        method = without_skip(method)
    return method, data_stats


#: the registered data-frame integrators (the t = 0 skip and t = 1 anchor below ANCHORS_BELOW steps)
DATA_FRAME_INTEGRATORS = tuple(data_frame_integrator(order=order, corrector=pc)
                               for order, pc in ((1, False), (2, False), (2, True), (3, False), (3, True))) + tuple(
    data_frame_integrator(order=order, corrector=False, stochastic=True) for order in (1, 2))
#: the stochastic frames have no registered corrector: measured at 4 NFE on gmm:101/102 (1,000 samples,
#: full statistics, uniform grid) data-sde-multistep-pc's nll_gap was 250 and 1069 nats at lambda = 1 and
#: 23 and 90 at lambda = 0.25, against 28/103 and 2.2/8.2 without it; at 16 NFE still 11.9 against -0.17 (a
#: corrector that reuses a call made at a state holding the step's own noise); data_frame_integrator(
#: stochastic=True, corrector=True) builds it
