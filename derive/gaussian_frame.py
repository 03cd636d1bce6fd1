"""Gaussian data with a mean, and the frames exact for the data's Gaussian (derive/MATH.md §10).

For data N(mu, v I) SymPy derives the posterior mean eta_X = mu + v beta (x - beta mu)/r with
r = alpha^2 + v beta^2 and the drift b^eps = beta' mu + (r'/2 - eps)/r (x - beta mu).  In the centred
variable w = x - beta mu (dw = dx - beta' mu dt) the drift is (r'/2 - eps)/r w: zero iff eps = r'/2,
the condition for mean 0 (derive/lazy.py solves it), so the lazy schedules do not depend on mu.
Per direction i of a covariance (variance lam_i) the probability-flow ODE in w is dw/dt = a_i w,
a_i = r_i'/(2 r_i), with the exact propagator sqrt(r_i(t')/r_i(t)); the residual f = b - b_Gauss of
any data vanishes at t = 0 when mu = E[X] and at t = 1 always.
With the optimal diffusion scaled, eps = s^2 eps*, the SDE in w is linear per direction too:
dw = g w dt + sqrt(2 eps) dW, g = r'/(2r) - eps/r, with the exact Gaussian transition
w(t') = Phi w(t) + N(0, V): Phi = sqrt(r(t')/r(t)) D, D = (beta(t)^2 r(t') / (beta(t')^2 r(t)))^(s^2/2),
V = r(t') (1 - D^2) (:func:`direction_sde_transition`, checked against g and the variance equation).

A *schedule* argument is a :class:`ScheduleSpec` (its own eps and data_var are the defaults) or a pair
(alpha, beta) of SymPy expressions in t, undefined functions alpha(t), beta(t) included (defaults:
eps = 0, the probability-flow ODE, and v the symbol v).  Nothing here parses text.
"""
from __future__ import annotations

from typing import Union

import sympy as sp
from sympy.core.function import AppliedUndef

from ..errors import SpecError
from .formulas import derive, simplify
from .limits import TimeLimit, call_with_time_limit
from .parse import as_expression
from .schedule import ScheduleSpec
from .symbols import eta_X, eta_Z, mu as mu_symbol, t, t_next, v as v_symbol, w, x

__all__ = ["Schedule", "schedule_parts", "data_mean_value", "gaussian_mean_eta_x", "drift_from_eta",
           "gaussian_mean_drift", "centred_drift", "centred_lazy_condition", "direction_rate",
           "direction_propagator", "direction_sde_rate", "direction_sde_transition", "gaussian_residual", "residual_at_start", "residual_at_end", "LIMIT_SECONDS"]

#: a ScheduleSpec or a pair (alpha, beta) of expressions in t
Schedule = Union[ScheduleSpec, tuple[sp.Expr, sp.Expr]]
#: limit of one SymPy limit taken at t = 0 or t = 1
LIMIT_SECONDS = 10.0
#: the derivation's own variables, which a data mean may not contain
_RESERVED = frozenset({t, t_next, x, w, eta_X, eta_Z})


def schedule_parts(schedule: Schedule, eps: sp.Expr | None = None,
                   v: sp.Expr | None = None) -> tuple[sp.Expr, sp.Expr, sp.Expr, sp.Expr]:
    """(alpha, beta, eps, v): a spec's own eps and data_var unless given; for a pair eps = 0 and v = v."""
    if isinstance(schedule, ScheduleSpec):
        alpha, beta = schedule.alpha, schedule.beta
        eps = derive(schedule).eps if eps is None else as_expression(eps, "eps", "a number or a SymPy expression")
        v = schedule.data_var if v is None else as_expression(v, "v", "a number or a SymPy expression")
        return alpha, beta, eps, v
    try:
        alpha, beta = schedule
    except (TypeError, ValueError):
        raise SpecError(f"a schedule is a ScheduleSpec or a pair (alpha, beta), got {schedule!r}") from None
    eps = sp.Integer(0) if eps is None else as_expression(eps, "eps", "a number or a SymPy expression")
    v = v_symbol if v is None else as_expression(v, "v", "a number or a SymPy expression")
    return as_expression(alpha, "alpha"), as_expression(beta, "beta"), eps, v


def data_mean_value(data_mean: object) -> sp.Expr | None:
    """The data mean mu as a SymPy expression, None for None or 0 (mean 0); a constant: no t, x, w, eta."""
    if data_mean is None:
        return None
    mean = as_expression(data_mean, "data_mean")
    clash = mean.free_symbols & _RESERVED
    if clash:
        raise SpecError(f"data_mean = {mean} depends on {sorted(map(str, clash))}; the mean of the data is a "
                        "constant (a number or a symbol such as mu)")
    if mean.is_real is False or mean.is_finite is False or mean.has(sp.nan, sp.zoo):
        raise SpecError(f"data_mean must be real and finite, got {mean}")
    return None if mean.is_zero else mean


# Every formula is first derived as a rational function of placeholders for alpha, beta, alpha', beta' and
# eps at one time, where SymPy's cancellation is exact (the mu terms of the centred drift cancel there),
# and the schedule is substituted afterwards.
_A, _B, _DA, _DB, _EPS = (sp.Dummy(name, real=True) for name in ("alpha", "beta", "d_alpha", "d_beta", "eps"))


def _at_schedule(expr: sp.Expr, alpha: sp.Expr, beta: sp.Expr, eps: sp.Expr) -> sp.Expr:
    """``expr`` (in the placeholders) for the schedule, simplified."""
    values = {_A: alpha, _B: beta, _DA: sp.diff(alpha, t), _DB: sp.diff(beta, t), _EPS: eps}
    return simplify(expr.xreplace(values))


def _posterior_mean(mu: sp.Expr, v: sp.Expr) -> sp.Expr:
    """The root in y of d/dy [-(y - mu)^2/(2v) - (x - beta y)^2/(2 alpha^2)], in the placeholders."""
    y = sp.Dummy("y", real=True)
    log_posterior = -(y - mu) ** 2 / (2 * v) - (x - _B * y) ** 2 / (2 * _A**2)
    stationary = sp.diff(log_posterior, y)          # linear in y: slope y + value at 0 = 0
    return sp.cancel(-stationary.subs(y, 0) / sp.diff(stationary, y))


def _drift(eta: sp.Expr) -> sp.Expr:
    """alpha' eta_Z + beta' eta - eps eta_Z/alpha, eta_Z = (x - beta eta)/alpha, in the placeholders."""
    eta_z = (x - _B * eta) / _A
    return _DA * eta_z + _DB * eta - _EPS * eta_z / _A


def _centred(mu: sp.Expr, v: sp.Expr) -> sp.Expr:
    """b^eps(t, w + beta mu) - beta' mu for N(mu, v), in the placeholders (cancelled)."""
    return sp.cancel(_drift(_posterior_mean(mu, v)).subs(x, w + _B * mu) - _DB * mu)


def gaussian_mean_eta_x(schedule: Schedule, mu: sp.Expr = mu_symbol, v: sp.Expr | None = None) -> sp.Expr:
    """eta_X = E[X | I_t = x] for X ~ N(mu, v), derived as the mode of the Gaussian posterior:
    the root in y of d/dy [-(y - mu)^2/(2v) - (x - beta y)^2/(2 alpha^2)] (= mu + v beta (x - beta mu)/r)."""
    alpha, beta, _, v = schedule_parts(schedule, sp.Integer(0), v)
    return _at_schedule(_posterior_mean(mu, v), alpha, beta, sp.Integer(0))


def drift_from_eta(schedule: Schedule, eta: sp.Expr, eps: sp.Expr | None = None) -> sp.Expr:
    """b^eps = alpha' eta_Z + beta' eta_X - eps eta_Z/alpha with eta_X = ``eta``, eta_Z = (x - beta eta)/alpha."""
    alpha, beta, eps, _ = schedule_parts(schedule, eps, sp.Integer(1))
    return _drift(eta).xreplace({_A: alpha, _B: beta, _DA: sp.diff(alpha, t), _DB: sp.diff(beta, t), _EPS: eps})


def gaussian_mean_drift(schedule: Schedule, eps: sp.Expr | None = None, mu: sp.Expr = mu_symbol,
                        v: sp.Expr | None = None) -> sp.Expr:
    """b^eps(t, x) for data N(mu, v I), simplified (= beta' mu + (r'/2 - eps)/r (x - beta mu))."""
    alpha, beta, eps, v = schedule_parts(schedule, eps, v)
    return _at_schedule(sp.cancel(_drift(_posterior_mean(mu, v))), alpha, beta, eps)


def centred_drift(schedule: Schedule, eps: sp.Expr | None = None, mu: sp.Expr = mu_symbol,
                  v: sp.Expr | None = None) -> sp.Expr:
    """The drift of w = x - beta mu (dw = dx - beta' mu dt): b^eps(t, w + beta mu) - beta' mu, in w
    (= (r'/2 - eps)/r w)."""
    alpha, beta, eps, v = schedule_parts(schedule, eps, v)
    return _at_schedule(_centred(mu, v), alpha, beta, eps)


def centred_lazy_condition(schedule: Schedule, eps: sp.Expr | None = None, mu: sp.Expr = mu_symbol,
                           v: sp.Expr | None = None) -> sp.Expr:
    """eps - r'/2, read off the centred drift c(w) = k w as -r k: zero iff the drift vanishes in w, whatever
    mu.  Refuses (SpecError) if c(0) does not cancel to 0 (it always does: the check guards the derivation)."""
    alpha, beta, eps, v = schedule_parts(schedule, eps, v)
    centred = _centred(mu, v)
    offset = sp.cancel(centred.subs(w, 0))
    if offset != 0:
        raise SpecError(f"the centred drift at w = 0 is {sp.sstr(offset)[:200]}, not 0")
    return _at_schedule(sp.cancel(-sp.diff(centred, w) * (_A**2 + v * _B**2)), alpha, beta, eps)


def direction_rate(schedule: Schedule, lam: sp.Expr) -> sp.Expr:
    """a = r'/(2r), r = alpha^2 + lam beta^2: the probability-flow ODE in w along a direction of variance lam
    is dw/dt = a w (derived as d/dw of the centred drift with eps = 0; the mean does not enter)."""
    alpha, beta, _, _ = schedule_parts(schedule, sp.Integer(0), lam)
    return _at_schedule(sp.diff(_centred(mu_symbol, lam), w), alpha, beta, sp.Integer(0))


def direction_propagator(schedule: Schedule, lam: sp.Expr, end: sp.Symbol = t_next) -> sp.Expr:
    """w(end) = P w(t) for dw/dt = a w: P = exp(int_t^end a) = sqrt(r(end)/r(t)), since a = (log r)'/2
    (checked by SymPy; SpecError if it cannot show it)."""
    alpha, beta, _, _ = schedule_parts(schedule, sp.Integer(0), lam)
    r = alpha**2 + lam * beta**2
    rate = direction_rate((alpha, beta), lam)
    if simplify(rate - sp.diff(sp.log(r), t) / 2) != 0:
        raise SpecError(f"the linear part {sp.sstr(rate)[:200]} does not simplify to (log r)'/2")
    return sp.sqrt(r.subs(t, end) / r)


def _optimal_eps(alpha: sp.Expr, beta: sp.Expr) -> sp.Expr:
    """eps* = alpha^2 (log snr)' (MATH.md §1)."""
    return alpha**2 * sp.diff(sp.log(beta) - sp.log(alpha), t)


def direction_sde_rate(schedule: Schedule, lam: sp.Expr, scale: sp.Expr = sp.Integer(1)) -> sp.Expr:
    """g = d/dw of the centred drift with eps = scale^2 eps* along a direction of variance lam: the SDE in w is
    dw = g w dt + sqrt(2 eps) dW (= r'/(2r) - eps/r)."""
    alpha, beta, _, _ = schedule_parts(schedule, sp.Integer(0), lam)
    eps = scale**2 * _optimal_eps(alpha, beta)
    return _at_schedule(sp.diff(_centred(mu_symbol, lam), w), alpha, beta, eps)


def direction_sde_transition(schedule: Schedule, lam: sp.Expr, scale: sp.Expr = sp.Integer(1),
                             end: sp.Symbol = t_next) -> tuple[sp.Expr, sp.Expr]:
    """(Phi, V): w(end) = Phi w(t) + N(0, V) for dw = g w dt + sqrt(2 eps) dW, eps = scale^2 eps*.  With
    q = beta^2/r, int eps*/r dt = (log q)/2 (substitute snr), so D = exp(-scale^2 int_t^end eps*/r) = (q(t)/q(end))^(scale^2/2),
    Phi = sqrt(r(end)/r(t)) D and V = r(end) (1 - D^2).  Checked: d/d(end) log Phi = g(end), Phi = 1 at
    end = t, and dV/d(end) = 2 g(end) V + 2 eps(end), V = 0 at end = t, by cancellation or else at random points in
    40-digit arithmetic (:func:`_vanishes`; SpecError if not)."""
    alpha, beta, _, _ = schedule_parts(schedule, sp.Integer(0), lam)
    r = alpha**2 + lam * beta**2
    log_q = 2 * sp.log(beta) - sp.log(r)
    log_phi = (sp.log(r.subs(t, end)) - sp.log(r)) / 2 + scale**2 / 2 * (log_q - log_q.subs(t, end))
    log_d = scale**2 / 2 * (log_q - log_q.subs(t, end))
    rate = direction_sde_rate((alpha, beta), lam, scale).subs(t, end)
    eps_end = (scale**2 * _optimal_eps(alpha, beta)).subs(t, end)
    variance = r.subs(t, end) * (1 - sp.exp(2 * log_d))
    checks = {"d log Phi/dt' - g": sp.diff(log_phi, end) - rate, "log Phi at t' = t": log_phi.subs(end, t),
              "dV/dt' - 2 g V - 2 eps": sp.diff(variance, end) - 2 * rate * variance - 2 * eps_end,
              "V at t' = t": variance.subs(end, t)}
    for label, expr in checks.items():
        if not _vanishes(expr, end):
            raise SpecError(f"the SDE transition per direction: {label} is not 0")
    return sp.exp(log_phi), variance


def _vanishes(expr: sp.Expr, end: sp.Symbol, points: int = 6) -> bool:
    """``expr`` is 0: its cancelled log-expanded form is 0, or (where SymPy cannot show it, e.g. with trigonometric
    schedules) it is below 1e-20 at ``points`` seeded random (t < t') in (0.05, 0.95) with every other
    symbol (lam, the scale, parameters) set to a seeded random value in (0.2, 2), in 40-digit arithmetic."""
    expanded = sp.expand_log(expr, force=True)
    if sp.cancel(expanded) == 0:
        return True
    import random

    rng = random.Random(0)
    others = sorted(expanded.free_symbols - {t, end}, key=str)
    for _ in range(points):
        t0, t1 = sorted(rng.uniform(0.05, 0.95) for _ in range(2))
        values = {t: sp.Float(t0, 40), end: sp.Float(t1, 40), **{u: sp.Float(rng.uniform(0.2, 2), 40) for u in others}}
        value = sp.N(expanded.xreplace(values), 40)
        if not value.is_number or abs(complex(value)) > 1e-20:
            return False
    return True


def gaussian_residual(schedule: Schedule, eta: sp.Expr, mu: sp.Expr = mu_symbol, v: sp.Expr | None = None) -> sp.Expr:
    """f = b - b_Gauss of the probability-flow ODE for data whose eta_X is ``eta``: K_e (eta - eta_X^G),
    K_e = beta' - alpha' beta/alpha, eta_X^G the posterior mean of N(mu, v)."""
    alpha, beta, _, v = schedule_parts(schedule, sp.Integer(0), v)
    k_e = sp.diff(_drift(eta_X), eta_X)
    return _at_schedule(k_e, alpha, beta, sp.Integer(0)) * (eta - gaussian_mean_eta_x((alpha, beta), mu, v))


def residual_at_start(schedule: Schedule, data_mean: sp.Expr, mu: sp.Expr = mu_symbol,
                      v: sp.Expr | None = None) -> sp.Expr:
    """f(0, x) = K_e(0) (E[X] - mu): at beta_0 = 0 the interpolant carries no information on X, so
    eta_X(0, x) = E[X] for any data (= beta'(0) (E[X] - mu) with alpha_0 = 1: zero iff mu = E[X])."""
    alpha, beta, _, v = schedule_parts(schedule, sp.Integer(0), v)
    if not isinstance(beta, AppliedUndef) and _endpoint(beta, alpha, beta, 0) != 0:
        raise SpecError(f"eta_X(0, x) = E[X] needs beta_0 = 0, got beta = {sp.sstr(beta)}")
    return _endpoint(gaussian_residual((alpha, beta), as_expression(data_mean, "data_mean"), mu, v), alpha, beta, 0)


def residual_at_end(schedule: Schedule, mu: sp.Expr = mu_symbol, v: sp.Expr | None = None) -> sp.Expr:
    """f(1, x) for any data: written in eta_Z, f = (alpha' - alpha beta'/beta) (eta_Z - eta_Z^G); I_1 = X is
    independent of Z, so eta_Z(1, x) = 0, and eta_Z^G = alpha (x - beta mu)/r -> 0 (alpha_1 = 0, r_1 = v)."""
    alpha, beta, _, v = schedule_parts(schedule, sp.Integer(0), v)
    coefficient = sp.diff(_DA * eta_Z + _DB * (x - _A * eta_Z) / _B, eta_Z)
    eta_z_gauss = sp.cancel((x - _B * _posterior_mean(mu, v)) / _A)
    return _endpoint(_at_schedule(coefficient * (0 - eta_z_gauss), alpha, beta, sp.Integer(0)), alpha, beta, 1)


def _endpoint(expr: sp.Expr, alpha: sp.Expr, beta: sp.Expr, at: int) -> sp.Expr:
    """``expr`` at t = ``at``: undefined alpha(t), beta(t) take the standard values (1, 0) at 0 and (0, 1)
    at 1; concrete ones give the one-sided limit (substitution where finite, else sp.limit, bounded)."""
    generic = {fn.func(at): value for fn, value in zip((alpha, beta), ((1, 0), (0, 1))[at])
               if isinstance(fn, AppliedUndef)}
    expr = simplify(expr)
    direct = simplify(expr.subs(t, at).subs(generic))
    if not direct.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        return direct
    try:
        value = call_with_time_limit(LIMIT_SECONDS, sp.limit, expr, t, at, "+" if at == 0 else "-")
    except TimeLimit:
        raise SpecError(f"{sp.sstr(expr)[:200]} at t = {at}: SymPy's limit gave up after {LIMIT_SECONDS} s") from None
    if value.has(sp.nan, sp.zoo, sp.oo, -sp.oo, sp.AccumBounds, sp.Limit):
        raise SpecError(f"{sp.sstr(expr)[:200]} has no finite limit at t = {at} (it tends to {value})")
    return simplify(value)
