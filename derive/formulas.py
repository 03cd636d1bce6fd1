"""Every formula the package needs, derived by SymPy from a :class:`ScheduleSpec`.

Conventions (derive/MATH.md §1): I_t = alpha Z + beta X, eta_Z = E[Z|I_t=x], eta_X = E[X|I_t=x],
velocity b = alpha' eta_Z + beta' eta_X, score s = -eta_Z/alpha, drift b^eps = b + eps s with
eps = sigma^2/2, optimal diffusion eps* = alpha^2 (log snr)'.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator

import sympy as sp

from ..errors import SpecError
from ..predictions import PREDICTIONS, check_prediction
from .limits import TimeLimit, call_with_time_limit, limits_by_signal, time_limit
from .schedule import ScheduleSpec
from .symbols import eta_X, eta_Z, m, t, v, x

__all__ = ["Formulas", "derive", "PREDICTIONS", "simplify", "GaveUp", "budget", "bounded", "check_budget",
           "run_budgeted", "DERIVE_SECONDS", "SIMPLIFY_SECONDS"]

#: budget of one derive() (every formula of one schedule), in seconds on 2 CPU cores
DERIVE_SECONDS = 10.0
#: one simplification; on expiry the cheaper forms (the expression itself, its cancel) are kept
SIMPLIFY_SECONDS = 4.0


# --- bounded work ---------------------------------------------------------------------------------
#
# A budget is a wall-clock deadline for a whole call (derive, validate, render_kernel, convert); budgets
# nest (the sooner deadline applies).  Each expensive SymPy call inside runs under ``bounded(step)``:
# derive.limits.time_limit of the step's own limit or what the budgets leave, whichever is less.  A step
# that runs out of its own limit raises TimeLimit (the caller falls back); one that exhausts a budget
# raises GaveUp ("... gave up after N s").  time_limit works by SIGALRM on the main thread; a budgeted
# call made from another thread runs in a child process (derive.limits.call_with_time_limit) instead.

class GaveUp(SpecError):
    """A budgeted call (derive, validate, render_kernel, convert) ran out of its time budget."""


_local = threading.local()


def _stack() -> list[tuple[float, float, str]]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


@contextlib.contextmanager
def budget(seconds: float, what: str) -> Iterator[None]:
    """A deadline ``seconds`` from now for the work inside; exhausting it raises :class:`GaveUp`."""
    stack = _stack()
    stack.append((time.monotonic() + seconds, seconds, what))
    try:
        yield
    finally:
        stack.pop()


def _left() -> float:
    now = time.monotonic()
    return min((deadline - now for deadline, _, _ in _stack()), default=float("inf"))


def check_budget() -> None:
    """Raise :class:`GaveUp` naming the first budget whose deadline has passed."""
    now = time.monotonic()
    for deadline, seconds, what in _stack():
        if now >= deadline:
            raise GaveUp(f"{what}: gave up after {seconds:g} s")


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """One expensive step: at most ``seconds`` and at most what the budgets leave.

    Raises TimeLimit when the step's own limit passes, GaveUp when a budget is exhausted."""
    check_budget()
    limit = min(seconds, _left())
    try:
        with time_limit(max(limit, 1e-3)):
            yield
    except TimeLimit:
        check_budget()
        raise
    check_budget()


def run_budgeted(seconds: float, what: str, fn: Callable[..., Any], /, *args: Any) -> Any:
    """``fn(*args)`` within a budget of ``seconds``.

    On the main thread the budget is kept by signals (:func:`bounded` steps inside ``fn``).  From any
    other thread, outside any budget, ``fn`` (a module-level function) runs in a child process killed
    after ``seconds`` (:func:`derive.limits.call_with_time_limit`); there it is the child's main thread."""
    if not limits_by_signal() and not _stack():
        try:
            return call_with_time_limit(seconds, fn, *args)
        except TimeLimit:
            raise GaveUp(f"{what}: gave up after {seconds:g} s") from None
    with budget(seconds, what):
        try:
            with time_limit(seconds):
                return fn(*args)
        except TimeLimit:
            check_budget()
            raise GaveUp(f"{what}: gave up after {seconds:g} s") from None


def _soft_left() -> float:
    """What the budgets leave for optional work (simplification): each keeps a quarter of itself in reserve
    for the rest of its call."""
    now = time.monotonic()
    return min((deadline - now - seconds / 4 for deadline, seconds, _ in _stack()), default=float("inf"))


def simplify(expr: sp.Expr) -> sp.Expr:
    """Simplify, keeping whichever of a few cheap forms is shortest, within SIMPLIFY_SECONDS and what the
    budgets leave for it (three quarters of each); on expiry the forms found so far.  Simplification is
    optional: it never makes a budgeted call give up."""
    expr = sp.sympify(expr)
    if expr.is_Number:
        return expr
    candidates = [expr]
    limit = min(SIMPLIFY_SECONDS, _soft_left())
    if limit <= 0:          # the budget is nearly spent: keep the expression as it is
        return expr
    try:
        with time_limit(limit):
            candidates.append(sp.cancel(expr))
            candidates.append(sp.simplify(expr))
            if candidates[-1].has(sp.Abs, sp.sign):
                # t lies in (0, 1): tell SymPy that 1 - t > 0 as well
                candidates.append(sp.simplify(sp.refine(candidates[-1], sp.Q.positive(1 - t))))
    except TimeLimit:
        pass
    return min(candidates, key=sp.count_ops)


@dataclass(frozen=True)
class Formulas:
    """Derived expressions of one schedule; all in the schedule's own time t."""

    spec: ScheduleSpec
    alpha: sp.Expr
    beta: sp.Expr
    d_alpha: sp.Expr
    d_beta: sp.Expr
    eps: sp.Expr
    sigma: sp.Expr
    eps_star: sp.Expr
    snr: sp.Expr
    log_snr: sp.Expr
    velocity: sp.Expr          # in eta_Z, eta_X
    score: sp.Expr             # in eta_Z
    drift: sp.Expr             # in x, eta_X
    drift_x: sp.Expr           # K_x: coefficient of x in the drift
    drift_eta: sp.Expr         # K_e: coefficient of eta_X in the drift
    gaussian_drift: sp.Expr    # k(t): b = k x for data N(0, v I), v = spec.data_var

    def to_eta(self, prediction: str) -> tuple[sp.Expr, sp.Expr]:
        """(eta_X, eta_Z) as expressions in x and the network output m."""
        return _to_eta(self.alpha, self.beta, prediction)

    def as_dict(self) -> dict[str, sp.Expr]:
        """The keys printed by ``lazyflow derive``."""
        return {"alpha": self.alpha, "beta": self.beta, "sigma": self.sigma, "snr": self.snr,
                "eps": self.eps, "eps_star": self.eps_star, "velocity": self.velocity,
                "score": self.score, "drift": self.drift, "gaussian_drift": self.gaussian_drift}


def diffusion_eps(spec: ScheduleSpec, alpha: sp.Expr, beta: sp.Expr, eps_star: sp.Expr) -> sp.Expr:
    """eps(t) for the spec's diffusion: 0, eps*, r'/2 with r = alpha^2 + v beta^2, or sigma^2/2."""
    if spec.diffusion == "ode":
        return sp.Integer(0)
    if spec.diffusion == "optimal":
        return eps_star
    if spec.diffusion == "lazy":
        return simplify(sp.diff(alpha**2 + spec.data_var * beta**2, t) / 2)
    return simplify(spec.sigma**2 / 2)


@lru_cache(maxsize=256)
def derive(spec: ScheduleSpec) -> Formulas:
    """Derive every formula of ``spec`` (cached per spec), within DERIVE_SECONDS (else :class:`GaveUp`)."""
    return run_budgeted(DERIVE_SECONDS, f"deriving the formulas of {spec.name!r}", _derive, spec)


def _derive(spec: ScheduleSpec) -> Formulas:
    alpha, beta = spec.alpha, spec.beta
    da, db = simplify(sp.diff(alpha, t)), simplify(sp.diff(beta, t))
    snr = simplify(beta / alpha)
    log_snr = simplify(sp.log(beta) - sp.log(alpha))
    eps_star = simplify(alpha**2 * sp.diff(sp.log(beta) - sp.log(alpha), t))
    eps = diffusion_eps(spec, alpha, beta, eps_star)
    sigma = simplify(sp.sqrt(2 * eps))
    velocity = da * eta_Z + db * eta_X
    score = -eta_Z / alpha
    # drift b + eps s with eta_Z eliminated through x = alpha eta_Z + beta eta_X
    drift_full = (velocity + eps * score).subs(eta_Z, (x - beta * eta_X) / alpha)
    k_x = simplify(sp.diff(drift_full, x))
    k_e = simplify(sp.diff(drift_full, eta_X))
    drift = k_x * x + k_e * eta_X
    # Gaussian data N(0, v I): eta_X = v beta x / (alpha^2 + v beta^2)
    gaussian = simplify((k_x + k_e * v * beta / (alpha**2 + v * beta**2)).subs(v, spec.data_var))
    return Formulas(spec, alpha, beta, da, db, eps, sigma, eps_star, snr, log_snr, velocity, score,
                    drift, k_x, k_e, gaussian)


def _to_eta(alpha: sp.Expr, beta: sp.Expr, prediction: str) -> tuple[sp.Expr, sp.Expr]:
    """Solve x = alpha eta_Z + beta eta_X together with the prediction's defining relation."""
    relations = {
        "velocity": sp.diff(alpha, t) * eta_Z + sp.diff(beta, t) * eta_X,
        "x": eta_X,
        "noise": eta_Z,
        "score": -eta_Z / alpha,
    }
    check_prediction(prediction, error=SpecError)
    solution = sp.solve([sp.Eq(x, alpha * eta_Z + beta * eta_X), sp.Eq(m, relations[prediction])],
                        [eta_X, eta_Z], dict=True)[0]
    return simplify(solution[eta_X]), simplify(solution[eta_Z])
