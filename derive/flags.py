"""A schedule named by the command line's parts (``--schedule`` or ``--alpha/--beta``, ``--sigma``, ``--param``,
``--data-var``, ``--name``) as a :class:`ScheduleSpec`.  User text is parsed only by :func:`parse_expression`
(the whitelist parser): never ``eval`` or ``sympify`` of raw strings."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import sympy as sp

from ..errors import LazyflowError
from .parse import parse_expression
from .schedule import DIFFUSION_KEYWORDS, ScheduleSpec, from_expressions, resolve
from .symbols import mu, v

__all__ = ["spec_from_parts", "chosen_schedule", "lazy_inputs", "data_variance", "data_mean", "param_numbers"]


def param_numbers(params: Mapping[str, str] | None, flag: str = "--param") -> dict[str, float]:
    """``params`` (NAME -> text) as numbers; text that is not a number is refused naming ``flag``."""
    try:
        return {key: float(value) for key, value in (params or {}).items()}
    except ValueError:
        raise LazyflowError(f"{flag}: values must be numbers, got {dict(params or {})}") from None


def data_variance(text: str) -> sp.Expr:
    """The data variance v of ``--data-var``: a positive number, or ``v`` for the symbol itself."""
    if text.strip() == "v":
        return v
    value = parse_expression(text, {}, variables={}, what="--data-var")
    if not value.is_number or not value.is_positive:
        raise LazyflowError(f"--data-var must be a positive number or v, got {text!r}")
    return value


def data_mean(text: str | None) -> sp.Expr | None:
    """The data mean of ``--data-mean``: a number or an expression in the symbol ``mu`` (None when not given)."""
    if text is None:
        return None
    return parse_expression(text.strip(), {}, variables={"mu": mu}, what="--data-mean")


def _with_sigma(spec: ScheduleSpec, sigma: str) -> ScheduleSpec:
    """``spec`` with the diffusion ``sigma`` names: a keyword (ode, optimal, lazy) or an expression."""
    sigma = sigma.strip()
    if sigma in DIFFUSION_KEYWORDS:
        return spec.with_diffusion(sigma)
    return spec.with_diffusion("sigma", parse_expression(sigma, dict(spec.param_symbols), what="sigma"))


def chosen_schedule(schedule: str | None, alpha: str | None, beta: str | None, default: str | None) -> str | None:
    """The schedule named by ``schedule``, else ``default`` when no expressions are given either (a default
    never counts as given); refuses a schedule with expressions, and one expression without the other."""
    if schedule is not None and (alpha is not None or beta is not None):
        raise LazyflowError("give either --schedule or --alpha/--beta, not both")
    if (alpha is None) != (beta is None):
        raise LazyflowError("give --schedule NAME, or both --alpha and --beta (only --"
                            f"{'alpha' if beta is None else 'beta'} was given)")
    if schedule is not None and not str(schedule).strip():
        raise LazyflowError("--schedule: empty name; give a preset, a .toml or a kernel .py file")
    return schedule if schedule is not None or alpha is not None else default


def spec_from_parts(schedule: str | None = None, *, alpha: str | None = None, beta: str | None = None,
                    sigma: str | None = None, params: Mapping[str, str] | None = None, data_var: str | None = None,
                    name: str | None = None, default: str | None = None) -> ScheduleSpec:
    """The spec that ``schedule`` (a preset, ``.toml`` or kernel ``.py``; ``params`` rebind its parameters)
    or ``alpha`` and ``beta`` (expressions in t; ``params`` are their parameters' defaults) name, with the
    diffusion ``sigma`` and the data variance ``data_var`` when given; ``default`` when neither is given."""
    schedule = chosen_schedule(schedule, alpha, beta, default)
    if schedule:
        spec = resolve(schedule)
        if params:
            spec = spec.bind(**param_numbers(params))
        if sigma:
            spec = _with_sigma(spec, sigma)
    elif alpha and beta:
        spec = from_expressions(alpha, beta, sigma or "ode", params=params or {}, name=name or "custom")
    else:
        raise LazyflowError("give --schedule NAME, or both --alpha and --beta")
    if data_var is not None:
        spec = dataclasses.replace(spec, data_var=data_variance(data_var))
    return spec


def lazy_inputs(alpha: str | None, beta: str | None, sigma: str | None) -> tuple[sp.Expr | None, sp.Expr | None,
                                                                                 sp.Expr | str | None]:
    """The given ones of ``lazyflow lazy``'s alpha, beta (expressions in t) and sigma (``ode``, ``optimal`` or
    an expression), parsed; None for each one not given."""
    def parsed(text: str | None, what: str) -> sp.Expr | None:
        return None if text is None else parse_expression(text, {}, what=what)

    sigma = sigma.strip() if sigma is not None else None
    return parsed(alpha, "alpha"), parsed(beta, "beta"), sigma if sigma in (None, "ode", "optimal") else \
        parsed(sigma, "sigma")
