"""Schedule specifications: presets, user expressions and TOML files.

A :class:`ScheduleSpec` holds alpha(t), beta(t) and the diffusion as SymPy expressions.
The diffusion is given as ``"ode"`` (sigma = 0), ``"optimal"`` (eps = eps*),
``"lazy"`` (eps = r'/2, zero drift on Gaussian data of variance v) or an expression
for sigma(t).  Building a spec never evaluates user text: see :mod:`derive.parse`.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import sympy as sp

from .errors import SpecError
from .parse import parse_expression
from .symbols import t, v

__all__ = ["ScheduleSpec", "SpecError", "PRESETS", "preset", "from_expressions", "from_toml",
           "resolve", "DIFFUSION_KEYWORDS"]

DIFFUSION_KEYWORDS = ("ode", "optimal", "lazy")


@dataclass(frozen=True)
class ScheduleSpec:
    """alpha(t), beta(t) and the diffusion of an interpolant I_t = alpha Z + beta X.

    ``diffusion`` is one of ``"ode"``, ``"optimal"``, ``"lazy"`` or ``"sigma"``; in the last
    case ``sigma`` holds the expression.  ``data_var`` is v of the Gaussian oracle N(0, v I)
    (used by ``"lazy"`` and by the base variance alpha_0^2 = v of a standard schedule).
    ``boundary_tol`` lets a preset such as the score-SDE VP schedule, whose beta_0 is small
    but not zero, pass validation; it is reported, never hidden.
    """

    name: str
    alpha: sp.Expr
    beta: sp.Expr
    diffusion: str = "ode"
    sigma: sp.Expr | None = None
    data_var: sp.Expr = sp.Integer(1)
    params: tuple[tuple[str, sp.Expr], ...] = field(default=())
    boundary_tol: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.diffusion not in DIFFUSION_KEYWORDS + ("sigma",):
            raise SpecError(f"diffusion must be one of {DIFFUSION_KEYWORDS} or an expression, got {self.diffusion!r}")
        if (self.diffusion == "sigma") != (self.sigma is not None):
            raise SpecError("sigma expression given without diffusion='sigma' (or the reverse)")
        for label, expr in (("alpha", self.alpha), ("beta", self.beta), ("sigma", self.sigma)):
            if expr is None:
                continue
            extra = expr.free_symbols - {t, v}
            if extra:
                raise SpecError(f"{label} depends on {sorted(map(str, extra))}: only t (and the data variance v) is allowed")

    def with_diffusion(self, diffusion: str, sigma: sp.Expr | None = None, name: str | None = None) -> "ScheduleSpec":
        """The same schedule with another diffusion."""
        return ScheduleSpec(name or self.name, self.alpha, self.beta, diffusion, sigma, self.data_var,
                            self.params, self.boundary_tol, self.description)

    @property
    def sigma_text(self) -> str:
        return self.diffusion if self.sigma is None else sp.sstr(self.sigma)


def _spec(name: str, alpha: str, beta: str, sigma: str = "ode", params: Mapping[str, float] | None = None,
          description: str = "", boundary_tol: float = 0.0) -> ScheduleSpec:
    return from_expressions(alpha, beta, sigma, params=params, name=name, description=description,
                            boundary_tol=boundary_tol)


def from_expressions(alpha: str, beta: str, sigma: str = "ode", *, params: Mapping[str, float | str] | None = None,
                     name: str = "custom", data_var: float | str = 1, description: str = "",
                     boundary_tol: float = 0.0) -> ScheduleSpec:
    """Build a spec from user text, parsed safely; ``params`` are named numeric constants."""
    values = {}
    for key, value in (params or {}).items():
        if not key.isidentifier() or key.startswith("_"):
            raise SpecError(f"parameter name {key!r} is not a plain identifier")
        values[key] = _number(value, f"parameter {key!r}")
    a = parse_expression(alpha, values, what="alpha")
    b = parse_expression(beta, values, what="beta")
    sigma_text = str(sigma).strip()
    if sigma_text in DIFFUSION_KEYWORDS:
        diffusion, s = sigma_text, None
    else:
        diffusion, s = "sigma", parse_expression(sigma_text, values, what="sigma")
    return ScheduleSpec(name, a, b, diffusion, s, _number(data_var, "data variance"),
                        tuple(sorted(values.items())), boundary_tol, description)


def _number(value: float | int | str, what: str) -> sp.Expr:
    if isinstance(value, bool):
        raise SpecError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return sp.Integer(value) if isinstance(value, int) else sp.Rational(repr(value))
    if isinstance(value, str):
        if value.strip() == "v":
            return v  # a symbolic data variance
        expr = parse_expression(value, {}, variables={}, what=what)
        if not expr.is_number:
            raise SpecError(f"{what}: {value!r} is not a constant")
        return expr
    raise SpecError(f"{what}: expected a number, got {type(value).__name__}")


def _build_presets() -> dict[str, ScheduleSpec]:
    specs = [
        _spec("linear", "1 - t", "t", "ode", description="rectified flow / flow matching, ODE"),
        _spec("linear-sde", "1 - t", "t", "optimal", description="linear schedule with the optimal diffusion eps* = (1-t)/t"),
        _spec("vp", "cos(pi*t/2)", "sin(pi*t/2)", "ode", description="variance preserving (cosine), lazy ODE for unit-variance data"),
        _spec("vp-sde", "cos(pi*t/2)", "sin(pi*t/2)", "optimal", description="cosine schedule with the optimal diffusion"),
        _spec("pointmass", "sqrt(t*(1 - t))", "t", "1",
              description="point-mass schedule alpha^2 = beta(1-beta); sigma = 1 is optimal and lazy"),
        _spec("sd3", "shift*(1 - t)/(1 + (shift - 1)*(1 - t))", "t/(1 + (shift - 1)*(1 - t))", "ode",
              params={"shift": 3}, description="SD3/FLUX shifted linear schedule (noise level shift*s/(1+(shift-1)s))"),
        _spec("score-vp", "sqrt(1 - exp(-(1 - t)**2*(beta_max - beta_min)/2 - (1 - t)*beta_min))",
              "exp(-(1 - t)**2*(beta_max - beta_min)/4 - (1 - t)*beta_min/2)", "ode",
              params={"beta_min": 0.1, "beta_max": 20}, boundary_tol=1e-2,
              description="score-SDE VP (beta_min 0.1, beta_max 20); beta_0 = 0.0066, not 0"),
        _spec("poly", "(1 - t)**p", "1 - (1 - t)**p", "ode", params={"p": 2},
              description="polynomial schedule alpha = (1-t)^p, beta = 1 - alpha"),
    ]
    return {spec.name: spec for spec in specs}


PRESETS: dict[str, ScheduleSpec] = _build_presets()


def preset(name: str) -> ScheduleSpec:
    """A preset by name (``linear``, ``linear-sde``, ``vp``, ``vp-sde``, ``pointmass``, ``sd3``, ``score-vp``, ``poly``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SpecError(f"unknown schedule {name!r}; presets: {', '.join(PRESETS)}") from None


def from_toml(path: str | Path) -> ScheduleSpec:
    """Read a spec from TOML::

        name = "my-schedule"
        alpha = "cos(pi*t/2)**k"
        beta = "sin(pi*t/2)"
        sigma = "ode"            # or optimal, lazy, or an expression
        data_var = 1             # optional
        [params]
        k = 1
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"schedule file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"schedule file {str(path)!r} is not valid TOML: {err}") from None
    allowed = {"name", "alpha", "beta", "sigma", "data_var", "params", "description"}
    unknown = set(data) - allowed
    if unknown:
        raise SpecError(f"schedule file {str(path)!r}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    for key in ("alpha", "beta"):
        if not isinstance(data.get(key), str):
            raise SpecError(f"schedule file {str(path)!r}: {key!r} must be a string expression")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise SpecError(f"schedule file {str(path)!r}: [params] must be a table of numbers")
    return from_expressions(data["alpha"], data["beta"], str(data.get("sigma", "ode")), params=params,
                            name=str(data.get("name", path.stem)), data_var=data.get("data_var", 1),
                            description=str(data.get("description", "")))


def resolve(name_or_path: str) -> ScheduleSpec:
    """A preset name or the path of a ``.toml`` file."""
    if name_or_path.endswith(".toml"):
        return from_toml(name_or_path)
    return preset(name_or_path)
