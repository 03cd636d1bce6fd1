"""The lazy (zero-drift) condition and its solver (derive/MATH.md §4).

For data N(0, v I), eta_X = v beta x / r with r = alpha^2 + v beta^2, and the drift is
b^eps = (r'/2 - eps) / r * x.  It vanishes iff eps = r'/2.  Fix any two of alpha, beta and
sigma (eps = sigma^2/2, or the optimal eps* = alpha^2 beta'/beta - alpha alpha') and this
module solves the condition for the third, boundary conditions applied.  Every case is solved
in closed form, without dsolve (u = alpha^2, u_1 = alpha_1^2, beta_1 = 1, S = int sigma^2 dt):

- alpha and beta fixed:  sigma^2 = r'.
- beta and the diffusion fixed, a linear first-order ODE in u with u(1) = 0:
  ODE      u' = -v (beta^2)'             ->  u = v (beta_1^2 - beta^2)
  optimal  (u/beta)' = -v beta'          ->  u = v beta (beta_1 - beta)
  sigma    u' = sigma^2 - v (beta^2)'    ->  u = v (beta_1^2 - beta^2) - (S(1) - S(t))
- alpha and the diffusion fixed, beta(1) = 1:
  ODE      (u + v beta^2)' = 0           ->  beta^2 = 1 + (u_1 - u)/v
  sigma    (u + v beta^2)' = sigma^2     ->  beta^2 = 1 + (u_1 - u)/v - (S(1) - S(t))/v
  optimal  (u/beta)' = -v beta'          ->  v beta^2 - (v + u_1) beta + u = 0,
           beta = (v + u_1 +- g)/(2v) with g^2 = D = (v + u_1)^2 - 4 v u.  A point-mass answer must
           go from the root with -g to the one with +g where D = 0, which is smooth only through a
           smooth square root g of D: every candidate square root is tried, |h| written by SymPy is
           split into +h and -h (the piecewise solution switches branch at the root of h).

Every candidate (one per branch) is validated and checked by substitution (eps - r'/2 = 0,
symbolically or else numerically on a dense grid) before it is returned; the valid ones are kept
in order and the first is chosen.  SymPy calls that can run away (limit, integrate, simplify,
validation) are bounded with :func:`limits.call_with_time_limit`, which works from any thread.

Data N(mu, v I) with a mean (``data_mean``, derive/MATH.md §10): the drift is
b^eps = beta' mu + (r'/2 - eps)/r (x - beta mu), zero in the centred variable w = x - beta mu under the
same condition eps = r'/2, so the schedule is the one for mean 0; the notes say so, and the centred drift
is checked by substitution (:func:`gaussian_frame.centred_drift` simplifies to 0).
"""
from __future__ import annotations

import itertools

import numpy as np
import sympy as sp

from ..errors import SpecError
from .formulas import derive, simplify
from .gaussian_frame import centred_drift, data_mean_value
from .limits import TimeLimit, call_with_time_limit
from .parse import as_expression, parse_expression
from .schedule import ScheduleSpec
from .symbols import t, v as v_symbol, w
from .validate import Validation, evaluate_on_grid, validate

__all__ = ["solve_lazy", "solve_lazy_with_notes", "solve_lazy_branches", "zero_drift_residual",
           "SYMPY_SECONDS", "SIMPLIFY_SECONDS", "VALIDATE_SECONDS", "DSOLVE_SECONDS", "RESIDUAL_GRID",
           "RESIDUAL_TOL"]

#: limit of one bounded SymPy call (limit, integrate)
SYMPY_SECONDS = 10.0
#: limit of one simplification (on expiry the unsimplified expression is kept)
SIMPLIFY_SECONDS = 3.0
#: limit of validating and verifying one candidate
VALIDATE_SECONDS = 20.0
#: kept for callers of the old name (dsolve is no longer used: every case has a closed form)
DSOLVE_SECONDS = SYMPY_SECONDS
#: interior points of the numerical zero-drift check, and its relative tolerance
RESIDUAL_GRID = 2001
RESIDUAL_TOL = 1e-8
#: at most this many |.| in one candidate are split into both signs (2**k variants)
_MAX_ABS_SPLITS = 3


def zero_drift_residual(spec: ScheduleSpec) -> sp.Expr:
    """eps - r'/2 for the spec's own diffusion and data variance; zero iff the schedule is lazy."""
    f = derive(spec)
    return simplify(f.eps - sp.diff(f.alpha**2 + spec.data_var * f.beta**2, t) / 2)


def solve_lazy(alpha: sp.Expr | None = None, beta: sp.Expr | None = None, sigma: str | sp.Expr | None = None,
               *, data_var: sp.Expr | int | str = sp.Integer(1), name: str = "lazy",
               data_mean: sp.Expr | float | None = None) -> ScheduleSpec:
    """Solve the zero-drift condition for the one of alpha, beta, sigma left as None.

    ``sigma`` is ``"ode"``, ``"optimal"``, an expression for sigma(t), or None (solve for it).
    Returns a validated :class:`ScheduleSpec` checked by substitution; refuses with
    :class:`SpecError` naming the condition that fails and its value.  The notes that go with
    the answer (which boundary it meets, other valid branches, how it was verified) come from
    :func:`solve_lazy_with_notes`.  ``data_mean`` (data N(mu, v I)) does not change the answer (§10).
    """
    return solve_lazy_with_notes(alpha, beta, sigma, data_var=data_var, name=name, data_mean=data_mean)[0]


def solve_lazy_with_notes(alpha: sp.Expr | None = None, beta: sp.Expr | None = None,
                          sigma: str | sp.Expr | None = None, *, data_var: sp.Expr | int | str = sp.Integer(1),
                          name: str = "lazy", data_mean: sp.Expr | float | None = None
                          ) -> tuple[ScheduleSpec, tuple[str, ...]]:
    """:func:`solve_lazy` and the notes to print with its answer: ``(spec, notes)``.

    ``data_mean`` (a number or a SymPy expression such as ``symbols.mu``; None or 0: mean 0) is mu of
    data N(mu, v I): the schedule is the one for mean 0, and notes say that the frame is centred,
    w = x - beta mu, with drift b^eps = beta' mu + (r'/2 - eps)/r (x - beta mu), zero in w (checked by
    substitution, derive/MATH.md §10)."""
    mean = data_mean_value(data_mean)
    solutions = _solve(alpha, beta, sigma, data_var, name)
    spec, notes = solutions[0]
    if len(solutions) > 1:
        unknown = _unknown_name(alpha, beta, sigma)
        others = "; ".join(f"{unknown} = {sp.sstr(getattr(s, unknown) if unknown != 'sigma' else s.sigma)}"
                           for s, _ in solutions[1:])
        notes = notes + (f"{len(solutions)} valid branches; chose the first, the others: {others}",)
    if mean is not None:
        notes = notes + _centred_notes(spec, mean)
    return spec, notes


def solve_lazy_branches(alpha: sp.Expr | None = None, beta: sp.Expr | None = None,
                        sigma: str | sp.Expr | None = None, *, data_var: sp.Expr | int | str = sp.Integer(1),
                        name: str = "lazy") -> tuple[ScheduleSpec, ...]:
    """Every valid branch (validated, verified by substitution), in the order :func:`solve_lazy` prefers."""
    return tuple(spec for spec, _ in _solve(alpha, beta, sigma, data_var, name))


# --- the cases --------------------------------------------------------------------------------------

def _unknown_name(alpha, beta, sigma) -> str:
    return "sigma" if sigma is None else "alpha" if alpha is None else "beta"


def _solve(alpha, beta, sigma, data_var, name) -> list[tuple[ScheduleSpec, tuple[str, ...]]]:
    given = [name_ for name_, value in (("alpha", alpha), ("beta", beta), ("sigma", sigma)) if value is not None]
    if len(given) != 2:
        raise SpecError(f"fix exactly two of alpha, beta, sigma (got {', '.join(given) or 'none'})")
    if isinstance(sigma, str) and sigma not in ("ode", "optimal"):
        raise SpecError(f"sigma must be 'ode', 'optimal' or an expression to solve against, got {sigma!r}")
    v = _data_var(data_var)
    alpha = None if alpha is None else as_expression(alpha, "alpha", "a SymPy expression in t")
    beta = None if beta is None else as_expression(beta, "beta", "a SymPy expression in t")
    if sigma is not None and not isinstance(sigma, str):
        sigma = as_expression(sigma, "sigma", "a SymPy expression in t")
    if sigma is None:
        return _solve_sigma(alpha, beta, v, name)
    if beta is not None:
        return _solve_alpha(beta, sigma, v, name)
    return _solve_beta(alpha, sigma, v, name)


def _data_var(data_var) -> sp.Expr:
    if isinstance(data_var, str):
        value = parse_expression(data_var, {}, variables={"v": v_symbol}, what="data_var")
    else:
        try:
            value = sp.sympify(data_var, strict=True)
        except (sp.SympifyError, TypeError):
            raise SpecError(f"data_var must be a number or a SymPy expression, got {data_var!r}") from None
    if value.free_symbols - {v_symbol}:
        raise SpecError(f"data_var = {value} depends on {sorted(map(str, value.free_symbols - {v_symbol}))}; "
                        "only numbers and the symbol v are allowed")
    if value.is_positive is not True or value.is_finite is not True:
        raise SpecError(f"data_var must be positive and finite (the data variance v of N(0, v I)), got {value}")
    return value


def _diffusion(sigma: str | sp.Expr) -> tuple[str, sp.Expr | None]:
    return (sigma, None) if isinstance(sigma, str) else ("sigma", sigma)


def _solve_sigma(alpha: sp.Expr, beta: sp.Expr, v: sp.Expr, name: str):
    """sigma^2 = 2 eps = r'."""
    r_prime = _simplified(sp.diff(alpha**2 + v * beta**2, t))
    _require_nonnegative(r_prime, "sigma^2 = r' = d/dt(alpha^2 + v beta^2)",
                         "the lazy diffusion would be negative: r = alpha^2 + v beta^2 decreases")
    sigma = _simplified(sp.sqrt(r_prime))
    return _keep_valid([ScheduleSpec(name, alpha, beta, "sigma", sigma, v)], "sigma",
                       f"sigma = sqrt(r') = {sp.sstr(sigma)}", ())


def _solve_alpha(beta: sp.Expr, sigma: str | sp.Expr, v: sp.Expr, name: str):
    """The unknown u = alpha^2, u(1) = 0: a linear first-order ODE solved by its closed form."""
    b1 = _edge(beta, 1, "beta")
    if sigma == "ode":
        u, how = v * (b1**2 - beta**2), "u = alpha^2 solves u' = -v (beta^2)', u(1) = 0"
    elif sigma == "optimal":
        u, how = v * beta * (b1 - beta), "u = alpha^2 solves (u/beta)' = -v beta', u(1) = 0"
    else:
        s_minus_s1 = _sigma_squared_integral(sigma)
        u, how = v * (b1**2 - beta**2) + s_minus_s1, "u = alpha^2 solves u' = sigma^2 - v (beta^2)', u(1) = 0"
    u = _simplified(u)
    _require_nonnegative(u, "alpha^2", "alpha^2 would be negative: no real alpha satisfies the condition")
    diffusion, sig = _diffusion(sigma)
    candidates = [ScheduleSpec(name, alpha, beta, diffusion, sig, v) for alpha in _square_root_branches(u)]
    notes = _scaled_base_note(u, v, sigma)
    return _keep_valid(candidates, "alpha", f"{how}: alpha^2 = {sp.sstr(u)}", notes)


def _solve_beta(alpha: sp.Expr, sigma: str | sp.Expr, v: sp.Expr, name: str):
    """The unknown beta, beta(1) = 1: linear in beta^2 (ODE, sigma) or a quadratic in beta (optimal)."""
    u = alpha**2
    u1 = _edge(u, 1, "alpha^2")
    diffusion, sig = _diffusion(sigma)
    if sigma == "optimal":
        c = v + u1
        disc = _simplified(c**2 - 4 * v * u)
        relation = ("with the optimal diffusion zero drift means (alpha^2/beta)' = -v beta', i.e. (with beta_1 = 1) "
                    "v beta^2 - (v + alpha_1^2) beta + alpha^2 = 0")
        _require_nonnegative(disc, "the discriminant (v + alpha_1^2)^2 - 4 v alpha^2",
                             f"no real beta: {relation}, whose discriminant is negative", boundary=True)
        betas = []
        for root in _smooth_square_roots(disc):
            for sign in (-1, 1):
                betas.append((c + sign * root) / (2 * v))
        candidates = [ScheduleSpec(name, alpha, b, diffusion, sig, v) for b in _unique(betas)]
        return _keep_valid(candidates, "beta", f"{relation}; discriminant {sp.sstr(disc)}", ())
    if sigma == "ode":
        f, how = 1 + (u1 - u) / v, "beta^2 = 1 + (alpha_1^2 - alpha^2)/v from (alpha^2 + v beta^2)' = 0"
    else:
        s_minus_s1 = _sigma_squared_integral(sigma)
        f, how = (1 + (u1 - u + s_minus_s1) / v,
                  "beta^2 = 1 + (alpha_1^2 - alpha^2 - int_t^1 sigma^2)/v from (alpha^2 + v beta^2)' = sigma^2")
    f = _simplified(f)
    _require_nonnegative(f, "beta^2", "beta^2 would be negative: no real beta satisfies the condition")
    candidates = [ScheduleSpec(name, alpha, b, diffusion, sig, v) for b in _square_root_branches(f)]
    return _keep_valid(candidates, "beta", f"{how}: beta^2 = {sp.sstr(f)}", ())


def _scaled_base_note(u: sp.Expr, v: sp.Expr, sigma) -> tuple[str, ...]:
    """alpha_0 = sqrt(v) != 1: say that the answer starts from N(0, v I), and why."""
    if v == 1:
        return ()
    try:
        u0 = _edge(u, 0, "alpha^2")
    except SpecError:
        return ()
    if u0 == 0 or sp.simplify(u0 - v) != 0:
        return ()
    why = ("zero drift keeps alpha^2 + v beta^2 constant, = v since alpha_1 = 0 and beta_1 = 1"
           if sigma == "ode" else "the boundary values and zero drift force alpha_0^2 = v")
    if v.free_symbols:
        start = f"alpha_0 = sqrt(v), not 1 (unless v = 1): for data N(0, v I) {why}"
    else:
        start = f"alpha_0 = sqrt(v) = {sp.sstr(sp.sqrt(v))}, not 1: for data N(0, v I) with v = {sp.sstr(v)} {why}"
    return (f"{start}, so no schedule with alpha_0 = 1 is lazy; this one starts from N(0, v I), the base scaled "
            f"to the data (derive, validate and sample it with data_var = {sp.sstr(v)})",)


# --- candidates: square roots and their branches ----------------------------------------------------

def _square_root_branches(square: sp.Expr) -> list[sp.Expr]:
    """Non-negative candidates for sqrt(square): each |h| SymPy writes is split into +h and -h
    (validation keeps the ones that stay positive), then the form with |.| itself."""
    return _smooth_square_roots(square)


def _smooth_square_roots(square: sp.Expr) -> list[sp.Expr]:
    """Square roots of ``square`` (simplified already) as it is, factored ((2t - 1)^2) and through
    Fu's trigonometric rules (1/2 - cos(2 pi t)/2 = sin(pi t)^2), with every |h| split into +h and -h."""
    forms = [square]
    for transform in (sp.factor, sp.fu):
        try:
            forms.append(call_with_time_limit(SIMPLIFY_SECONDS, transform, square))
        except (TimeLimit, TypeError, ValueError, NotImplementedError, RecursionError, AttributeError):
            pass
    roots = []
    for form in _unique(forms):
        root = sp.sqrt(form)
        roots.extend(_split_abs(root))
        roots.append(root)
    return _unique(roots)


def _split_abs(expr: sp.Expr) -> list[sp.Expr]:
    """``expr`` with each of its (first few) |h| replaced by +h or -h: every sign combination."""
    atoms = sorted(expr.atoms(sp.Abs), key=sp.default_sort_key)[:_MAX_ABS_SPLITS]
    if not atoms:
        return []
    return [expr.xreplace({a: s * a.args[0] for a, s in zip(atoms, signs)})
            for signs in itertools.product((1, -1), repeat=len(atoms))]


def _unique(exprs: list[sp.Expr]) -> list[sp.Expr]:
    seen, out = set(), []
    for expr in exprs:
        if expr not in seen:
            seen.add(expr)
            out.append(expr)
    return out


# --- validation and verification of each candidate --------------------------------------------------

def _keep_valid(candidates: list[ScheduleSpec], unknown: str, how: str,
                notes: tuple[str, ...]) -> list[tuple[ScheduleSpec, tuple[str, ...]]]:
    """The candidates that pass validation and the substitution check, with their notes; else refuse."""
    valid, reasons = [], []
    for spec in _preferred_distinct(candidates, unknown):
        value = sp.sstr(_unknown_of(spec, unknown))
        problem = _quick_reject(spec) or _boundary_problem(spec, unknown)
        if problem:
            reasons.append(f"{unknown} = {value}: {problem}")
            continue
        try:
            checks = call_with_time_limit(VALIDATE_SECONDS, _check_candidate, spec)
        except TimeLimit:
            reasons.append(f"{unknown} = {value}: validation and verification gave up after {VALIDATE_SECONDS} s")
            continue
        except SpecError as err:
            reasons.append(f"{unknown} = {value}: {err}")
            continue
        except (ArithmeticError, TypeError, ValueError, NotImplementedError, RecursionError) as err:
            reasons.append(f"{unknown} = {value}: {type(err).__name__}: {err}")
            continue
        valid.append((spec, notes + checks))
    if not valid:
        raise SpecError(f"no {unknown} satisfies the conditions ({how}): " + "; ".join(dict.fromkeys(reasons)))
    return valid


def _unknown_of(spec: ScheduleSpec, unknown: str) -> sp.Expr:
    return spec.sigma if unknown == "sigma" else getattr(spec, unknown)


def _preferred_distinct(candidates: list[ScheduleSpec], unknown: str) -> list[ScheduleSpec]:
    """Smooth forms (no |.|, sign or Piecewise) first, then the shorter; of candidates that agree
    numerically on (0, 1) only the first is kept (|sin(pi t)| and sin(pi t) are one branch)."""
    def rough(spec):
        expr = _unknown_of(spec, unknown)
        return (expr.has(sp.Abs, sp.sign, sp.Piecewise), sp.count_ops(expr))

    grid = np.linspace(0, 1, 103)[1:-1]
    kept, seen = [], []
    for spec in sorted(candidates, key=rough):
        expr = _unknown_of(spec, unknown)
        subs = [{}] if not spec.data_var.free_symbols else [{v_symbol: 1}, {v_symbol: sp.Rational(5, 2)}]
        values = np.concatenate([_values_on_grid(expr.subs(sub), grid) for sub in subs])
        if any(np.allclose(values, other, rtol=1e-10, atol=1e-12, equal_nan=False) for other in seen):
            continue
        seen.append(values)
        kept.append(spec)
    return kept


def _boundary_problem(spec: ScheduleSpec, unknown: str) -> str | None:
    """Choose by the boundary values: beta_0 = 0 and beta_1 = 1 for an unknown beta, alpha_1 = 0 for
    an unknown alpha (numerically, before the full validation)."""
    if unknown == "sigma":
        return None
    expr = _unknown_of(spec, unknown)
    expr = expr.subs({s: 1 for s in expr.free_symbols - {t}})
    wanted = {0: 0, 1: 1} if unknown == "beta" else {1: 0}
    found = {}
    for at, target in wanted.items():
        try:
            found[at] = _edge(expr, at, unknown)
            value = complex(sp.N(found[at]))
        except (SpecError, TypeError, ValueError) as err:
            return f"no usable boundary value: {err}"
        if not abs(value - target) <= 1e-9:
            shown = ", ".join(f"{unknown}_{k} = {sp.sstr(x)}" for k, x in found.items())
            need = " and ".join(f"{unknown}_{k} = {x}" for k, x in wanted.items())
            return f"boundary values {shown}; need {need}"
    return None


def _values_on_grid(expr: sp.Expr, grid: np.ndarray) -> np.ndarray:
    """validate.evaluate_on_grid, or (where numpy cannot evaluate a function) point by point with mpmath."""
    try:
        return evaluate_on_grid(expr, grid)
    except Exception:  # noqa: BLE001 - fall back to a slower evaluation that handles every function
        pass
    import mpmath

    fn = sp.lambdify(t, expr, modules="mpmath")
    out = np.empty(len(grid), dtype=complex)
    for i, point in enumerate(grid):
        try:
            out[i] = complex(fn(mpmath.mpf(float(point))))
        except Exception:  # noqa: BLE001 - a point where it cannot be evaluated counts as not finite
            out[i] = complex(np.nan, np.nan)
    return out


def _quick_reject(spec: ScheduleSpec) -> str | None:
    """A cheap look before validation: alpha and beta real, finite and positive at a few inner points."""
    grid = np.linspace(0, 1, 9)[1:-1]
    for label, expr in (("alpha", spec.alpha), ("beta", spec.beta)):
        expr = expr.subs({s: 1 for s in expr.free_symbols - {t}})
        values = _values_on_grid(expr, grid)
        bad = ~np.isfinite(values) | (np.abs(values.imag) > 1e-12) | (values.real <= 0)
        if bad.any():
            value = values[bad][0]
            shown = f"{value.real:.6g}" if np.isfinite(value) and abs(value.imag) <= 1e-12 else f"{value:.6g}"
            return f"{label} must be real and positive inside (0, 1), but it is {shown} at t = {grid[bad][0]:.4g}"
    return None


def _check_candidate(spec: ScheduleSpec) -> tuple[str, ...]:
    """Validate ``spec`` and check eps - r'/2 = 0 by substitution; return notes (runs bounded)."""
    notes = []
    symbolic_v = bool(spec.data_var.free_symbols)
    report: Validation = validate(_at_unit_v(spec) if symbolic_v else spec)
    if symbolic_v:
        notes.append("validated at v = 1 (the data variance is symbolic)")
    notes.extend(report.notes)
    notes.append(_verify_zero_drift(spec))
    return tuple(notes)


def _at_unit_v(spec: ScheduleSpec) -> ScheduleSpec:
    def sub(expr):
        return None if expr is None else expr.subs(v_symbol, 1)
    return ScheduleSpec(spec.name, sub(spec.alpha), sub(spec.beta), spec.diffusion, sub(spec.sigma),
                        sub(spec.data_var), spec.params, spec.boundary_tol, spec.description)


def _verify_zero_drift(spec: ScheduleSpec) -> str:
    """eps - r'/2 == 0: symbolically, else numerically on a dense grid (at v = 1 and v = 5/2 if v is symbolic)."""
    f = derive(spec)
    residual = f.eps - sp.diff(f.alpha**2 + spec.data_var * f.beta**2, t) / 2
    if residual == 0 or simplify(residual) == 0:
        return "zero drift verified symbolically (eps - r'/2 simplifies to 0)"
    grid = np.linspace(0, 1, RESIDUAL_GRID + 2)[1:-1]
    values = [{}] if not spec.data_var.free_symbols else [{v_symbol: 1}, {v_symbol: sp.Rational(5, 2)}]
    for sub in values:
        res = _values_on_grid(residual.subs(sub), grid)
        scale = np.abs(_values_on_grid(f.eps.subs(sub), grid)) + np.abs(_values_on_grid(
            (sp.diff(f.alpha**2 + spec.data_var * f.beta**2, t) / 2).subs(sub), grid))
        bad = ~np.isfinite(res) | (np.abs(res) > RESIDUAL_TOL * (1 + scale))
        if bad.any():
            where = grid[bad][0]
            at = f" at v = {sp.sstr(sub[v_symbol])}" if sub else ""
            raise SpecError(f"the zero-drift check fails: eps - r'/2 = {sp.sstr(residual)[:200]} is "
                            f"{complex(res[bad][0]):.3g} at t = {where:.6g}{at}")
    return (f"zero drift verified numerically: |eps - r'/2| <= {RESIDUAL_TOL:g} (1 + |eps| + |r'/2|) on "
            f"{RESIDUAL_GRID} points of (0, 1) (SymPy did not simplify it to 0)")


# --- data with a mean: the centred frame (derive/MATH.md §10) ------------------------------------------

def _centred_notes(spec: ScheduleSpec, mean: sp.Expr) -> tuple[str, ...]:
    """The notes for data N(mu, v I), mu = ``mean``, after checking the centred drift (bounded)."""
    try:
        check = call_with_time_limit(VALIDATE_SECONDS, _verify_centred_zero_drift, spec, mean)
    except TimeLimit:
        raise SpecError(f"checking the centred drift for data_mean = {sp.sstr(mean, full_prec=False)} gave up after "
                        f"{VALIDATE_SECONDS} s") from None
    mean_drift = sp.sstr(_simplified(sp.diff(spec.beta, t) * mean), full_prec=False)
    start = ("x_0 = 0 = w_0, the point mass" if spec.alpha.subs(t, 0) == 0 else "x_0 = w_0 (beta_0 = 0)")
    return (f"data N(mu, v I) with mu = {sp.sstr(mean, full_prec=False)}: the lazy frame is centred, w = x - beta mu "
            "(dw = dx - beta' mu dt); the schedule is the one for mean 0 (zero drift in w iff eps = r'/2, "
            "whatever mu)",
            f"drift b^eps = beta' mu + (r'/2 - eps)/r (x - beta mu) = beta' mu = {mean_drift}: zero in w; "
            f"sampling starts where mean 0 does, {start}, and x_t = w_t + beta_t mu",
            check)


def _verify_centred_zero_drift(spec: ScheduleSpec, mean: sp.Expr) -> str:
    """b^eps(t, w + beta mu) - beta' mu == 0 for the spec's eps: symbolically, else numerically on a dense
    grid at w = 1 and w = -2 (free symbols such as v and mu at two values each)."""
    centred = centred_drift(spec, mu=mean)
    if centred == 0:
        return "zero drift in w verified symbolically (b^eps(t, w + beta mu) - beta' mu simplifies to 0)"
    f = derive(spec)
    r = f.alpha**2 + spec.data_var * f.beta**2
    grid = np.linspace(0, 1, RESIDUAL_GRID + 2)[1:-1]
    symbols = sorted((centred.free_symbols | r.free_symbols | mean.free_symbols) - {t, w}, key=sp.default_sort_key)
    for values in ((1, -2), (sp.Rational(5, 2), sp.Rational(3, 2))):
        sub = {s: values[0] if s == v_symbol or s.is_positive else values[1] for s in symbols}
        # the size of the terms that cancel: (|eps| + |r'/2|)/r |w| + |beta' mu|
        rate = _values_on_grid(((sp.Abs(f.eps) + sp.Abs(sp.diff(r, t)) / 2) / r).subs(sub), grid)
        shift = _values_on_grid(sp.Abs(f.d_beta * mean).subs(sub), grid)
        for at in (1, -2):
            res = _values_on_grid(centred.subs(sub).subs(w, at), grid)
            scale = np.abs(rate) * abs(at) + np.abs(shift)
            bad = ~np.isfinite(res) | (np.abs(res) > RESIDUAL_TOL * (1 + scale))
            if bad.any():
                raise SpecError(f"the centred zero-drift check fails: b^eps(t, w + beta mu) - beta' mu = "
                                f"{sp.sstr(centred)[:200]} is {complex(res[bad][0]):.3g} at t = {grid[bad][0]:.6g}, "
                                f"w = {at}")
    return (f"zero drift in w verified numerically: |b^eps(t, w + beta mu) - beta' mu| <= {RESIDUAL_TOL:g} "
            f"(1 + (|eps| + |r'/2|)/r |w| + |beta' mu|) on {RESIDUAL_GRID} points of (0, 1) at w = 1, -2 "
            "(SymPy did not simplify it to 0)")


# --- bounded SymPy helpers ----------------------------------------------------------------------------

def _simplified(expr: sp.Expr) -> sp.Expr:
    """formulas.simplify within SIMPLIFY_SECONDS; on expiry the expression as it is."""
    try:
        return call_with_time_limit(SIMPLIFY_SECONDS, simplify, expr)
    except (TimeLimit, TypeError, ValueError, NotImplementedError, RecursionError):
        return expr


def _one_sided_limit(expr: sp.Expr, at: int) -> sp.Expr:
    return sp.limit(expr, t, at, "+" if at == 0 else "-")


def _edge(expr: sp.Expr, at: int, label: str) -> sp.Expr:
    """The one-sided limit of ``expr`` at t = ``at`` (substitution where that is finite), bounded."""
    direct = expr.subs(t, at)
    if not direct.has(sp.nan, sp.zoo, sp.oo, -sp.oo) and direct.is_finite:
        return direct
    try:
        value = call_with_time_limit(SYMPY_SECONDS, _one_sided_limit, expr, at)
    except TimeLimit:
        raise SpecError(f"{label} at t = {at}: SymPy's limit gave up after {SYMPY_SECONDS} s") from None
    except (NotImplementedError, ValueError, TypeError) as err:
        raise SpecError(f"{label} at t = {at}: SymPy cannot take the limit ({err})") from None
    if value.has(sp.nan, sp.zoo, sp.oo, -sp.oo, sp.AccumBounds) or isinstance(value, sp.Limit):
        raise SpecError(f"{label} has no finite limit at t = {at} (it tends to {value})")
    return value


def _integrate(expr: sp.Expr) -> sp.Expr:
    return sp.integrate(expr, t)


def _sigma_squared_integral(sigma: sp.Expr) -> sp.Expr:
    """S(t) - S(1) = -int_t^1 sigma^2 ds, in closed form, bounded."""
    try:
        antiderivative = call_with_time_limit(SYMPY_SECONDS, _integrate, sigma**2)
    except TimeLimit:
        raise SpecError(f"int sigma^2 dt (sigma = {sp.sstr(sigma)}): SymPy's integrate gave up after "
                        f"{SYMPY_SECONDS} s") from None
    except (NotImplementedError, ValueError, TypeError) as err:
        raise SpecError(f"int sigma^2 dt (sigma = {sp.sstr(sigma)}): SymPy cannot integrate it ({err})") from None
    if antiderivative.has(sp.Integral):
        raise SpecError(f"int sigma^2 dt (sigma = {sp.sstr(sigma)}) has no closed form SymPy can find")
    return antiderivative - _edge(antiderivative, 1, "int sigma^2 dt")


def _require_nonnegative(expr: sp.Expr, label: str, reason: str, *, boundary: bool = False) -> None:
    """Refuse, naming the value and the t, where ``expr`` is negative, not real or not finite on (0, 1)
    (and, with ``boundary``, at the ends)."""
    expr = expr.subs({s: 1 for s in expr.free_symbols - {t}})  # a symbolic v is checked at v = 1
    grid = np.linspace(0, 1, 2001)[1:-1]
    points = []
    if boundary:
        for at in (0, 1):
            try:
                points.append((at, complex(sp.N(_edge(expr, at, label)))))
            except (SpecError, TypeError, ValueError):
                pass
    values = _values_on_grid(expr, grid)
    points.extend(zip(grid, values))
    for where, value in points:
        if not np.isfinite(value) or abs(value.imag) > 1e-12 or value.real < -1e-12:
            shown = f"{value.real:.6g}" if abs(value.imag) <= 1e-12 else f"{value:.6g}"
            raise SpecError(f"{reason} ({label} = {sp.sstr(expr)} = {shown} at t = {where:.4g})")
