"""Every derived formula against an independent route: definitions evaluated numerically on
Gaussian data, closed forms derived in derive/MATH.md, and a Monte Carlo estimate of E[X | I_t = x]."""
import math

import numpy as np
import pytest
import sympy as sp

from lazyflow.derive import derive, preset
from lazyflow.derive.symbols import eta_X, t, x

from schedules import ALL

POINTS = [0.13, 0.37, 0.5, 0.71, 0.93]


def num(expr, **values):
    return complex(sp.N(expr.subs({sp.Symbol(k, **_assumptions(k)): v for k, v in values.items()}))).real


def _assumptions(name):
    return {"t": {"positive": True}}.get(name, {"real": True})


def finite_difference(expr, at, h=1e-6):
    f = sp.lambdify(t, expr, "mpmath")
    import mpmath
    mpmath.mp.dps = 30
    return float(mpmath.diff(f, at))


@pytest.mark.slow
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_derivatives_snr_and_eps_star(spec):
    f = derive(spec)
    for s in POINTS:
        a, b = num(f.alpha, t=s), num(f.beta, t=s)
        da, db = finite_difference(spec.alpha, s), finite_difference(spec.beta, s)
        assert num(f.d_alpha, t=s) == pytest.approx(da, rel=1e-8, abs=1e-10)
        assert num(f.d_beta, t=s) == pytest.approx(db, rel=1e-8, abs=1e-10)
        assert num(f.snr, t=s) == pytest.approx(b / a, rel=1e-10)
        # eps* = alpha^2 beta'/beta - alpha alpha' (derive/MATH.md §1), from numbers only
        assert num(f.eps_star, t=s) == pytest.approx(a * a * db / b - a * da, rel=1e-8, abs=1e-10)
        assert num(f.sigma, t=s) ** 2 / 2 == pytest.approx(num(f.eps, t=s), rel=1e-9, abs=1e-12)


#: the schedules whose symbolic drift takes SymPy seconds (6, 2.6, 1.8 and 2.5 s here): the slow pass
HEAVY_DRIFT = {"exp-ish", "cubic", "cos2", "score-vp"}


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.name in HEAVY_DRIFT else s for s in ALL],
                         ids=lambda s: s.name)
def test_drift_from_its_definition(spec):
    """b^eps = alpha' eta_Z + beta' eta_X - eps eta_Z / alpha, with eta_Z from x = alpha eta_Z + beta eta_X."""
    f = derive(spec)
    rng = np.random.default_rng(0)
    for s in POINTS:
        a, b, da, db, e = (num(expr, t=s) for expr in (f.alpha, f.beta, f.d_alpha, f.d_beta, f.eps))
        for xv, ev in rng.normal(size=(3, 2)):
            ez = (xv - b * ev) / a
            expected = da * ez + db * ev - e * ez / a
            got = num(f.drift, t=s, x=xv, eta_X=ev)
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert num(f.velocity, t=s, eta_Z=ez, eta_X=ev) == pytest.approx(da * ez + db * ev, rel=1e-12)
            assert num(f.score, t=s, eta_Z=ez) == pytest.approx(-ez / a, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
@pytest.mark.parametrize("prediction", ["velocity", "x", "noise", "score"])
def test_parameterizations_invert_their_definitions(spec, prediction):
    f = derive(spec)
    ex_expr, ez_expr = f.to_eta(prediction)
    for s in (0.3, 0.8):
        a, b, da, db = (num(expr, t=s) for expr in (f.alpha, f.beta, f.d_alpha, f.d_beta))
        ez, ex = 0.7, -0.4
        xv = a * ez + b * ex
        mv = {"velocity": da * ez + db * ex, "x": ex, "noise": ez, "score": -ez / a}[prediction]
        assert num(ex_expr, t=s, x=xv, m=mv) == pytest.approx(ex, abs=1e-10)
        assert num(ez_expr, t=s, x=xv, m=mv) == pytest.approx(ez, abs=1e-10)


@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.name in HEAVY_DRIFT else s for s in ALL],
                         ids=lambda s: s.name)
def test_gaussian_drift_against_monte_carlo(spec):
    """k(t) x = b(t, x) with eta_X = E[X | I_t = x] estimated by regression on simulated (X, Z)."""
    f = derive(spec)
    v = float(spec.data_var)
    rng = np.random.default_rng(1)
    X = rng.normal(scale=math.sqrt(v), size=400_000)
    Z = rng.normal(size=X.size)
    for s in (0.25, 0.6):
        a, b = num(f.alpha, t=s), num(f.beta, t=s)
        I = a * Z + b * X
        slope = (I * X).mean() / (I * I).mean()          # E[X | I] = slope * I for centred Gaussians
        k_mc = num(f.drift_x, t=s) + num(f.drift_eta, t=s) * slope
        assert num(f.gaussian_drift, t=s) == pytest.approx(k_mc, rel=0.02, abs=0.02)


def test_closed_forms_of_design_md():
    assert sp.simplify(derive(preset("linear")).eps_star - (1 - t) / t) == 0
    cosine = derive(preset("vp")).eps_star
    assert sp.simplify(cosine - sp.pi / 2 * sp.cot(sp.pi * t / 2)) == 0
    # lazy frames: zero Gaussian drift for unit variance
    assert derive(preset("vp")).gaussian_drift == 0
    assert derive(preset("pointmass")).gaussian_drift == 0
    assert derive(preset("linear")).gaussian_drift != 0
    # the point mass: eps* = beta'/2 = 1/2 and drift (eta_X - x)/(1 - t)
    pm = derive(preset("pointmass"))
    assert sp.simplify(pm.eps_star - sp.Rational(1, 2)) == 0
    assert sp.simplify(pm.drift - (eta_X - x) / (1 - t)) == 0


@pytest.mark.slow   # 11 s of SymPy
def test_gaussian_drift_general_form():
    """b = (r'/2 - eps) / r x for any schedule (derive/MATH.md §4)."""
    for spec in ALL:
        f = derive(spec)
        v = spec.data_var
        r = f.alpha**2 + v * f.beta**2
        for s in (0.2, 0.55, 0.9):
            expected = num((sp.diff(r, t) / 2 - f.eps) / r, t=s)
            assert num(f.gaussian_drift, t=s) == pytest.approx(expected, rel=1e-8, abs=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd3", "score-vp", "poly"])
def test_symbolic_parameters_agree_with_their_values(name):
    """Formulas derived with the parameters as symbols equal those derived at the values."""
    spec = preset(name)
    assert spec.params and spec.param_symbols
    symbolic, at_values = derive(spec), derive(spec.substituted())
    values = spec.param_values
    for key in ("alpha", "beta", "d_alpha", "d_beta", "eps", "eps_star", "log_snr", "drift_x", "drift_eta",
                "gaussian_drift"):
        expr = getattr(symbolic, key).xreplace(values)
        for s in POINTS:
            assert num(expr, t=s) == pytest.approx(num(getattr(at_values, key), t=s), rel=1e-10, abs=1e-12), key


def test_derivation_is_fast_and_cached():
    import time

    from lazyflow.derive.formulas import derive as cached
    spec = preset("linear-sde")
    cached.cache_clear()
    start = time.perf_counter()
    cached(spec)
    first = time.perf_counter() - start
    start = time.perf_counter()
    cached(spec)
    assert time.perf_counter() - start < first / 10
