"""The lazy (zero-drift) condition and its solver (derive/MATH.md §4).

For data N(0, v I), eta_X = v beta x / r with r = alpha^2 + v beta^2, and the drift is
b^eps = (r'/2 - eps) / r * x.  It vanishes iff eps = r'/2.  Fix any two of alpha, beta and
sigma (eps = sigma^2/2, or the optimal eps* = alpha^2 beta'/beta - alpha alpha') and this
module solves the condition for the third, boundary conditions applied.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from .errors import SpecError
from .formulas import derive, simplify
from .limits import TimeLimit, time_limit
from .schedule import ScheduleSpec
from .symbols import t
from .validate import evaluate_on_grid, validate

__all__ = ["solve_lazy", "zero_drift_residual", "DSOLVE_SECONDS"]

DSOLVE_SECONDS = 20.0
_F = sp.Function("F")


def zero_drift_residual(spec: ScheduleSpec) -> sp.Expr:
    """eps - r'/2 for the spec's own diffusion and data variance; zero iff the schedule is lazy."""
    f = derive(spec)
    return simplify(f.eps - sp.diff(f.alpha**2 + spec.data_var * f.beta**2, t) / 2)


def solve_lazy(alpha: sp.Expr | None = None, beta: sp.Expr | None = None, sigma: str | sp.Expr | None = None,
               *, data_var: sp.Expr = sp.Integer(1), name: str = "lazy") -> ScheduleSpec:
    """Solve the zero-drift condition for the one of alpha, beta, sigma left as None.

    ``sigma`` is ``"ode"``, ``"optimal"``, an expression for sigma(t), or None (solve for it).
    Returns a validated :class:`ScheduleSpec`; refuses with :class:`SpecError` when the answer
    would need a negative diffusion or breaks the boundary values.
    """
    given = [name_ for name_, value in (("alpha", alpha), ("beta", beta), ("sigma", sigma)) if value is not None]
    if len(given) != 2:
        raise SpecError(f"fix exactly two of alpha, beta, sigma (got {', '.join(given) or 'none'})")
    if isinstance(sigma, str) and sigma not in ("ode", "optimal"):
        raise SpecError(f"sigma must be 'ode', 'optimal' or an expression to solve against, got {sigma!r}")
    v = sp.sympify(data_var)
    if sigma is None:
        spec = _solve_sigma(alpha, beta, v, name)
    elif beta is not None:
        spec = _solve_alpha(beta, sigma, v, name)
    else:
        spec = _solve_beta(alpha, sigma, v, name)
    if not v.free_symbols:
        validate(spec)
    residual = zero_drift_residual(spec)
    if residual != 0 and sp.simplify(residual) != 0:
        raise SpecError(f"internal check failed: the solved schedule leaves eps - r'/2 = {residual}")
    return spec


def _diffusion(sigma: str | sp.Expr) -> tuple[str, sp.Expr | None]:
    return (sigma, None) if isinstance(sigma, str) else ("sigma", sp.sympify(sigma))


def _solve_sigma(alpha: sp.Expr, beta: sp.Expr, v: sp.Expr, name: str) -> ScheduleSpec:
    """sigma^2 = 2 eps = r'."""
    r_prime = simplify(sp.diff(alpha**2 + v * beta**2, t))
    _require_nonnegative(r_prime, "sigma^2 = r' = d/dt(alpha^2 + v beta^2)",
                         "the lazy diffusion would be negative: r = alpha^2 + v beta^2 decreases")
    return ScheduleSpec(name, alpha, beta, "sigma", simplify(sp.sqrt(r_prime)), v)


def _solve_alpha(beta: sp.Expr, sigma: str | sp.Expr, v: sp.Expr, name: str) -> ScheduleSpec:
    """Unknown A = alpha^2 with A(1) = 0:  A' + v (beta^2)' = 2 eps."""
    A = _F(t)
    if sigma == "optimal":
        two_eps = 2 * A * sp.diff(beta, t) / beta - sp.diff(A, t)     # 2 eps* = 2 A beta'/beta - A'
    elif sigma == "ode":
        two_eps = sp.Integer(0)
    else:
        two_eps = sp.sympify(sigma) ** 2
    equation = sp.Eq(sp.diff(A, t) + v * sp.diff(beta**2, t), two_eps)
    diffusion, sig = _diffusion(sigma)

    def build(a_squared: sp.Expr) -> ScheduleSpec:
        _require_nonnegative(a_squared, "alpha^2", "alpha^2 would be negative: no real alpha satisfies the condition")
        return ScheduleSpec(name, simplify(sp.sqrt(a_squared)), beta, diffusion, sig, v)

    return _first_valid(_dsolve_with_boundary(equation, at=1, value=0, what="alpha^2"), build, "alpha")


def _solve_beta(alpha: sp.Expr, sigma: str | sp.Expr, v: sp.Expr, name: str) -> ScheduleSpec:
    """Unknown beta with beta(1) = 1:  alpha alpha' + v beta beta' = eps (for a fixed eps: linear in beta^2)."""
    F = _F(t)
    diffusion, sig = _diffusion(sigma)
    if sigma == "optimal":
        eps = alpha**2 * sp.diff(F, t) / F - alpha * sp.diff(alpha, t)
        equation = sp.Eq(alpha * sp.diff(alpha, t) + v * F * sp.diff(F, t), eps)

        def build(beta: sp.Expr) -> ScheduleSpec:
            return ScheduleSpec(name, alpha, simplify(beta), diffusion, sig, v)

        return _first_valid(_dsolve_with_boundary(equation, at=1, value=1, what="beta"), build, "beta")
    eps = sp.Integer(0) if sigma == "ode" else sp.sympify(sigma) ** 2 / 2
    equation = sp.Eq(alpha * sp.diff(alpha, t) + v * sp.diff(F, t) / 2, eps)   # F = beta^2

    def build_square(b_squared: sp.Expr) -> ScheduleSpec:
        _require_nonnegative(b_squared, "beta^2", "beta^2 would be negative: no real beta satisfies the condition")
        return ScheduleSpec(name, alpha, simplify(sp.sqrt(b_squared)), diffusion, sig, v)

    return _first_valid(_dsolve_with_boundary(equation, at=1, value=1, what="beta^2"), build_square, "beta")


def _first_valid(candidates: list[sp.Expr], build, what: str) -> ScheduleSpec:
    """The first candidate whose schedule passes validation; else refuse with every reason."""
    reasons = []
    for candidate in candidates:
        try:
            spec = build(candidate)
            if not spec.data_var.free_symbols:
                validate(spec)
            return spec
        except SpecError as err:
            reasons.append(str(err))
    raise SpecError(f"no solution for {what} satisfies the conditions: " + "; ".join(dict.fromkeys(reasons)))


def _dsolve_with_boundary(equation: sp.Eq, *, at: int, value: sp.Expr, what: str) -> list[sp.Expr]:
    """Solve an ODE in F(t); fix the integration constant by the limit F(t) -> value as t -> at.

    Returns every candidate (one per solution branch and per root for the constant)."""
    try:
        with time_limit(DSOLVE_SECONDS):
            solutions = sp.dsolve(equation, _F(t))
    except (NotImplementedError, ValueError, TimeLimit) as err:
        raise SpecError(f"SymPy found no closed-form solution for {what}: {err}") from None
    solutions = solutions if isinstance(solutions, list) else [solutions]
    candidates, reasons = [], []
    for solution in solutions:
        expr = solution.rhs
        if expr.has(sp.Integral):
            reasons.append("the solution contains an unevaluated integral")
            continue
        constants = sorted(expr.free_symbols - {t} - equation.free_symbols, key=str)
        if len(constants) > 1:
            reasons.append(f"{len(constants)} free constants")
            continue
        if not constants:
            candidates.append(simplify(expr))
            continue
        const = constants[0]
        try:
            with time_limit(DSOLVE_SECONDS):
                edge = sp.limit(expr, t, at, "-" if at == 1 else "+")
                roots = sp.solve(sp.Eq(edge, value), const)
        except (NotImplementedError, ValueError, TimeLimit) as err:
            reasons.append(f"could not apply the boundary condition ({err})")
            continue
        if not roots:
            reasons.append(f"no constant gives {what} = {value} at t = {at}")
        candidates.extend(simplify(expr.subs(const, root)) for root in roots)
    if not candidates:
        raise SpecError(f"could not resolve {what} with its boundary value {value} at t = {at}: {'; '.join(reasons)}")
    return candidates


def _require_nonnegative(expr: sp.Expr, label: str, reason: str) -> None:
    expr = expr.subs({s: 1 for s in expr.free_symbols - {t}})  # a symbolic v is checked at v = 1
    grid = np.linspace(0, 1, 2001)[1:-1]
    values = evaluate_on_grid(expr, grid)
    bad = (~np.isfinite(values)) | (np.abs(values.imag) > 1e-12) | (values.real < -1e-12)
    if bad.any():
        raise SpecError(f"{reason} ({label} = {sp.sstr(expr)} at t = {grid[bad][0]:.4g})")
