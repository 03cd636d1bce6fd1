"""Validation of a schedule: boundary values, alpha > 0 and beta > 0 on the whole open interval,
monotone snr, a real non-negative diffusion, finite expressions on (0, 1).  Each failure raises
:class:`SpecError` with the reason (derive/MATH.md §9).

The work is bounded: ``validate`` has a budget of VALIDATE_SECONDS (after the derivation, which has its
own, formulas.DERIVE_SECONDS), and every SymPy call that can run away (simplify, limit, solve, a
high-precision evaluation) runs under a step limit inside it.  A user expression is never handed to
``nsimplify`` or mpmath's ``identify``.  Numeric checks are vectorised (numpy, with ``erf``/``erfc``
vectorised from :mod:`math` and :mod:`mpmath`, no new dependency); a value that overflows or underflows
in float64 is re-evaluated with mpmath, whose exponent range is unbounded, and the log snr is taken as
log(beta) - log(alpha) with the logarithms expanded, so that a valid schedule whose alpha or snr leaves
the float64 range (score-vp with beta_max = 2000, alpha = exp(-t/(1-t))) is not refused for overflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np
import sympy as sp

from ..errors import SpecError
from .formulas import GaveUp, bounded, derive, run_budgeted
from .limits import TimeLimit
from .schedule import ScheduleSpec
from .symbols import t

__all__ = ["Validation", "validate", "boundary_value", "evaluate_on_grid", "GRID_POINTS", "VALIDATE_SECONDS",
           "LIMIT_SECONDS", "PROOF_SECONDS", "ROOTS_SECONDS", "EVALF_SECONDS", "MPMATH_POINTS"]

GRID_POINTS = 4001
#: budget of one validate() after the derivation (seconds on 2 CPU cores); beyond it: GaveUp
VALIDATE_SECONDS = 10.0
#: one symbolic one-sided limit at t = 0 or t = 1 (then a numeric estimate)
LIMIT_SECONDS = 3.0
#: one attempt at a symbolic proof (positivity of alpha, beta, (log snr)') before the grid check
PROOF_SECONDS = 2.0
#: one search for the real roots of alpha or beta (sp.solve)
ROOTS_SECONDS = 2.0
#: one high-precision evaluation of a boundary value
EVALF_SECONDS = 2.0
#: at most this many grid points are re-evaluated with mpmath where float64 overflows
MPMATH_POINTS = 4000
_u = sp.Symbol("u", positive=True)
_DPS = 30


@dataclass(frozen=True)
class Validation:
    """What validation found: the kind of schedule and how each property was shown."""

    kind: str                 # "standard" or "pointmass"
    snr_monotone: str         # "proved symbolically" or "checked on a grid of N points"
    notes: tuple[str, ...] = ()
    #: alpha > 0 and beta > 0 on (0, 1): "proved symbolically" or "checked on a grid of N points and at
    #: the K real roots SymPy found in (0, 1)"
    positive: str = ""


# --- numbers ------------------------------------------------------------------------------------

def _vector(real_fn, mp_fn):
    """A numpy-vectorised special function: ``real_fn`` (math) on real input, mpmath elsewhere."""
    real_v = np.vectorize(real_fn, otypes=[float])
    mp_v = np.vectorize(lambda z: complex(mp_fn(mpmath.mpc(z.real, z.imag))), otypes=[complex])

    def fn(z):
        z = np.asarray(z)
        if not np.iscomplexobj(z):
            return real_v(z)
        if np.all(z.imag == 0):
            with np.errstate(all="ignore"):
                return real_v(z.real).astype(complex)
        return mp_v(z)
    return fn


#: functions numpy lacks (lambdify would bind scalar math.erf, which fails on arrays)
_NUMPY_EXTRA = {"erf": _vector(math.erf, mpmath.erf), "erfc": _vector(math.erfc, mpmath.erfc)}


def _numpy_fn(expr: sp.Expr):
    return sp.lambdify(t, expr, modules=[_NUMPY_EXTRA, "numpy"])


def evaluate_on_grid(expr: sp.Expr, grid: np.ndarray) -> np.ndarray:
    """``expr`` (in t) at every grid point, as complex numbers so that a non-real value shows as such.

    Vectorised (numpy); where float64 overflows or underflows to a non-finite value, the point is
    re-evaluated with mpmath (up to MPMATH_POINTS of them): a value beyond the float64 range then shows
    as an infinite complex number only if it is one (or exceeds ~1e308), never as NaN from inf/inf."""
    grid = np.asarray(grid, dtype=float)
    with np.errstate(all="ignore"):
        try:
            values = np.asarray(_numpy_fn(expr)(grid.astype(complex)), dtype=complex) * np.ones_like(grid)
        except (TypeError, ValueError, AttributeError, NameError, ZeroDivisionError, OverflowError):
            values = np.full(grid.shape, complex(np.nan, np.nan))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        _refine_with_mpmath(expr, grid, values, bad)
    return values


def _refine_with_mpmath(expr: sp.Expr, grid: np.ndarray, values: np.ndarray, where: np.ndarray,
                        zeros_too: bool = False) -> None:
    """Re-evaluate ``values[where]`` with mpmath (in place); a point mpmath cannot evaluate becomes NaN."""
    if where.size > MPMATH_POINTS:
        where = where[np.linspace(0, where.size - 1, MPMATH_POINTS).astype(int)]
    fn = sp.lambdify(t, expr, modules="mpmath")
    with mpmath.workdps(_DPS):
        for i in where:
            try:
                value = fn(mpmath.mpf(float(grid[i])))
                values[i] = _mp_to_complex(value)
            except (TypeError, ValueError, ZeroDivisionError, OverflowError, ArithmeticError):
                values[i] = complex(np.nan, np.nan)


def _mp_to_complex(value) -> complex:
    """An mpmath number as a complex: NaN and infinities as they are; a finite value beyond the float64
    range as +-1e308 and a non-zero one below it as +-5e-324 (sign and finiteness are what matter)."""
    value = mpmath.mpmathify(value)
    return complex(_mp_part(mpmath.re(value)), _mp_part(mpmath.im(value)))


def _mp_part(x) -> float:
    if mpmath.isnan(x):
        return math.nan
    sign = 1.0 if x > 0 else -1.0
    if mpmath.isinf(x):
        return sign * math.inf
    try:
        value = float(x)
    except OverflowError:
        value = sign * math.inf
    if math.isinf(value):
        return sign * 1e308
    if value == 0 and x != 0:
        return sign * 5e-324
    return value


def _finite(expr: sp.Expr, grid: np.ndarray, label: str) -> np.ndarray:
    values = evaluate_on_grid(expr, grid)
    bad = ~np.isfinite(values)
    if bad.any():
        raise SpecError(f"{label} = {_short(expr)} is not finite at t = {grid[bad][0]:.6g} inside (0, 1)")
    return values


def _short(expr: sp.Expr, limit: int = 200) -> str:
    text = sp.sstr(expr)
    return text if len(text) <= limit else text[:limit] + "..."


# --- boundary values ----------------------------------------------------------------------------

def _is_number_finite(value: sp.Expr) -> bool | None:
    """True/False when the number is (not) finite, None when that cannot be decided within EVALF_SECONDS."""
    if value.has(sp.nan, sp.zoo, sp.oo, -sp.oo, sp.AccumBounds):
        return False
    if not value.is_number:
        return None
    try:
        with bounded(EVALF_SECONDS):
            numeric = value.evalf(_DPS)
    except TimeLimit:
        return None
    except GaveUp:
        raise
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        return None
    if numeric.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        return False
    re, im = numeric.as_real_imag()
    return bool(re.is_finite and im.is_finite) if (re.is_Number and im.is_Number) else None


def boundary_value(expr: sp.Expr, at: int) -> sp.Expr:
    """The one-sided limit of ``expr`` as t -> 0+ (at=0) or t -> 1- (at=1), with bounded work.

    Direct substitution where that gives a finite number; else ``sp.limit`` within LIMIT_SECONDS; else a
    numeric one-sided estimate with mpmath (t = at +- 10^-k), rounded to an integer within 1e-10.  The
    result may be infinite (+-oo, zoo) for a divergent expression; :class:`SpecError` when it cannot be
    decided (no limit, oscillation, or every attempt ran out of time)."""
    direct = expr.subs(t, at)
    if direct.free_symbols:
        return direct
    finite = _is_number_finite(direct)
    if finite:
        return direct
    side = "+" if at == 0 else "-"
    reason = ""
    try:
        with bounded(LIMIT_SECONDS):
            value = sp.limit(expr, t, at, side)
        if isinstance(value, sp.Limit) or value.has(sp.Limit):
            reason = "SymPy's limit did not evaluate"
        elif value.has(sp.AccumBounds):
            raise SpecError(f"{_short(expr)} has no limit as t -> {at}{side} (it oscillates within {value})")
        elif value.has(sp.nan):
            reason = "SymPy's limit is undefined"
        else:
            return value
    except TimeLimit:
        reason = f"SymPy's limit gave up after {LIMIT_SECONDS:g} s"
    except GaveUp:
        raise
    except SpecError:
        raise
    except (NotImplementedError, ValueError, TypeError, ArithmeticError, RecursionError) as err:
        reason = f"SymPy's limit failed ({type(err).__name__})"
    estimate = _numeric_limit(expr, at)
    if estimate is None:
        raise SpecError(f"cannot decide the value of {_short(expr)} as t -> {at}{side} ({reason}; a numeric "
                        "one-sided estimate does not settle)")
    return estimate


def _numeric_limit(expr: sp.Expr, at: int) -> sp.Expr | None:
    """mpmath values at t = at +- 10^-k (k = 4, 6, ..., 20): a settled real value, +-oo for a steadily
    growing one, else None."""
    fn = sp.lambdify(t, expr, modules="mpmath")
    values = []
    try:
        with bounded(EVALF_SECONDS), mpmath.workdps(40):
            for k in range(4, 21, 2):
                h = mpmath.mpf(10) ** -k
                values.append(mpmath.mpmathify(fn(h if at == 0 else 1 - h)))
    except TimeLimit:
        return None
    except GaveUp:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, ArithmeticError):
        return None
    if any(mpmath.isnan(abs(x)) for x in values) or any(abs(mpmath.im(x)) > 1e-12 * (1 + abs(x)) for x in values):
        return None
    real = [mpmath.re(x) for x in values]
    if all(mpmath.isinf(x) for x in real[-3:]) or (
            all(abs(b) > 10 * abs(a) for a, b in zip(real[-4:], real[-3:])) and abs(real[-1]) > 1e12):
        return sp.oo if real[-1] > 0 else -sp.oo
    steps = [abs(b - a) for a, b in zip(real, real[1:])]
    if steps[-1] <= 1e-12 * (1 + abs(real[-1])) and steps[-1] <= steps[-2]:
        value = float(real[-1])
        if abs(value - round(value)) <= 1e-10:
            return sp.Integer(round(value))
        return sp.Float(value, 15)
    return None


def _close(value: sp.Expr, target: sp.Expr, tol: float) -> bool:
    """|value - target| <= tol (at least 1e-20: exact up to a 30-digit evaluation), bounded work."""
    diff = value - target
    if diff == 0:
        return True
    if diff.free_symbols or diff.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        return False
    try:
        with bounded(EVALF_SECONDS):
            numeric = complex(diff.evalf(_DPS))
    except TimeLimit:
        return False
    except GaveUp:
        raise
    except (TypeError, ValueError, ArithmeticError, OverflowError, RecursionError):
        return False
    return abs(numeric) <= max(tol, 1e-20)


def _boundary_values(f, spec: ScheduleSpec) -> tuple[sp.Expr, sp.Expr, sp.Expr, sp.Expr]:
    """alpha_0, beta_0, alpha_1, beta_1; refused when one is not finite or not real."""
    found = []
    for label, expr, at in (("alpha", f.alpha, 0), ("beta", f.beta, 0), ("alpha", f.alpha, 1), ("beta", f.beta, 1)):
        side = "+" if at == 0 else "-"
        try:
            value = boundary_value(expr, at)
        except GaveUp:
            raise
        except SpecError as err:
            raise SpecError(f"schedule {spec.name!r}: boundary value {label}_{at}: {err}") from None
        if _is_number_finite(value) is False:
            raise SpecError(f"schedule {spec.name!r}: {label} = {_short(expr)} is not finite as t -> {at}{side} "
                            f"(it tends to {value}); boundary values must be finite")
        if value.is_number:
            try:
                with bounded(EVALF_SECONDS):
                    imag = abs(complex(value.evalf(_DPS)).imag)
            except TimeLimit:
                imag = 0.0
            except (TypeError, ValueError, OverflowError):
                imag = 0.0
            if imag > 1e-12:
                raise SpecError(f"schedule {spec.name!r}: {label}_{at} = {_short(value)} is not real")
        found.append(value)
    return tuple(found)


# --- validation ---------------------------------------------------------------------------------

def validate(spec: ScheduleSpec) -> Validation:
    """Check ``spec``; return a :class:`Validation` or raise :class:`SpecError` naming the problem.

    A spec with parameters is checked at their values (:meth:`ScheduleSpec.substituted`).  Bounded:
    the derivation within formulas.DERIVE_SECONDS, the checks within VALIDATE_SECONDS (else
    :class:`formulas.GaveUp`, a SpecError saying "gave up after N s").
    """
    spec = spec.substituted()
    derive(spec)
    return run_budgeted(VALIDATE_SECONDS, f"validating {spec.name!r}", _validate, spec)


def _validate(spec: ScheduleSpec) -> Validation:
    f = derive(spec)
    notes: list[str] = []
    free = (f.alpha.free_symbols | f.beta.free_symbols) - {t}
    if free:
        raise SpecError(f"schedule depends on unknown symbols {sorted(map(str, free))}")
    data_var = sp.sympify(spec.data_var)
    if data_var.free_symbols or not (data_var.is_positive and data_var.is_finite):
        raise SpecError(f"schedule {spec.name!r}: the data variance must be a positive number, got {data_var}")
    tol = spec.boundary_tol
    a0, b0, a1, b1 = _boundary_values(f, spec)
    base = sp.sqrt(data_var)
    if _close(a0, 0, 0) and _close(b0, 0, 0):
        kind = "pointmass"
        snr0 = boundary_value(f.snr, 0)
        if not _close(snr0, 0, 0):
            raise SpecError(f"point-mass schedule {spec.name!r}: snr -> {snr0} as t -> 0, must tend to 0")
    elif (_close(a0, 1, tol) or _close(a0, base, tol)) and _close(b0, 0, tol):
        kind = "standard"
        if not ((_close(a0, 1, 0) or _close(a0, base, 0)) and _close(b0, 0, 0)):
            notes.append(f"alpha_0 = {sp.N(a0, 4)}, beta_0 = {sp.N(b0, 4)} are within the declared tolerance "
                         f"{tol}; sampling starts from N(0, alpha_0^2 I) as an approximation")
    else:
        want = "1" if base == 1 else f"1 or sqrt(v) = sqrt({data_var})"
        raise SpecError(f"schedule {spec.name!r}: boundary values at t = 0 are alpha_0 = {a0}, beta_0 = {b0}; "
                        f"need alpha_0 = {want}, beta_0 = 0 (standard) or alpha_0 = beta_0 = 0 (point mass)")
    if not (_close(a1, 0, tol) and _close(b1, 1, tol)):
        raise SpecError(f"schedule {spec.name!r}: boundary values at t = 1 are alpha_1 = {a1}, beta_1 = {b1}; "
                        "need alpha_1 = 0, beta_1 = 1")
    grid = np.linspace(0, 1, GRID_POINTS)[1:-1]
    proofs = [_check_positive(spec, label, expr, grid) for label, expr in (("alpha", f.alpha), ("beta", f.beta))]
    if all(how is None for how in proofs):
        positive = "proved symbolically"
    else:
        details = "; ".join(how or f"{label} > 0 proved symbolically" for label, how in zip(("alpha", "beta"), proofs))
        positive = f"checked on a grid of {len(grid)} points ({details})"
    for label, expr in (("alpha'", f.d_alpha), ("beta'", f.d_beta), ("eps", f.eps)):
        _finite(expr, grid, label)
    monotone = _check_snr(f, grid)
    if spec.sigma is not None:
        sig = _finite(spec.sigma, grid, "sigma")
        bad = (np.abs(sig.imag) > 1e-12) | (sig.real < 0)
        if bad.any():
            raise SpecError(f"diffusion of {spec.name!r}: sigma = {_short(spec.sigma)} is negative or not real at "
                            f"t = {grid[bad][0]:.6g}; sigma must be real and non-negative")
    eps_values = _finite(f.eps, grid, "eps")
    if (np.abs(eps_values.imag) > 1e-12).any() or (eps_values.real < -1e-12).any():
        where = grid[(np.abs(eps_values.imag) > 1e-12) | (eps_values.real < -1e-12)][0]
        raise SpecError(f"diffusion of {spec.name!r}: eps = sigma^2/2 = {_short(f.eps)} is negative or not real "
                        f"at t = {where:.6g}; sigma must be real and non-negative")
    return Validation(kind, monotone, tuple(notes), positive)


def _proved_positive(expr: sp.Expr) -> bool:
    """SymPy proves expr > 0 for t in (0, 1), through t = u/(1+u) with u > 0 (within PROOF_SECONDS)."""
    try:
        with bounded(PROOF_SECONDS):
            on_half_line = expr.subs(t, _u / (1 + _u))
            if on_half_line.is_positive:
                return True
            if sp.factor(sp.together(on_half_line)).is_positive:
                return True
            return bool(sp.simplify(on_half_line).is_positive)
    except TimeLimit:
        return False
    except GaveUp:
        raise
    except Exception:  # noqa: BLE001 - any SymPy failure means "not proved": the grid check follows
        return False


def _roots_inside(expr: sp.Expr) -> tuple[list[float], int | None]:
    """The real roots of ``expr`` in (0, 1) that SymPy finds within ROOTS_SECONDS (checked numerically),
    and how many roots SymPy returned in all (None: it could not solve)."""
    try:
        with bounded(ROOTS_SECONDS):
            roots = sp.solve(expr, t, check=False, simplify=False)
    except TimeLimit:
        return [], None
    except GaveUp:
        raise
    except Exception:  # noqa: BLE001 - NotImplementedError and friends: no roots found
        return [], None
    fn = sp.lambdify(t, expr, modules="mpmath")
    inside = []
    for root in roots:
        try:
            with bounded(EVALF_SECONDS):
                value = complex(sp.N(root, _DPS))
        except TimeLimit:
            continue
        except GaveUp:
            raise
        except Exception:  # noqa: BLE001 - a root that does not evaluate to a number is skipped
            continue
        if abs(value.imag) > 1e-12 or not 0 < value.real < 1:
            continue
        try:
            with mpmath.workdps(_DPS):
                residual = abs(fn(mpmath.mpf(value.real)))
        except Exception:  # noqa: BLE001
            continue
        if residual <= 1e-9:
            inside.append(value.real)
    return sorted(inside), len(roots)


def _check_positive(spec: ScheduleSpec, label: str, expr: sp.Expr, grid: np.ndarray) -> str | None:
    """alpha (or beta) real and > 0 on (0, 1): None when proved symbolically; else checked on the dense
    grid (a sign change is located by bisection) and, where the grid values have an interior local minimum
    (where a zero could hide between grid points), at the real roots SymPy finds in (0, 1) and at the
    minimum found numerically (mpmath); returns a phrase saying what was done."""
    values = evaluate_on_grid(expr, grid)
    bad = ~np.isfinite(values)
    if bad.any():
        raise SpecError(f"{label} = {_short(expr)} is not finite at t = {grid[bad][0]:.6g} inside (0, 1)")
    complex_at = np.abs(values.imag) > 1e-12 * np.maximum(1.0, np.abs(values.real))
    if complex_at.any():
        raise SpecError(f"{label} = {_short(expr)} is not real at t = {grid[complex_at][0]:.6g}")
    if _proved_positive(expr):
        return None
    real = values.real.copy()
    zero = np.flatnonzero(real == 0)
    if zero.size:        # underflow in float64? look again with mpmath
        again = values.copy()
        _refine_with_mpmath(expr, grid, again, zero)
        real[zero] = again.real[zero]
    refuse = (f"schedule {spec.name!r}: {label} = {_short(expr)} {{}}; alpha and beta must be positive on the "
              "whole open interval (0, 1)")
    fn = sp.lambdify(t, expr, modules="mpmath")
    bad = np.flatnonzero(real <= 0)
    if bad.size:
        i = bad[0]
        where = _sign_change(fn, grid[i - 1], grid[i]) if i > 0 else None
        if where is not None:
            raise SpecError(refuse.format(f"changes sign at t = {where:.6g} (it is {real[i]:.3g} at "
                                          f"t = {grid[i]:.6g})"))
        raise SpecError(refuse.format(f"is {'negative' if real[i] < 0 else 'zero'} at t = {grid[i]:.6g}"))
    scale = float(np.max(np.abs(real)))
    mid, left, right = real[1:-1], real[:-2], real[2:]
    # interior local minima (not plateaus) low enough that a zero could hide next to them
    inner = np.flatnonzero((mid <= left) & (mid <= right) & ((mid < left) | (mid < right)) & (mid < 1e-3 * scale)) + 1
    if not inner.size:
        return f"{label}: no low interior minimum on the grid where it could touch 0"
    roots, found = _roots_inside(expr)
    if roots:
        raise SpecError(refuse.format(f"vanishes at t = {roots[0]:.6g}"))
    for i in inner[:20]:
        where, lowest = _minimum(fn, grid[i - 1], grid[i + 1])
        if lowest is not None and lowest <= 1e-20 * scale:
            raise SpecError(refuse.format(f"vanishes at t = {where:.6g} (its minimum there is {lowest:.3g})"))
    solved = (f"SymPy could not solve {label} = 0" if found is None
              else f"none of the {found} real roots SymPy found lies in (0, 1)")
    return f"{label}: {solved}; its {len(inner)} low interior minima on the grid are positive (mpmath)"


def _sign_change(fn, lo: float, hi: float) -> float | None:
    """Bisection (mpmath) for the point in [lo, hi] where fn goes from positive to non-positive."""
    try:
        with bounded(EVALF_SECONDS), mpmath.workdps(_DPS):
            a, b = mpmath.mpf(lo), mpmath.mpf(hi)
            if not mpmath.re(fn(a)) > 0:
                return None
            for _ in range(60):
                mid = (a + b) / 2
                if mpmath.re(fn(mid)) > 0:
                    a = mid
                else:
                    b = mid
            return float(b)
    except TimeLimit:
        return None
    except GaveUp:
        raise
    except Exception:  # noqa: BLE001 - the grid point is reported instead
        return None


def _minimum(fn, lo: float, hi: float) -> tuple[float, float | None]:
    """Golden-section search (mpmath, 40 digits) for the minimum of fn on [lo, hi]."""
    try:
        with bounded(EVALF_SECONDS), mpmath.workdps(40):
            a, b = mpmath.mpf(lo), mpmath.mpf(hi)
            ratio = (mpmath.sqrt(5) - 1) / 2
            c, d = b - ratio * (b - a), a + ratio * (b - a)
            fc, fd = mpmath.re(fn(c)), mpmath.re(fn(d))
            for _ in range(80):
                if fc <= fd:
                    b, d, fd = d, c, fc
                    c = b - ratio * (b - a)
                    fc = mpmath.re(fn(c))
                else:
                    a, c, fc = c, d, fd
                    d = a + ratio * (b - a)
                    fd = mpmath.re(fn(d))
            where, lowest = (c, fc) if fc <= fd else (d, fd)
            return float(where), float(lowest)
    except TimeLimit:
        return (lo + hi) / 2, None
    except GaveUp:
        raise
    except Exception:  # noqa: BLE001 - no numeric minimum: the grid and the roots decide
        return (lo + hi) / 2, None


def _log_snr_values(f, grid: np.ndarray) -> np.ndarray:
    """log snr on the grid as log(beta) - log(alpha) with the logarithms expanded (no overflow where a
    product or power of exponentials leaves float64), re-evaluated with mpmath where still not finite."""
    forms = []
    try:
        with bounded(PROOF_SECONDS):
            log_beta = sp.expand_log(sp.log(f.beta), force=True)
            log_alpha = sp.expand_log(sp.log(f.alpha), force=True)
            forms.append(log_beta - log_alpha)
    except TimeLimit:
        pass
    except GaveUp:
        raise
    except Exception:  # noqa: BLE001 - the derived log snr is used instead
        pass
    forms.append(f.log_snr)
    values = None
    for form in forms:
        # real part: log|alpha| and log|beta|, so that log(-x) = log x + i pi from a forced split cancels
        with np.errstate(all="ignore"):
            values = evaluate_on_grid(form, grid).real
        if np.isfinite(values).all():
            return values
    return values


def _check_snr(f, grid: np.ndarray) -> str:
    """Prove (log snr)' > 0 on (0, 1) through t = u/(1+u), u > 0; else check a dense grid (in log space)."""
    derivative = sp.diff(f.log_snr, t)
    try:
        with bounded(PROOF_SECONDS):
            on_half_line = sp.simplify(derivative.subs(t, _u / (1 + _u)))
            if on_half_line.is_positive:
                return "proved symbolically"
    except TimeLimit:
        pass
    except GaveUp:
        raise
    except Exception:  # noqa: BLE001 - any SymPy failure falls back to the grid check
        pass
    values = _log_snr_values(f, grid)
    bad = ~np.isfinite(values)
    if bad.any():
        raise SpecError(f"log snr = {_short(f.log_snr)} is not finite at t = {grid[bad][0]:.6g} inside (0, 1)")
    steps = np.diff(values)
    if (steps <= 0).any():
        where = grid[1:][steps <= 0][0]
        raise SpecError(f"signal-to-noise ratio beta/alpha is not strictly increasing: it stops increasing near t = {where:.6g}")
    return f"checked on a grid of {len(grid)} points"
