"""Schedule specifications: presets, user expressions and TOML files.

A :class:`ScheduleSpec` holds alpha(t), beta(t) and the diffusion as SymPy expressions.
The diffusion is given as ``"ode"`` (sigma = 0), ``"optimal"`` (eps = eps*),
``"lazy"`` (eps = r'/2, zero drift on Gaussian data of variance v) or an expression
for sigma(t).  Named parameters (sd3's ``shift``, a TOML ``[params]`` table) stay SymPy
symbols in the expressions, each with the sign of its default value; :meth:`ScheduleSpec.substituted`
replaces them by their values.  Building a spec never evaluates user text: see :mod:`derive.parse`,
and a kernel file is read with :mod:`ast`, never imported (:func:`spec_from_kernel_file`).
"""
from __future__ import annotations

import ast
import keyword
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import sympy as sp

from ..errors import SpecError
from .parse import parse_expression
from .symbols import t, v

__all__ = ["ScheduleSpec", "SpecError", "PRESETS", "preset", "from_expressions", "from_toml",
           "spec_from_kernel_file", "resolve", "param_symbol", "DIFFUSION_KEYWORDS", "RESERVED_NAMES"]

DIFFUSION_KEYWORDS = ("ode", "optimal", "lazy")
#: names a parameter may not take: the derivation's symbols and the names a generated kernel uses
RESERVED_NAMES = frozenset({"t", "v", "t_next", "lam", "x", "m", "eta_X", "eta_Z", "torch", "math"})


def param_symbol(name: str, value: sp.Expr) -> sp.Symbol:
    """The symbol of a parameter: positive, negative or (for 0) real, after the sign of its default value."""
    if value.is_positive:
        return sp.Symbol(name, positive=True)
    if value.is_negative:
        return sp.Symbol(name, negative=True)
    return sp.Symbol(name, real=True)


@dataclass(frozen=True)
class ScheduleSpec:
    """alpha(t), beta(t) and the diffusion of an interpolant I_t = alpha Z + beta X.

    ``diffusion`` is one of ``"ode"``, ``"optimal"``, ``"lazy"`` or ``"sigma"``; in the last
    case ``sigma`` holds the expression.  ``data_var`` is v of the Gaussian oracle N(0, v I)
    (used by ``"lazy"`` and by the base variance alpha_0^2 = v of a standard schedule).
    ``boundary_tol`` lets a preset such as the score-SDE VP schedule, whose beta_0 is small
    but not zero, pass validation; it is reported, never hidden.

    ``params`` holds (name, default value) pairs; alpha, beta and sigma may contain the
    parameters as symbols (see :func:`param_symbol`).
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
        _check_data_var(self.data_var)
        names = [name for name, _ in self.params]
        if len(set(names)) != len(names):
            raise SpecError(f"parameter names repeat: {names}")
        for name, value in self.params:
            _check_param_name(name)
            if not (isinstance(value, sp.Expr) and value.is_number and value.is_real and value.is_finite):
                raise SpecError(f"parameter {name!r}: default value {value!r} is not a finite real number")
        seen: dict[str, sp.Symbol] = {}
        for label, expr in (("alpha", self.alpha), ("beta", self.beta), ("sigma", self.sigma)):
            if expr is None:
                continue
            extra = {s for s in expr.free_symbols - {t, v} if s.name not in names}
            if extra:
                allowed = ", ".join(["t", "the data variance v", *(f"parameter {n}" for n in names)])
                raise SpecError(f"{label} depends on {sorted(map(str, extra))}: only {allowed} allowed")
            for symbol in expr.free_symbols - {t, v}:
                if seen.setdefault(symbol.name, symbol) != symbol:
                    raise SpecError(f"parameter {symbol.name!r} appears as two different symbols "
                                    f"({seen[symbol.name].assumptions0} and {symbol.assumptions0})")

    @property
    def param_symbols(self) -> dict[str, sp.Symbol]:
        """{name: symbol} of the parameters, as they appear in alpha, beta and sigma."""
        found = {s.name: s for e in (self.alpha, self.beta, self.sigma) if e is not None for s in e.free_symbols}
        return {name: found.get(name, param_symbol(name, value)) for name, value in self.params}

    @property
    def param_values(self) -> dict[sp.Symbol, sp.Expr]:
        """{symbol: default value}, the substitution :meth:`substituted` makes."""
        symbols = self.param_symbols
        return {symbols[name]: value for name, value in self.params}

    def bind(self, **values: float | int | str) -> "ScheduleSpec":
        """The same schedule (same symbols) with new default values of some parameters."""
        known = dict(self.params)
        symbols = self.param_symbols
        for name, value in values.items():
            if name not in known:
                listed = ", ".join(known) or "none"
                raise SpecError(f"schedule {self.name!r} has no parameter {name!r}; its parameters: {listed}")
            number = _param_value(value, f"parameter {name!r}")
            symbol = symbols[name]
            if (symbol.is_positive and not number.is_positive) or (symbol.is_negative and not number.is_negative):
                sign = "positive" if symbol.is_positive else "negative"
                raise SpecError(f"parameter {name!r} of {self.name!r} was declared {sign} (its formulas were "
                                f"derived so); {value!r} is not: declare the schedule with that default instead")
            known[name] = number
        return replace(self, params=tuple(known.items()))

    def substituted(self) -> "ScheduleSpec":
        """The schedule with its parameters replaced by their values (``params == ()``)."""
        if not self.params:
            return self
        values = self.param_values

        def sub(expr: sp.Expr | None) -> sp.Expr | None:
            return None if expr is None else expr.xreplace(values)

        return replace(self, alpha=sub(self.alpha), beta=sub(self.beta), sigma=sub(self.sigma), params=())

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
    """Build a spec from user text, parsed safely; ``params`` are named numbers (default values),
    kept as symbols in the expressions."""
    values = {}
    for key, value in (params or {}).items():
        _check_param_name(key)
        values[key] = _param_value(value, f"parameter {key!r}")
    symbols = {key: param_symbol(key, value) for key, value in values.items()}
    a = parse_expression(alpha, symbols, what="alpha")
    b = parse_expression(beta, symbols, what="beta")
    sigma_text = str(sigma).strip()
    if sigma_text in DIFFUSION_KEYWORDS:
        diffusion, s = sigma_text, None
    else:
        diffusion, s = "sigma", parse_expression(sigma_text, symbols, what="sigma")
    if isinstance(boundary_tol, bool) or not isinstance(boundary_tol, (int, float)) or not 0 <= boundary_tol < 1:
        raise SpecError(f"boundary_tol must be a number in [0, 1), got {boundary_tol!r}")
    return ScheduleSpec(name, a, b, diffusion, s, _number(data_var, "data variance"),
                        tuple(sorted(values.items())), float(boundary_tol), description)


def _check_data_var(value) -> None:
    """The data variance v of N(0, v I): a positive finite number, or the positive symbol v itself."""
    expr = sp.sympify(value) if not isinstance(value, sp.Basic) else value
    if expr == v:
        return
    if not (isinstance(expr, sp.Expr) and expr.is_number and expr.is_real and expr.is_finite and expr.is_positive):
        raise SpecError(f"data variance must be a positive finite number (or the symbol v), got {value!r}")


def _check_param_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or keyword.iskeyword(name):
        raise SpecError(f"parameter name {name!r} is not a plain identifier")
    if name in RESERVED_NAMES:
        raise SpecError(f"parameter name {name!r} is reserved (reserved: {', '.join(sorted(RESERVED_NAMES))})")


def _param_value(value: float | int | str, what: str) -> sp.Expr:
    """A parameter value: a finite real number (int, float or a constant expression such as "1/3"),
    rounded to float64 and kept as the exact rational of that float."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{what}: {value!r} is not finite")
    if isinstance(value, str) and value.strip() == "v":
        raise SpecError(f"{what}: expected a number, got 'v'")
    number = _number(value, what)
    if not (number.is_number and number.is_real and number.is_finite):
        raise SpecError(f"{what}: {value!r} is not a finite real number")
    # the nearest float64, exactly: a kernel takes parameters as floats, and its SPEC reads back the same
    as_float = float(number)
    if not math.isfinite(as_float):
        raise SpecError(f"{what}: {value!r} is out of the float64 range")
    return sp.Rational(repr(as_float))


def _number(value: float | int | str, what: str) -> sp.Expr:
    if isinstance(value, bool):
        raise SpecError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{what}: {value!r} is not finite")
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
    except (OSError, UnicodeDecodeError) as err:   # a folder, no access, binary content
        raise SpecError(f"schedule file {str(path)!r} cannot be read: {err}") from None
    allowed = {"name", "alpha", "beta", "sigma", "data_var", "params", "description", "boundary_tol"}
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
                            description=str(data.get("description", "")),
                            boundary_tol=data.get("boundary_tol", 0.0))


_KERNEL_SPEC_KEYS = {"name": str, "alpha": str, "beta": str, "sigma": str, "data_var": str, "params": dict,
                     "boundary_tol": (int, float), "description": str}


def spec_from_kernel_file(path: str | Path) -> ScheduleSpec:
    """The spec a generated kernel was made from, read from its ``SPEC = {...}`` literal.

    The file is parsed with :mod:`ast` and the literal read with :func:`ast.literal_eval`: the
    kernel is never imported or executed, and its strings go through the safe expression parser.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"schedule file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"schedule file {str(path)!r} cannot be read: {err}") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise SpecError(f"kernel file {str(path)!r} is not valid Python: {err.msg} (line {err.lineno})") from None
    literal = None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "SPEC"):
            literal = node.value
    if literal is None:
        raise SpecError(f"kernel file {str(path)!r} has no top-level SPEC = {{...}} assignment")
    try:
        data = ast.literal_eval(literal)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise SpecError(f"kernel file {str(path)!r}: SPEC is not a plain literal") from None
    if not isinstance(data, dict) or set(data) != set(_KERNEL_SPEC_KEYS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise SpecError(f"kernel file {str(path)!r}: SPEC must be a dict with keys {sorted(_KERNEL_SPEC_KEYS)}, "
                        f"got {keys}")
    for key, kind in _KERNEL_SPEC_KEYS.items():
        if isinstance(data[key], bool) or not isinstance(data[key], kind):
            raise SpecError(f"kernel file {str(path)!r}: SPEC[{key!r}] has the wrong type "
                            f"({type(data[key]).__name__})")
    return from_expressions(data["alpha"], data["beta"], data["sigma"], params=data["params"], name=data["name"],
                            data_var=data["data_var"], description=data["description"],
                            boundary_tol=data["boundary_tol"])


def resolve(identity: str | Path) -> ScheduleSpec:
    """A preset name, the path of a ``.toml`` schedule file or of a generated ``.py`` kernel."""
    text = str(identity)
    if text.endswith(".toml"):
        return from_toml(text)
    if text.endswith(".py"):
        return spec_from_kernel_file(text)
    return preset(text)
