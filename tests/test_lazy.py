"""The lazy solver in closed form (issue 9 item 3, issue 13 item 3) and time limits off the main thread.

Timing bounds are loose (a slow 2-core machine) and, for work done in this process, measured in CPU
time (time.process_time) so that other processes on a busy machine do not make them flaky; most of
each solve is the validation of the answer (derive + validate), not the solving."""
import threading
import time

import pytest
import sympy as sp

from lazyflow.derive import SpecError, solve_lazy, validate, zero_drift_residual
from lazyflow.derive import lazy as lazy_module
from lazyflow.derive.lazy import solve_lazy_branches, solve_lazy_with_notes
from lazyflow.derive.limits import TimeLimit, call_with_time_limit, run_in_process, time_limit
from lazyflow.derive.symbols import t, v

LINEAR_S = 5.0          # a linear (closed-form) case, on a slow machine
REFUSAL_S = 2.0         # a refusal found before any validation
pi = sp.pi


def _timed(fn, *args, **kwargs):
    """(result, CPU seconds of this process); on the main thread no child process does any of the work."""
    start = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - start


def _zero(expr) -> bool:
    return sp.simplify(expr) == 0


# --- beta and the diffusion fixed: u = alpha^2 in closed form --------------------------------------------

@pytest.mark.slow   # 2-4 s of SymPy
def test_issue_9_optimal_sin_squared_with_v_4_is_the_point_mass_closed_form():
    beta = sp.sin(pi * t / 2) ** 2
    (spec, notes), elapsed = _timed(solve_lazy_with_notes, beta=beta, sigma="optimal", data_var=4)
    assert elapsed < 2 * LINEAR_S, elapsed          # validation of a trigonometric answer: allow double
    assert _zero(spec.alpha**2 - 4 * beta * (1 - beta))
    assert spec.beta == beta and spec.diffusion == "optimal" and spec.data_var == 4
    assert _zero(zero_drift_residual(spec))
    assert any("verified" in note for note in notes)
    assert validate(spec).kind == "pointmass"


@pytest.mark.slow
@pytest.mark.parametrize("beta", [t**2, sp.sin(pi * t / 2), sp.tanh(3 * t) / sp.tanh(3), sp.log(1 + t) / sp.log(2)],
                         ids=["t^2", "sin", "tanh", "log"])
@pytest.mark.parametrize("sigma", ["ode", "optimal"])
def test_beta_fixed_is_solved_in_closed_form_for_whitelisted_beta(beta, sigma):
    spec, elapsed = _timed(solve_lazy, beta=beta, sigma=sigma)
    assert elapsed < 2 * LINEAR_S, elapsed
    expected = 1 - beta**2 if sigma == "ode" else beta * (1 - beta)
    assert _zero(spec.alpha**2 - expected)
    assert _zero(zero_drift_residual(spec))


def test_beta_fixed_with_a_given_sigma_integrates_sigma_squared():
    spec, elapsed = _timed(solve_lazy, beta=t, sigma=sp.Integer(1))
    assert elapsed < LINEAR_S
    assert _zero(spec.alpha**2 - t * (1 - t))
    spec = solve_lazy(beta=t, sigma=sp.sqrt(2 - 2 * t))      # alpha^2 = 1 - t^2 - int_t^1 (2 - 2s) ds
    assert _zero(spec.alpha**2 - 2 * t * (1 - t))


def test_issue_9_ode_with_v_4_says_the_answer_starts_from_the_scaled_base():
    (spec, notes), elapsed = _timed(solve_lazy_with_notes, beta=t, sigma="ode", data_var=4)
    assert elapsed < LINEAR_S
    assert _zero(spec.alpha**2 - 4 * (1 - t**2))
    assert spec.data_var == 4
    note = next(n for n in notes if n.startswith("alpha_0 = sqrt(v) = 2, not 1"))
    assert "N(0, v I)" in note and "data_var = 4" in note
    assert validate(spec).kind == "standard"       # alpha_0 = sqrt(v) is a standard start for data_var v
    # with v = 1 nothing needs saying
    _, notes = solve_lazy_with_notes(beta=t, sigma="ode")
    assert not any(n.startswith("alpha_0 = sqrt(v)") for n in notes)


def test_symbolic_data_variance_is_validated_at_v_1_and_said():
    spec, notes = solve_lazy_with_notes(beta=sp.sin(pi * t / 2), sigma="ode", data_var=v)
    assert _zero(spec.alpha**2 - v * sp.cos(pi * t / 2) ** 2)
    assert "validated at v = 1 (the data variance is symbolic)" in notes
    assert any(n.startswith("alpha_0 = sqrt(v), not 1 (unless v = 1)") for n in notes)


# --- alpha and the diffusion fixed ----------------------------------------------------------------------

def test_issue_13_point_mass_alpha_with_optimal_gives_beta_t():
    spec, elapsed = _timed(solve_lazy, alpha=sp.sqrt(t * (1 - t)), sigma="optimal")
    assert elapsed < LINEAR_S
    assert spec.beta == t
    assert _zero(zero_drift_residual(spec))
    # every valid branch: 1 - t (from the other sign of 2t - 1) fails the boundary values
    branches = solve_lazy_branches(alpha=sp.sqrt(t * (1 - t)), sigma="optimal")
    assert [b.beta for b in branches] == [t]


def test_optimal_branch_switch_through_a_trigonometric_square_root():
    spec, elapsed = _timed(solve_lazy, alpha=sp.sin(pi * t) / 2, sigma="optimal")
    assert elapsed < 2 * LINEAR_S
    assert _zero(spec.beta - sp.sin(pi * t / 2) ** 2)


def test_issue_9_alpha_one_minus_t_with_optimal_is_refused_quickly_with_the_value():
    with pytest.raises(SpecError) as info:
        _timed(solve_lazy, alpha=1 - t, sigma="optimal")
    message = str(info.value)
    assert "no real beta" in message
    assert "v beta^2 - (v + alpha_1^2) beta + alpha^2 = 0" in message
    assert "1 - 4*(1 - t)**2 = -3 at t = 0" in message
    start = time.process_time()
    with pytest.raises(SpecError):
        solve_lazy(alpha=1 - t, sigma="optimal")
    assert time.process_time() - start < REFUSAL_S


def test_alpha_fixed_ode_and_sigma_are_linear_in_beta_squared():
    spec, elapsed = _timed(solve_lazy, alpha=sp.sqrt(1 - t**2), sigma="ode")
    assert elapsed < LINEAR_S and spec.beta == t
    spec = solve_lazy(alpha=sp.cos(pi * t / 2), sigma="ode")
    assert _zero(spec.beta - sp.sin(pi * t / 2))
    spec = solve_lazy(alpha=sp.sqrt(t * (1 - t)), sigma=sp.Integer(1))     # beta^2 = t^2
    assert spec.beta == t


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(alpha=1 - t, beta=t), ["lazy diffusion would be negative", "= -1.998 at t = 0.0005"]),
    (dict(beta=t, sigma=2 * sp.sqrt(t)), ["alpha^2 would be negative", "alpha^2 = t**2 - 1 = -1 at t = 0.0005"]),
    (dict(alpha=1 - t, sigma=sp.Integer(1)), ["beta^2 would be negative", "at t = 0.0005"]),
    (dict(alpha=sp.sqrt(1 - t), sigma="ode", data_var=4), ["no beta satisfies the conditions", "beta_0 ="]),
    (dict(beta=t, sigma="ode", data_var=-1), ["data_var must be positive", "-1"]),
    (dict(beta=t, sigma="ode", data_var=0), ["data_var must be positive"]),
    (dict(beta=t, sigma="ode", data_var="__import__('os')"), ["data_var"]),
    (dict(beta=t, sigma="lazy"), ["sigma must be 'ode', 'optimal' or an expression"]),
    (dict(beta=1 / (1 - t), sigma="ode"), ["beta has no finite limit at t = 1"]),
])
def test_refusals_name_the_condition_and_the_value(kwargs, fragments):
    start = time.process_time()
    with pytest.raises(SpecError) as info:
        solve_lazy(**kwargs)
    assert time.process_time() - start < LINEAR_S
    for fragment in fragments:
        assert fragment in str(info.value)


def test_data_var_text_is_parsed_safely():
    spec = solve_lazy(beta=t, sigma="optimal", data_var="4")
    assert spec.data_var == 4


def test_verification_falls_back_to_the_grid_when_sympy_cannot_simplify(monkeypatch):
    from lazyflow.derive.schedule import ScheduleSpec

    spec = ScheduleSpec("lazy", sp.sin(pi * t), sp.sin(pi * t / 2) ** 2, "optimal", None, sp.Integer(4))
    assert lazy_module._verify_zero_drift(spec).startswith("zero drift verified symbolically")
    monkeypatch.setattr(lazy_module, "simplify", lambda expr: expr)     # as if SymPy could not decide
    assert lazy_module._verify_zero_drift(spec).startswith("zero drift verified numerically")


def test_a_wrong_candidate_is_caught_by_substitution():
    from lazyflow.derive.schedule import ScheduleSpec

    wrong = ScheduleSpec("wrong", sp.sqrt(t * (1 - t)), t, "optimal", None, sp.Integer(2))   # lazy only for v = 1
    with pytest.raises(SpecError, match="the zero-drift check fails"):
        lazy_module._verify_zero_drift(wrong)


# --- time limits off the main thread ----------------------------------------------------------------------

def _in_thread(fn, *args, **kwargs):
    """Run fn in a worker thread; return (result or exception, seconds)."""
    box = {}

    def target():
        start = time.perf_counter()
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001
            box["result"] = err
        box["elapsed"] = time.perf_counter() - start

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the worker thread did not end"
    return box["result"], box["elapsed"]


# a child process must start (import SymPy) before the limit counts: allow for it on a slow machine
START_MARGIN_S = 20.0


def test_time_limit_bounds_a_slow_call_from_a_worker_thread():
    result, elapsed = _in_thread(call_with_time_limit, 1.0, time.sleep, 60)
    assert isinstance(result, TimeLimit), result
    assert elapsed < 1.0 + START_MARGIN_S


def test_results_and_exceptions_come_back_from_the_child_process():
    assert run_in_process(10, sp.integrate, t**2, t) == t**3 / 3
    with pytest.raises(SpecError, match="data_var must be positive"):
        run_in_process(10, solve_lazy, beta=t, sigma="ode", data_var=-1)


def test_solve_lazy_from_a_worker_thread_gives_the_same_answer():
    result, elapsed = _in_thread(solve_lazy, alpha=sp.sqrt(t * (1 - t)), sigma="optimal")
    assert not isinstance(result, BaseException), result
    assert result.beta == t
    assert elapsed < LINEAR_S + START_MARGIN_S


_SLOW_SIGMA = sp.sqrt(sp.exp(sp.tan(t)) * sp.log(1 + t**2) * sp.atan(t))   # SymPy integrates sigma^2 for minutes


def test_solve_lazy_from_a_worker_thread_is_bounded(monkeypatch):
    monkeypatch.setattr(lazy_module, "SYMPY_SECONDS", 2.0)
    result, elapsed = _in_thread(solve_lazy, beta=t, sigma=_SLOW_SIGMA)
    assert isinstance(result, SpecError), result
    assert "integrate gave up after 2.0 s" in str(result)
    assert elapsed < 2.0 + START_MARGIN_S


def test_solve_lazy_on_the_main_thread_is_bounded(monkeypatch):
    monkeypatch.setattr(lazy_module, "SYMPY_SECONDS", 1.0)
    start = time.perf_counter()
    with pytest.raises(SpecError, match="integrate gave up after 1.0 s"):
        solve_lazy(beta=t, sigma=_SLOW_SIGMA)
    assert time.perf_counter() - start < 1.0 + 10.0


def test_signal_limits_nest_and_rearm_the_outer_one():
    start = time.perf_counter()
    with pytest.raises(TimeLimit):
        with time_limit(1.0):
            with time_limit(10.0):      # the outer limit, sooner, still applies
                time.sleep(5)
    assert time.perf_counter() - start < 3.0
    start = time.perf_counter()
    with pytest.raises(TimeLimit):
        with time_limit(1.0):
            with time_limit(0.2):
                pass                    # the inner one ends; the outer one is re-armed
            time.sleep(5)
    assert time.perf_counter() - start < 3.0


def test_signal_limit_that_fires_in_a_weakref_callback_is_not_lost(monkeypatch):
    """The alarm may fire inside a weakref callback, where Python cannot raise it (it reports it as
    unraisable and goes on): the limit must still stop the guarded block, and report nothing."""
    import sys
    import weakref

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    class Thing:
        pass

    def slow_callback(ref):
        time.sleep(0.3)             # the 0.1 s alarm fires in here

    start = time.perf_counter()
    with pytest.raises(TimeLimit):
        with time_limit(0.1):
            thing = Thing()
            ref = weakref.ref(thing, slow_callback)
            del thing               # runs slow_callback
            time.sleep(3)
    assert time.perf_counter() - start < 1.5 and ref() is None
    assert reported == []
