"""Validation of a schedule: boundary values, monotone snr, a real non-negative diffusion,
finite expressions on (0, 1).  Each failure raises :class:`SpecError` with the reason."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from .errors import SpecError
from .formulas import derive
from .schedule import ScheduleSpec
from .symbols import t

__all__ = ["Validation", "validate", "boundary_value", "evaluate_on_grid", "GRID_POINTS"]

GRID_POINTS = 4001
_u = sp.Symbol("u", positive=True)


@dataclass(frozen=True)
class Validation:
    """What validation found: the kind of schedule and how monotonicity was shown."""

    kind: str                 # "standard" or "pointmass"
    snr_monotone: str         # "proved symbolically" or "checked on a grid of N points"
    notes: tuple[str, ...] = ()


def boundary_value(expr: sp.Expr, at: int) -> sp.Expr:
    """The one-sided limit of ``expr`` as t -> 0+ (at=0) or t -> 1- (at=1)."""
    direct = expr.subs(t, at)
    if direct.is_finite and not direct.has(sp.nan, sp.zoo):
        return sp.nsimplify(sp.simplify(direct)) if direct.is_number else direct
    return sp.limit(expr, t, at, "+" if at == 0 else "-")


def _close(value: sp.Expr, target: sp.Expr, tol: float) -> bool:
    diff = sp.simplify(value - target)
    if diff == 0:
        return True
    if diff.free_symbols:
        return False
    try:
        return abs(complex(sp.N(diff))) <= tol
    except TypeError:
        return False


def evaluate_on_grid(expr: sp.Expr, grid: np.ndarray) -> np.ndarray:
    """``expr`` (in t) at every grid point, as complex numbers so that a non-real value shows as such."""
    fn = sp.lambdify(t, expr, modules="numpy")
    with np.errstate(all="ignore"):
        return np.asarray(fn(grid.astype(complex)), dtype=complex) * np.ones_like(grid)


def _grid_values(expr: sp.Expr, grid: np.ndarray, label: str) -> np.ndarray:
    values = evaluate_on_grid(expr, grid)
    bad = ~np.isfinite(values)
    if bad.any():
        raise SpecError(f"{label} = {sp.sstr(expr)} is not finite at t = {grid[bad][0]:.6g} inside (0, 1)")
    return values


def validate(spec: ScheduleSpec) -> Validation:
    """Check ``spec``; return a :class:`Validation` or raise :class:`SpecError` naming the problem.

    A spec with parameters is checked at their values (:meth:`ScheduleSpec.substituted`).
    """
    spec = spec.substituted()
    f = derive(spec)
    notes: list[str] = []
    free = (f.alpha.free_symbols | f.beta.free_symbols) - {t}
    if free:
        raise SpecError(f"schedule depends on unknown symbols {sorted(map(str, free))}")
    tol = spec.boundary_tol
    a0, b0, a1, b1 = (boundary_value(e, k) for e, k in ((f.alpha, 0), (f.beta, 0), (f.alpha, 1), (f.beta, 1)))
    base = sp.sqrt(spec.data_var)
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
        want = "1" if base == 1 else f"1 or sqrt(v) = sqrt({spec.data_var})"
        raise SpecError(f"schedule {spec.name!r}: boundary values at t = 0 are alpha_0 = {a0}, beta_0 = {b0}; "
                        f"need alpha_0 = {want}, beta_0 = 0 (standard) or alpha_0 = beta_0 = 0 (point mass)")
    if not (_close(a1, 0, tol) and _close(b1, 1, tol)):
        raise SpecError(f"schedule {spec.name!r}: boundary values at t = 1 are alpha_1 = {a1}, beta_1 = {b1}; "
                        "need alpha_1 = 0, beta_1 = 1")
    grid = np.linspace(0, 1, GRID_POINTS)[1:-1]
    for label, expr in (("alpha", f.alpha), ("beta", f.beta), ("alpha'", f.d_alpha), ("beta'", f.d_beta),
                        ("eps", f.eps)):
        values = _grid_values(expr, grid, label)
        if label in ("alpha", "beta") and (np.abs(values.imag) > 1e-12).any():
            where = grid[np.abs(values.imag) > 1e-12][0]
            raise SpecError(f"{label} = {sp.sstr(expr)} is not real at t = {where:.6g}")
    if (f.alpha.subs(t, sp.Rational(1, 2)) <= 0) or (f.beta.subs(t, sp.Rational(1, 2)) <= 0):
        raise SpecError(f"schedule {spec.name!r}: alpha and beta must be positive inside (0, 1)")
    monotone = _check_snr(f.log_snr, grid)
    if spec.sigma is not None:
        sig = _grid_values(spec.sigma, grid, "sigma")
        bad = (np.abs(sig.imag) > 1e-12) | (sig.real < 0)
        if bad.any():
            raise SpecError(f"diffusion of {spec.name!r}: sigma = {sp.sstr(spec.sigma)} is negative or not real at "
                            f"t = {grid[bad][0]:.6g}; sigma must be real and non-negative")
    eps_values = _grid_values(f.eps, grid, "eps")
    if (np.abs(eps_values.imag) > 1e-12).any() or (eps_values.real < -1e-12).any():
        where = grid[(np.abs(eps_values.imag) > 1e-12) | (eps_values.real < -1e-12)][0]
        raise SpecError(f"diffusion of {spec.name!r}: eps = sigma^2/2 = {sp.sstr(f.eps)} is negative or not real "
                        f"at t = {where:.6g}; sigma must be real and non-negative")
    return Validation(kind, monotone, tuple(notes))


def _check_snr(log_snr: sp.Expr, grid: np.ndarray) -> str:
    """Prove (log snr)' > 0 on (0, 1) through t = u/(1+u), u > 0; else check a dense grid."""
    derivative = sp.diff(log_snr, t)
    try:
        on_half_line = sp.simplify(derivative.subs(t, _u / (1 + _u)))
        if on_half_line.is_positive:
            return "proved symbolically"
    except Exception:  # noqa: BLE001 - any SymPy failure falls back to the grid check
        pass
    values = _grid_values(sp.exp(log_snr), grid, "snr").real
    steps = np.diff(values)
    if (steps <= 0).any():
        where = grid[1:][steps <= 0][0]
        raise SpecError(f"signal-to-noise ratio beta/alpha is not strictly increasing: it stops increasing near t = {where:.6g}")
    return f"checked on a grid of {len(grid)} points"
