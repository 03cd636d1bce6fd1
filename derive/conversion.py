"""Conversion between schedules (derive/MATH.md §3).

For a source A and a target B: the time map tau(s) solves snr_A(tau) = snr_B(s) and the
scale is c(s) = (alpha_B + beta_B)(s) / (alpha_A + beta_A)(tau(s)), so that in law
I^B_s = c(s) I^A_tau(s).  A diffusion eps_A on the source corresponds to
eps_B(s) = c(s)^2 tau'(s) eps_A(tau(s)) on the target.  Schedules with parameters are
converted at their values (:meth:`ScheduleSpec.substituted`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp

from ..errors import SpecError
from .formulas import bounded, derive, run_budgeted, simplify
from .limits import TimeLimit
from .schedule import ScheduleSpec
from .symbols import t

__all__ = ["Conversion", "convert", "snr_inverse", "snr_symbol", "SOLVE_SECONDS", "CONVERT_SECONDS"]

#: how long SymPy may look for a closed-form inverse of the snr before the numeric fallback
SOLVE_SECONDS = 5.0
#: budget of one convert() (the two derivations included), in seconds on 2 CPU cores
CONVERT_SECONDS = 30.0
#: S, the value of the snr, in what snr_inverse returns; its SymPy name and _tau's start with an underscore,
#: which a parameter name never does, so they never clash with a parameter
snr_symbol = sp.Symbol("_S", positive=True)
_tau = sp.Symbol("_tau", positive=True)


@dataclass(frozen=True)
class Conversion:
    """Time map and scale from a target schedule's time t to a source schedule's time.

    ``time_map`` is None when SymPy finds no closed-form inverse of the source snr; the
    runtime then inverts ``source_log_snr`` numerically (``note`` says so).
    """

    source: ScheduleSpec
    target: ScheduleSpec
    time_map: sp.Expr | None
    scale: sp.Expr | None
    source_log_snr: sp.Expr     # log snr_A as a function of the source time t
    target_log_snr: sp.Expr     # log snr_B as a function of t
    note: str = ""

    @property
    def closed_form(self) -> bool:
        return self.time_map is not None

    def target_eps(self, source_eps: sp.Expr) -> sp.Expr:
        """eps_B(t) = c(t)^2 tau'(t) eps_A(tau(t)) for a source diffusion eps_A(t)."""
        if self.time_map is None:
            raise SpecError(f"{self.note}; the corresponding diffusion has no closed form")
        return simplify(self.scale**2 * sp.diff(self.time_map, t) * source_eps.subs(t, self.time_map))

    def formulas(self) -> tuple[dict[str, sp.Expr], list[str]]:
        """What ``lazyflow convert`` prints: the time map, scale and corresponding diffusion (closed form), else
        both log snrs with how the runtime inverts them; and the notes that say which is which."""
        if not self.closed_form:
            return {"source_log_snr": self.source_log_snr, "target_log_snr": self.target_log_snr}, [
                f"{self.note}: tau(t) solves source_log_snr(tau) = target_log_snr(t), found by bisection at run "
                "time; scale c = (alpha + beta)_target(t) / (alpha + beta)_source(tau)"]
        values = {"time_map": self.time_map, "scale": self.scale, "diffusion": self.target_eps(derive(self.source).eps)}
        return values, [f"source time tau = time_map(t) of {self.source.name!r} for target time t of "
                        f"{self.target.name!r}; diffusion is the target eps corresponding to the source's "
                        f"({self.source.diffusion})"]


@lru_cache(maxsize=128)
def snr_inverse(snr: sp.Expr, at: tuple[tuple[sp.Symbol, sp.Expr], ...] = ()) -> sp.Expr | None:
    """t as a function of S = snr(t) (an expression in ``snr_symbol``), or None if not found.

    ``snr`` may contain parameter symbols; the branch of each root is checked numerically with
    the parameters at the values ``at`` ((symbol, value) pairs), which is why SymPy's own checks
    and simplification of the roots are skipped (they are slow on exponential schedules).  SymPy
    tries snr(t) = S, then the equivalent 1/snr(t)^2 = 1/S^2, each within ``SOLVE_SECONDS``.
    """
    values = dict(at)
    snr_at = snr.xreplace(values)
    tau_snr = snr.subs(t, _tau)
    attempts = (lambda: sp.Eq(tau_snr, snr_symbol), lambda: sp.Eq(simplify(1 / tau_snr**2), 1 / snr_symbol**2))
    for equation in attempts:
        try:
            with bounded(SOLVE_SECONDS):
                roots = sp.solve(equation(), _tau, check=False, simplify=False)
        except (NotImplementedError, ValueError, TimeLimit):
            continue
        for root in roots:
            if not _is_inverse(root, snr_at, values):
                continue
            # log(((S^2 + 1)/S^2)^a) -> a (log(S^2 + 1) - 2 log S): the same for S > 0, and no overflow
            for form in (sp.expand_log(simplify(root), force=True), simplify(root), root):
                if _is_inverse(form, snr_at, values):
                    return form
    return None


def _is_inverse(root: sp.Expr, snr_at: sp.Expr, values: dict) -> bool:
    """snr(root(S)) = S with root(S) in (0, 1) at a few S (parameters at ``values``)."""
    root_at = root.xreplace(values)
    for s_value in (0.25, 1.0, 4.0):
        try:
            value = complex(sp.N(root_at.subs(snr_symbol, s_value)))
        except TypeError:
            return False
        if abs(value.imag) > 1e-9 or not 0 < value.real < 1:
            return False
        back = complex(sp.N(snr_at.subs(t, value.real)))
        if abs(back - s_value) > 1e-8 * max(1.0, s_value):
            return False
    return True


@lru_cache(maxsize=256)
def convert(source: ScheduleSpec, target: ScheduleSpec) -> Conversion:
    """Derive the conversion of a model trained on ``source`` to sampling in ``target``
    (parameters at their values), within CONVERT_SECONDS (else formulas.GaveUp)."""
    return run_budgeted(CONVERT_SECONDS, f"converting {source.name!r} to {target.name!r}", _convert, source, target)


def _convert(source: ScheduleSpec, target: ScheduleSpec) -> Conversion:
    source, target = source.substituted(), target.substituted()
    fa, fb = derive(source), derive(target)
    inverse = snr_inverse(fa.snr)
    if inverse is None:
        return Conversion(source, target, None, None, fa.log_snr, fb.log_snr,
                          note=f"SymPy found no closed-form inverse of the snr of {source.name!r}; "
                               "the runtime inverts it numerically")
    tau = simplify(inverse.subs(snr_symbol, fb.snr))
    scale = simplify((fb.alpha + fb.beta) / (fa.alpha + fa.beta).subs(t, tau))
    _check_map(fa.snr, fb.snr, tau)
    return Conversion(source, target, tau, scale, fa.log_snr, fb.log_snr)


def _check_map(snr_a: sp.Expr, snr_b: sp.Expr, tau: sp.Expr) -> None:
    """Guard against a wrong branch: snr_A(tau(s)) must equal snr_B(s) on a few points."""
    for s_value in np.linspace(0.1, 0.9, 5):
        lhs = complex(sp.N(snr_a.subs(t, tau.subs(t, s_value))))
        rhs = complex(sp.N(snr_b.subs(t, s_value)))
        if abs(lhs - rhs) > 1e-8 * max(1.0, abs(rhs)):
            raise SpecError(f"time map check failed at t = {s_value}: snr_A(tau) = {lhs}, snr_B = {rhs}")
