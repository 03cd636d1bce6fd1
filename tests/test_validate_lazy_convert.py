"""Validation refusals, the lazy solver and schedule conversion, against closed forms."""
import pytest
import sympy as sp

from lazyflow.derive import (PRESETS, ScheduleSpec, SpecError, convert, derive, from_expressions, preset, solve_lazy,
                             validate, zero_drift_residual)
from lazyflow.derive.symbols import t, v


# --- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "score-vp" else n for n in PRESETS])
def test_presets_validate(name):   # score-vp: 3.7 s of SymPy, in the slow pass
    report = validate(preset(name))
    assert report.kind == ("pointmass" if name == "pointmass" else "standard")


def test_monotonicity_says_how_it_was_shown():
    assert validate(preset("linear")).snr_monotone == "proved symbolically"
    assert validate(preset("vp")).snr_monotone.startswith("checked on a grid")


@pytest.mark.slow   # 2-5 s of SymPy on score-vp
def test_score_vp_tolerance_is_reported():
    notes = validate(preset("score-vp")).notes
    assert notes and "beta_0 = 0.006" in notes[0]


@pytest.mark.parametrize("alpha, beta, sigma, fragment", [
    ("1 - t", "2*t", "ode", "beta_1 = 2"),
    ("cos(t)", "t", "ode", "alpha_1 = cos(1)"),
    ("1 - t/2", "t", "ode", "alpha_1 = 1/2"),
    ("1 + t", "t", "ode", "alpha_1 = 2"),
    ("1 - t", "t + 1/10", "ode", "beta_0 = 1/10"),
    ("1 - t", "t + sin(2*pi*t)/2", "ode", "not strictly increasing"),
    ("1 - t", "t", "-1", "sigma must be real and non-negative"),
    ("1 - t", "t", "sqrt(t - 2)", "sigma must be real and non-negative"),
    ("1 - t", "t", "1/(t - 1/2)", "not finite at t = 0.5"),
    ("t*(1 - t)", "t", "ode", "snr -> 1 as t -> 0"),
])
def test_invalid_schedules_are_refused_with_the_reason(alpha, beta, sigma, fragment):
    with pytest.raises(SpecError) as info:
        validate(from_expressions(alpha, beta, sigma))
    assert fragment in str(info.value)


def test_lazy_diffusion_on_a_schedule_whose_r_decreases_is_refused():
    with pytest.raises(SpecError, match="negative or not real"):
        validate(from_expressions("1 - t", "t", "lazy"))


# --- lazy solver -----------------------------------------------------------------------------

def test_beta_and_ode_give_variance_preserving_alpha_for_symbolic_v():
    spec = solve_lazy(beta=sp.sin(sp.pi * t / 2), sigma="ode", data_var=v)
    assert sp.simplify(spec.alpha**2 - v * sp.cos(sp.pi * t / 2) ** 2) == 0
    assert sp.simplify(zero_drift_residual(spec)) == 0


def test_beta_and_optimal_give_the_point_mass_for_symbolic_v():
    spec = solve_lazy(beta=t, sigma="optimal", data_var=v)
    assert sp.simplify(spec.alpha**2 - v * t * (1 - t)) == 0
    # the lazy diffusion of the point mass is its optimal one: eps* = v beta'/2
    assert sp.simplify(derive(spec).eps_star - v / 2) == 0


@pytest.mark.slow   # 3 s of SymPy
def test_alpha_and_beta_give_sigma_squared_equal_r_prime():
    spec = solve_lazy(alpha=sp.sqrt(t * (1 - t)), beta=t)
    assert sp.simplify(derive(spec).sigma - 1) == 0
    spec = solve_lazy(alpha=sp.cos(sp.pi * t / 2), beta=sp.sin(sp.pi * t / 2))
    assert derive(spec).sigma == 0


def test_alpha_and_sigma_give_beta():
    spec = solve_lazy(alpha=sp.sqrt(1 - t**2), sigma="ode")
    assert sp.simplify(spec.beta - t) == 0


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(alpha=1 - t, beta=t), "lazy diffusion would be negative"),
    (dict(alpha=1 - t, sigma=sp.Integer(1)), "beta^2 would be negative"),
    (dict(beta=t), "fix exactly two"),
    (dict(alpha=1 - t, beta=t, sigma="ode"), "fix exactly two"),
    (dict(beta=t, sigma="lazy"), "sigma must be 'ode', 'optimal' or an expression"),
    (dict(beta=t, sigma=2 * sp.sqrt(t)), "alpha^2 would be negative"),
])
def test_lazy_refusals(kwargs, fragment):
    with pytest.raises(SpecError) as info:
        solve_lazy(**kwargs)
    assert fragment in str(info.value)


# --- conversion ------------------------------------------------------------------------------

def _same(a, b, points=(0.1, 0.35, 0.6, 0.85)):
    for s in points:
        assert complex(sp.N(a.subs(t, s))).real == pytest.approx(complex(sp.N(b.subs(t, s))).real, rel=1e-10, abs=1e-12)


def test_linear_to_pointmass():
    conv = convert(preset("linear"), preset("pointmass"))
    snr = sp.sqrt(t / (1 - t))
    _same(conv.time_map, snr / (1 + snr))
    _same(conv.scale, sp.sqrt(t * (1 - t)) + t)


def test_vp_to_linear():
    conv = convert(preset("vp"), preset("linear"))
    _same(conv.time_map, 2 * sp.atan(t / (1 - t)) / sp.pi)
    _same(conv.scale, sp.sqrt(t**2 + (1 - t) ** 2))


@pytest.mark.slow
@pytest.mark.parametrize("source, target", [("linear", "vp"), ("linear", "pointmass"), ("vp", "linear"),
                                            ("linear", "sd3"), ("pointmass", "vp"), ("linear", "poly")])
def test_optimal_diffusion_is_covariant(source, target):
    a, b = preset(source).substituted(), preset(target).substituted()   # conversions are at the parameter values
    conv = convert(a, b)
    _same(conv.target_eps(derive(a).eps_star), derive(b).eps_star)


@pytest.mark.slow   # 3 s: Monte Carlo in law
def test_the_interpolants_match_in_law():
    """alpha_B = c alpha_A(tau) and beta_B = c beta_A(tau)."""
    for target in ("vp", "pointmass", "sd3", "score-vp"):
        a, b = preset("linear"), preset(target).substituted()   # conversions are at the parameter values
        conv = convert(a, b)
        _same(derive(b).alpha, conv.scale * a.alpha.subs(t, conv.time_map))
        _same(derive(b).beta, conv.scale * a.beta.subs(t, conv.time_map))


def test_numeric_fallback_is_said(monkeypatch):
    import lazyflow.derive.conversion as module

    monkeypatch.setattr(module, "SOLVE_SECONDS", 0.01)
    module.snr_inverse.cache_clear()
    module.convert.cache_clear()
    try:
        conv = module.convert(preset("score-vp"), preset("linear"))
        assert not conv.closed_form and "numerically" in conv.note
    finally:
        module.snr_inverse.cache_clear()
        module.convert.cache_clear()


# --- parameters ------------------------------------------------------------------------------

def test_parameters_stay_symbols_and_validate_at_their_values():
    sd3 = preset("sd3")
    shift = sd3.param_symbols["shift"]
    assert shift.is_positive and shift in sd3.alpha.free_symbols
    assert sd3.substituted().params == () and not sd3.substituted().alpha.free_symbols - {t}
    _same(sd3.substituted().alpha, 3 * (1 - t) / (3 - 2 * t))
    assert validate(sd3).kind == "standard"
    bound = sd3.bind(shift=1.5)
    assert bound.param_symbols["shift"] == shift and dict(bound.params)["shift"] == sp.Rational(3, 2)
    _same(bound.substituted().beta, t / (1 + sp.Rational(1, 2) * (1 - t)))
    assert hash(bound) != hash(sd3) and bound != sd3


@pytest.mark.parametrize("values, fragment", [
    (dict(scale=2), "its parameters: shift"),
    (dict(shift=float("inf")), "not finite"),
    (dict(shift=float("nan")), "not finite"),
    (dict(shift="abc"), "unknown symbol"),
    (dict(shift=True), "expected a number"),
    (dict(shift=-1), "declared positive"),
])
def test_bind_refusals(values, fragment):
    with pytest.raises(SpecError, match=fragment):
        preset("sd3").bind(**values)


@pytest.mark.parametrize("name", ["t", "v", "lam", "torch", "lambda", "_hidden"])
def test_reserved_parameter_names(name):
    with pytest.raises(SpecError):
        from_expressions("1 - t", "t", params={name: 1})


def test_parameter_signs_follow_the_defaults():
    spec = from_expressions("1 - t", "t + a*t*(1 - t) + b*t*(1 - t)", params={"a": -0.5, "b": 0})
    assert spec.param_symbols["a"].is_negative and spec.param_symbols["b"].is_zero is None
    assert spec.param_symbols["b"].is_real
    with pytest.raises(SpecError, match="unknown symbol 'q'"):
        from_expressions("1 - t", "t + q*t", params={"a": 1})
    with pytest.raises(SpecError, match="only t"):
        ScheduleSpec("s", 1 - t, t + sp.Symbol("q") * t)
