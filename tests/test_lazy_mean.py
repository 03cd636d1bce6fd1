"""Gaussian data with a mean, N(mu, v I), and the frames exact for the data's Gaussian (derive/MATH.md §10).

The SymPy results of derive/gaussian_frame.py are checked against formulas written here independently:
eta_X from the joint covariance of (X, I_t) and the conditional-mean formula, derivatives by central
differences, the propagator by an RK4 solve, the endpoint facts on a Gaussian mixture and a two-point law."""
import numpy as np
import pytest
import sympy as sp

from lazyflow.derive import (SpecError, centred_drift, centred_lazy_condition, direction_propagator, direction_rate,
                             gaussian_mean_drift, gaussian_mean_eta_x, residual_at_end, residual_at_start,
                             solve_lazy, solve_lazy_with_notes)
from lazyflow.derive import lazy as lazy_module
from lazyflow.derive.gaussian_frame import (data_mean_value, direction_sde_rate, direction_sde_transition,
                                            gaussian_residual)
from lazyflow.derive.symbols import mu, t, t_next, v, w, x

pi = sp.pi
LAM = sp.Symbol("lam", positive=True)
SCHEDULES = {
    "linear": (1 - t, t),
    "cosine": (sp.cos(pi * t / 2), sp.sin(pi * t / 2)),
    "pointmass": (sp.sqrt(t * (1 - t)), t),
}
A, B, E = sp.Function("alpha")(t), sp.Function("beta")(t), sp.Function("eps")(t)


def _zero(expr) -> bool:
    return sp.simplify(expr) == 0


def _numeric(expr):
    """float(t) -> float: a schedule (or its derivative) evaluated with numpy."""
    return sp.lambdify(t, expr, "numpy")


def _d(fn, at: float, h: float = 1e-6) -> float:
    """Central difference."""
    return (fn(at + h) - fn(at - h)) / (2 * h)


def _conditional_mean(alpha: float, beta: float, x_: float, mean: float, var: float) -> float:
    """E[X | I = x] from the joint law of (X, I) = M (X, Z), (X, Z) ~ N((mean, 0), diag(var, 1)):
    Cov(X, I) Var(I)^-1 (x - E[I]) + E[X]."""
    m = np.array([[1.0, 0.0], [beta, alpha]])
    cov = m @ np.diag([var, 1.0]) @ m.T
    expect = m @ np.array([mean, 0.0])
    return expect[0] + cov[0, 1] / cov[1, 1] * (x_ - expect[1])


def _samples(seed: int, n: int = 6):
    """Random (t, x, mu, v) with t inside (0, 1)."""
    rng = np.random.default_rng(seed)
    return zip(rng.uniform(0.05, 0.95, n), rng.normal(0, 2, n), rng.normal(0, 2, n), rng.uniform(0.2, 3, n))


# --- eta_X and the drift for N(mu, v) ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_eta_x_is_the_conditional_mean_of_the_joint_gaussian(name):
    alpha, beta = SCHEDULES[name]
    eta = sp.lambdify((t, x, mu, v), gaussian_mean_eta_x((alpha, beta)), "numpy")
    fa, fb = _numeric(alpha), _numeric(beta)
    for tt, xx, mm, vv in _samples(1):
        expected = _conditional_mean(fa(tt), fb(tt), xx, mm, vv)
        assert eta(tt, xx, mm, vv) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("diffusion", ["ode", "optimal", "constant"])
def test_drift_is_velocity_plus_eps_score_and_beta_prime_mu_plus_the_centred_part(name, diffusion):
    alpha, beta = SCHEDULES[name]
    eps = {"ode": sp.Integer(0), "optimal": alpha**2 * sp.diff(sp.log(beta / alpha), t),
           "constant": sp.Rational(3, 4)}[diffusion]
    drift = sp.lambdify((t, x, mu, v), gaussian_mean_drift((alpha, beta), eps), "numpy")
    fa, fb, fe = _numeric(alpha), _numeric(beta), _numeric(eps)
    for tt, xx, mm, vv in _samples(2):
        a, b, da, db, e = fa(tt), fb(tt), _d(fa, tt), _d(fb, tt), fe(tt)
        eta_x = _conditional_mean(a, b, xx, mm, vv)
        eta_z = (xx - b * eta_x) / a
        velocity_plus_score = da * eta_z + db * eta_x + e * (-eta_z / a)
        r, dr = a**2 + vv * b**2, 2 * a * da + 2 * vv * b * db
        centred_form = db * mm + (dr / 2 - e) / r * (xx - b * mm)
        got = drift(tt, xx, mm, vv)
        assert got == pytest.approx(velocity_plus_score, rel=1e-6, abs=1e-6)
        assert got == pytest.approx(centred_form, rel=1e-6, abs=1e-6)


def test_general_schedule_drift_centred_drift_and_condition():
    r = A**2 + v * B**2
    expected = sp.diff(B, t) * mu + (sp.diff(r, t) / 2 - E) / r * (x - B * mu)
    assert _zero(gaussian_mean_drift((A, B), E) - expected)
    assert _zero(gaussian_mean_eta_x((A, B)) - (mu + v * B * (x - B * mu) / r))
    assert _zero(centred_drift((A, B), E) - (sp.diff(r, t) / 2 - E) / r * w)
    condition = centred_lazy_condition((A, B), E)
    assert _zero(condition - (E - sp.diff(r, t) / 2)) and mu not in condition.free_symbols
    # a spec gives its own eps and data variance: lazy, so the drift is beta' mu alone
    spec = solve_lazy(beta=t, sigma="optimal", data_var=2)
    assert _zero(centred_drift(spec, mu=3)) and _zero(gaussian_mean_drift(spec, mu=3) - 3)


# --- the lazy condition in w: eps = r'/2, the same as for mean 0 ------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_zero_drift_in_w_iff_eps_is_half_r_prime(name):
    alpha, beta = SCHEDULES[name]
    lazy_eps = sp.diff(alpha**2 + v * beta**2, t) / 2
    assert _zero(centred_drift((alpha, beta), lazy_eps))
    assert _zero(centred_lazy_condition((alpha, beta), lazy_eps))
    off = centred_drift((alpha, beta), lazy_eps + t)               # any other eps leaves a drift in w
    assert not _zero(off)
    assert float(off.subs({t: sp.Rational(1, 2), w: 1, v: 2, mu: 5})) == pytest.approx(-0.5 / float(
        (alpha**2 + 2 * beta**2).subs(t, sp.Rational(1, 2))))


def test_optimal_point_mass_and_ode_constant_r_are_lazy_for_any_mean():
    beta = sp.sin(pi * t / 2) ** 2
    alpha = sp.sqrt(v) * sp.sin(pi * t / 2) * sp.cos(pi * t / 2)    # alpha^2 = v beta (1 - beta)
    eps_star = alpha**2 * sp.diff(sp.log(beta / alpha), t)
    assert _zero(centred_lazy_condition((alpha, beta), eps_star))
    assert _zero(centred_drift((alpha, beta), eps_star, mu=sp.Rational(-7, 3)))
    # written as sqrt(v beta (1 - beta)) SymPy keeps |sin| and a Piecewise that is 0 inside (0, 1)
    rough = sp.sqrt(v * beta * (1 - beta))
    condition = centred_lazy_condition((rough, beta), rough**2 * sp.diff(sp.log(beta / rough), t))
    assert all(abs(complex(condition.subs({v: 2, t: at}))) < 1e-12 for at in (0.1, 0.5, 0.9))
    assert (alpha.subs(t, 0), beta.subs(t, 0)) == (0, 0)          # starts at the point 0 in w and in x
    ode = (sp.sqrt(v * (1 - t**2)), t)                              # alpha^2 + v beta^2 = v
    assert _zero(centred_drift(ode, 0))
    assert not _zero(centred_drift((1 - t, t), 0, v=1))            # linear: r' != 0


# --- per direction: the linear part and its propagator ----------------------------------------------------

def test_direction_rate_linear_schedule_closed_form():
    c = t**2 * LAM + (1 - t) ** 2
    assert _zero(direction_rate((1 - t, t), LAM) - (t * LAM - (1 - t)) / c)
    assert _zero(direction_rate((A, B), LAM) - sp.diff(A**2 + LAM * B**2, t) / (2 * (A**2 + LAM * B**2)))


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("lam", [sp.Rational(1, 10), sp.Integer(3)])
def test_propagator_solves_the_linear_ode(name, lam):
    schedule = SCHEDULES[name]
    rate = _numeric(direction_rate(schedule, lam))
    prop = sp.lambdify((t, t_next), direction_propagator(schedule, lam), "numpy")
    start, end, steps = 0.15, 0.9, 2000
    h, value, s = (end - start) / steps, 1.0, start
    for _ in range(steps):                                          # RK4 of dw/dt = a w from w = 1
        k1 = rate(s) * value
        k2 = rate(s + h / 2) * (value + h / 2 * k1)
        k3 = rate(s + h / 2) * (value + h / 2 * k2)
        k4 = rate(s + h) * (value + h * k3)
        value, s = value + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), s + h
    assert prop(start, end) == pytest.approx(value, rel=1e-10)
    assert prop(0.4, 0.4) == pytest.approx(1.0)


@pytest.mark.slow   # 1-3 s per schedule: an ODE solve of the moments
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sde_transition_moments_by_an_independent_solve(name):
    """The SDE per direction, dw = g w dt + sqrt(2 eps) dW with eps = s^2 eps*: Phi from an RK4 solve of
    dPhi/dt' = g Phi and V from dV/dt' = 2 g V + 2 eps, with g = r'/(2r) - eps/r and eps* = alpha^2 (log snr)'
    by central differences (not from the library)."""
    lam, scale = sp.Rational(3, 5), sp.Rational(7, 10)
    phi, var = (sp.lambdify((t, t_next), e, "numpy") for e in direction_sde_transition(SCHEDULES[name], lam, scale))
    fa, fb = (_numeric(u) for u in SCHEDULES[name])
    lam_f, s2 = float(lam), float(scale) ** 2

    def rates(at: float) -> tuple[float, float]:
        a, b = fa(at), fb(at)
        r = a * a + lam_f * b * b
        dr = 2 * a * _d(fa, at) + 2 * lam_f * b * _d(fb, at)
        eps = s2 * a * a * (_d(fb, at) / b - _d(fa, at) / a)
        return dr / (2 * r) - eps / r, eps

    start, end, steps = 0.2, 0.85, 400
    h, y, s = (end - start) / steps, np.array([1.0, 0.0]), start
    f = lambda at, u: np.array([rates(at)[0] * u[0], 2 * rates(at)[0] * u[1] + 2 * rates(at)[1]])   # noqa: E731
    for _ in range(steps):
        k1 = f(s, y)
        k2 = f(s + h / 2, y + h / 2 * k1)
        k3 = f(s + h / 2, y + h / 2 * k2)
        k4 = f(s + h, y + h * k3)
        y, s = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), s + h
    assert phi(start, end) == pytest.approx(y[0], rel=1e-7) and var(start, end) == pytest.approx(y[1], rel=1e-7)
    assert direction_sde_rate(SCHEDULES[name], lam, sp.Integer(0)) == direction_rate(SCHEDULES[name], lam)


# --- the residual f = b - b_Gauss at the ends ---------------------------------------------------------------

WEIGHTS, MEANS, SDS = (0.3, 0.7), (-1.5, 0.8), (0.4, 0.9)
MIX_MEAN = sum(p * m for p, m in zip(WEIGHTS, MEANS))


def _mixture_eta_x(alpha: float, beta: float, x_: float) -> float:
    """E[X | I = x] for X ~ sum_j p_j N(m_j, s_j^2): components' posterior means, posterior weights."""
    var_i = [alpha**2 + beta**2 * s**2 for s in SDS]
    like = [p * np.exp(-(x_ - beta * m) ** 2 / (2 * vi)) / np.sqrt(vi) for p, m, vi in zip(WEIGHTS, MEANS, var_i)]
    post = [m + beta * s**2 / vi * (x_ - beta * m) for m, s, vi in zip(MEANS, SDS, var_i)]
    return float(np.dot(like, post) / np.sum(like))


def _residual(schedule, eta_x, at: float, x_: float, mean: float, var: float) -> float:
    """f = b - b_Gauss of the ODE, from eta_X and the Gaussian's conditional mean (numerically)."""
    fa, fb = (_numeric(u) for u in schedule)
    a, b, da, db = fa(at), fb(at), _d(fa, at, 1e-7), _d(fb, at, 1e-7)
    eta_g = _conditional_mean(a, b, x_, mean, var)
    velocity = lambda eta: da * (x_ - b * eta) / a + db * eta   # noqa: E731
    return velocity(eta_x(a, b, x_)) - velocity(eta_g)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_residual_vanishes_at_t0_iff_mu_is_the_data_mean(name):
    schedule = SCHEDULES[name]
    d_beta0 = sp.diff(schedule[1], t).subs(t, 0)
    for x_ in (-2.0, 0.3, 1.7):
        assert abs(_residual(schedule, _mixture_eta_x, 1e-9, x_, MIX_MEAN, 0.7)) < 1e-6
        off = _residual(schedule, _mixture_eta_x, 1e-9, x_, MIX_MEAN + 0.5, 0.7)
        assert off == pytest.approx(-0.5 * float(d_beta0), rel=1e-5)
        two_point = lambda a, b, xx: 0.25 * 2.0 + 0.75 * (-1.0)     # noqa: E731 - eta_X(0, x) = E[X]
        assert abs(_residual(schedule, two_point, 1e-9, x_, -0.25, 3.0)) < 1e-6
    mean_x = sp.Symbol("E", real=True)
    assert _zero(residual_at_start(schedule, mean_x) - d_beta0 * (mean_x - mu))
    assert _zero(residual_at_start((A, B), mean_x) - sp.Subs(sp.diff(B, t), t, 0) * (mean_x - mu))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_residual_vanishes_at_t1_for_any_data(name):
    schedule = SCHEDULES[name]
    for x_ in (-2.0, 0.3, 1.7):
        sizes = [abs(_residual(schedule, _mixture_eta_x, 1 - delta, x_, 5.0, 0.3)) for delta in (1e-2, 1e-3, 1e-4)]
        assert sizes[0] > 1e-4                                       # not trivially zero ...
        assert sizes[1] < sizes[0] / 5 and sizes[2] < sizes[1] / 5   # ... but O(1 - t)
    assert residual_at_end(schedule) == 0 and residual_at_end((A, B)) == 0


def test_library_residual_is_the_numeric_one_inside():
    schedule = SCHEDULES["cosine"]
    p, m, s = WEIGHTS, MEANS, SDS
    alpha, beta = schedule
    var_i = [alpha**2 + beta**2 * sj**2 for sj in s]
    like = [pj * sp.exp(-(x - beta * mj) ** 2 / (2 * vi)) / sp.sqrt(vi) for pj, mj, vi in zip(p, m, var_i)]
    post = [mj + beta * sj**2 / vi * (x - beta * mj) for mj, sj, vi in zip(m, s, var_i)]
    eta = sum(li * qi for li, qi in zip(like, post)) / sum(like)
    f = sp.lambdify((t, x, mu, v), gaussian_residual(schedule, eta), "numpy")
    for tt, xx, mm, vv in _samples(3):
        assert f(tt, xx, mm, vv) == pytest.approx(_residual(schedule, _mixture_eta_x, tt, xx, mm, vv), rel=1e-6, abs=1e-7)


# --- the solver with a data mean ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(beta=t, sigma="optimal"), dict(beta=sp.sin(pi * t / 2), sigma="ode")],
                         ids=["pointmass", "vp"])
@pytest.mark.parametrize("mean", [3, mu, sp.Rational(-1, 2)], ids=["3", "mu", "-1/2"])
def test_solve_lazy_with_a_mean_returns_the_mean_zero_schedule_and_centred_notes(kwargs, mean):
    spec0, notes0 = solve_lazy_with_notes(**kwargs)
    spec, notes = solve_lazy_with_notes(**kwargs, data_mean=mean)
    assert spec == spec0 and solve_lazy(**kwargs, data_mean=mean) == spec0
    assert notes[:len(notes0)] == notes0 and len(notes) == len(notes0) + 3
    extra = " ".join(notes[len(notes0):])
    assert f"mu = {sp.sstr(mean)}" in extra and "w = x - beta mu" in extra and "dw = dx - beta' mu dt" in extra
    assert f"beta' mu = {sp.sstr(sp.simplify(sp.diff(spec.beta, t) * mean))}" in extra
    assert "zero drift in w verified symbolically" in extra
    assert ("point mass" in extra) == (kwargs["sigma"] == "optimal")


def test_mean_zero_or_none_adds_no_notes_and_bad_means_are_refused():
    _, notes0 = solve_lazy_with_notes(beta=t, sigma="optimal")
    assert solve_lazy_with_notes(beta=t, sigma="optimal", data_mean=0)[1] == notes0
    assert data_mean_value(None) is None and data_mean_value(0.0) is None and data_mean_value(2) == 2
    for bad, fragment in (("3", "parse user text"), (t, "constant"), (x + 1, "constant"), (sp.I, "real"),
                          (sp.oo, "finite")):
        with pytest.raises(SpecError, match=fragment):
            solve_lazy_with_notes(beta=t, sigma="optimal", data_mean=bad)


def test_a_wrong_centred_drift_is_caught_by_substitution(monkeypatch):
    monkeypatch.setattr(lazy_module, "centred_drift", lambda spec, mu: sp.Rational(1, 1000) * t * w)
    with pytest.raises(SpecError, match="centred zero-drift check fails"):
        solve_lazy_with_notes(beta=t, sigma="optimal", data_mean=2)
