"""Code generation: one schedule's SymPy formulas -> a plain-PyTorch kernel module.

A kernel holds the closed forms of ONE schedule, as vectorised functions of a time tensor whose
parameters (sd3's ``shift``, ...) are keyword-only arguments defaulting to the spec's values:
alpha, beta, their derivatives and sigma; log snr and its inverse; the drift coefficients K_x, K_e
of b = K_x x + K_e eta_X for the schedule's own diffusion and for sigma = 0; the parameterizations
eta_X = p x + q m when this schedule is the one a network was trained on; and the exponential-
integrator step (A, B, C) over [t, t_next] with eta_X frozen, when SymPy finds a closed form.
The runtime composes conversions between two kernels at run time: tau(t) = source.time_of_log_snr(
target.log_snr(t)) and c = (alpha_B + beta_B)(t) / (alpha_A + beta_A)(tau).

SymPy expressions are printed as torch code by :class:`derive.printer.KernelPrinter`.
The module's ``SPEC`` literal is what :func:`derive.schedule.spec_from_kernel_file` reads back
(with :mod:`ast`, never importing the file); :func:`spec_key` names cached kernels.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
import keyword
import pprint
import re
import token
import tokenize
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import sympy as sp
from sympy.printing.str import StrPrinter

from .conversion import snr_inverse, snr_symbol
from ..atomic_write import write_text_atomic
from ..errors import SpecError
from .formulas import PREDICTIONS, Formulas, GaveUp, bounded, derive, run_budgeted, simplify
from .limits import TimeLimit
from .parse import parse_expression
from .printer import KernelPrinter, unprintable
from .schedule import ScheduleSpec, preset
from .symbols import m, t, t_next, x
from .validate import boundary_value, validate

__all__ = ["ExponentialStep", "exponential_step", "render_kernel", "render_function", "write_kernel", "kernel_name",
           "kernel_spec", "spec_key", "check_shipped", "update_shipped", "SHIPPED", "SHIPPED_COMMAND", "FORMAT",
           "INTEGRATE_SECONDS", "RENDER_SECONDS", "LINE_LENGTH"]

#: version of the kernel contract (module attributes and function signatures)
FORMAT = 2
#: one attempt at int eps/alpha^2 dt for the exponential step (then: no exponential step)
INTEGRATE_SECONDS = 20.0
#: budget of one render_kernel (validation, derivations, snr inverse, exponential steps included), in
#: seconds on 2 CPU cores; beyond it the kernel is refused (GaveUp: "... gave up after N s")
RENDER_SECONDS = 30.0
LINE_LENGTH = 110
#: the presets whose kernels ship in runtime/kernels
SHIPPED = ("linear", "linear-sde", "vp", "vp-sde", "pointmass", "sd3", "score-vp", "poly")
SHIPPED_COMMAND = "lazyflow emit --schedule {schedule} --out-dir runtime/kernels --force"

#: the argument of time_of_log_snr
lam = sp.Symbol("lam", real=True)


class _finite_or(sp.Function):  # noqa: N801 - named as the kernel helper it prints to
    """_finite_or(value, fallback) in a kernel: ``value`` where finite, else ``fallback`` (log space).
    KernelPrinter prints it by name (printer.FUNCTION_TEMPLATES)."""

    nargs = 2


@dataclass(frozen=True)
class ExponentialStep:
    """x(t_next) = A x(t) + B eta_X + C xi with eta_X frozen over the step, or why not."""

    A: sp.Expr | None
    B: sp.Expr | None
    C: sp.Expr | None
    reason: str = ""


def kernel_name(name: str) -> str:
    """A module name for a schedule name: ``linear-sde`` -> ``linear_sde``."""
    ident = re.sub(r"\W", "_", name.strip()).strip("_").lower()
    if not ident or ident[0].isdigit() or keyword.iskeyword(ident):
        raise SpecError(f"cannot make a kernel module name from {name!r}")
    return ident


def exponential_step(spec: ScheduleSpec) -> ExponentialStep:
    """Integrate dx = (K_x x + K_e eta) dt + sigma dW exactly over [t, t'] for frozen eta.

    With G = int eps/alpha^2 dt (G = log snr for the optimal diffusion, 0 for an ODE) the drift is
    K_x = alpha'/alpha - G', and exp(-int K_x) K_e = (snr e^G)'.  With D = exp(G(t) - G(t')):
    A = alpha(t')/alpha(t) D,  B = beta(t') - alpha(t') snr(t) D,  C = alpha(t') sqrt(1 - D^2).
    (G = 0: the DDIM step; point mass: the Brownian-bridge step.)  Parameters stay symbols.
    """
    f = derive(spec)
    if f.eps == 0:
        G = sp.Integer(0)
    elif spec.diffusion == "optimal" or simplify(f.eps - f.eps_star) == 0:
        G = f.log_snr
    else:
        try:
            with bounded(INTEGRATE_SECONDS):
                G = sp.integrate(simplify(f.eps / f.alpha**2), t)
        except (TimeLimit, NotImplementedError) as err:
            G = sp.Integral(f.eps / f.alpha**2, t)
            reason = str(err)
        else:
            reason = "unevaluated integral"
        if G.has(sp.Integral):
            return ExponentialStep(None, None, None, reason=(
                f"exponential integrator unavailable for {spec.name!r}: SymPy found no closed form of "
                f"int eps/alpha^2 dt = int {sp.sstr(simplify(f.eps / f.alpha**2))} dt ({reason})"))
    # log(a) with a < 0 on (0, 1) differs from log(-a) by a constant, which cancels in G(t) - G(t')
    defaults = spec.param_values
    G = G.replace(sp.log, lambda arg: sp.log(-arg) if _negative_inside(arg, defaults) else sp.log(arg))
    later = {t: t_next}
    D = simplify(sp.exp(G - G.subs(later)))
    A = simplify(f.alpha.subs(later) / f.alpha * D)
    B = simplify(f.beta.subs(later) - f.alpha.subs(later) * f.snr * D)
    C = simplify(f.alpha.subs(later) * sp.sqrt(1 - D**2))
    return ExponentialStep(A, B, C)


def _negative_inside(expr: sp.Expr, defaults: dict) -> bool:
    value = expr.xreplace(defaults).subs(t, sp.Rational(1, 2))
    return bool(value.is_number and value.is_negative)


def _sign_inside(expr: sp.Expr, defaults: dict) -> int:
    """The sign (1 or -1) of ``expr`` at t = 1/2 with the parameters at their defaults; 0 if unknown.
    A factor of a schedule that is positive on (0, 1) has no zero there, so its sign is constant."""
    value = expr.xreplace(defaults).subs(t, sp.Rational(1, 2))
    if value.is_number:
        value = sp.N(value, 15)
        if value.is_real and value != 0:
            return 1 if value > 0 else -1
    return 0


def log_space(expr: sp.Expr, defaults: dict) -> sp.Expr:
    """log(expr) for an ``expr`` that is positive on (0, 1), with the logarithm taken inside so that no
    intermediate value overflows: log(e^u) = u, log(a^p) = p log|a|, log(a b) = log|a| + log|b| (|a| is
    a or -a by the sign of the factor inside, an even number of factors being negative), and
    log(e^u - 1) = u + log(1 - e^-u).  Falls back to log(expr) where a sign is unknown or odd."""
    if isinstance(expr, sp.exp):
        return expr.args[0]
    if isinstance(expr, sp.Pow) and expr.exp.is_real:
        base_sign = _sign_inside(expr.base, defaults)
        if base_sign > 0 or (base_sign < 0 and expr.exp.is_integer):
            return expr.exp * log_space(base_sign * expr.base, defaults)
    if isinstance(expr, sp.Mul):
        signs = [_sign_inside(factor, defaults) for factor in expr.args]
        if 0 not in signs and signs.count(-1) % 2 == 0:
            return sp.Add(*(log_space(sign * factor, defaults) for sign, factor in zip(signs, expr.args)))
    if expr.is_Number and expr.is_positive:
        return sp.log(expr)
    if isinstance(expr, sp.Add) and len(expr.args) == 2 and sp.S.NegativeOne in expr.args:
        other = expr.args[0] if expr.args[1] == -1 else expr.args[1]
        if isinstance(other, sp.exp):         # e^u - 1 > 0: u > 0
            u = other.args[0]
            return u + sp.log(1 - sp.exp(-u))
    return sp.log(expr)


@dataclass(frozen=True)
class LogForms:
    """log alpha, log beta and their t-derivatives in log space (:func:`log_space`): the forms a kernel
    falls back on where a closed form overflows float64 (derive/MATH.md §9)."""

    log_alpha: sp.Expr
    log_beta: sp.Expr
    d_log_alpha: sp.Expr
    d_log_beta: sp.Expr

    @property
    def log_snr(self) -> sp.Expr:
        return self.log_beta - self.log_alpha

    @property
    def d_log_snr(self) -> sp.Expr:
        return self.d_log_beta - self.d_log_alpha


def log_forms(spec: ScheduleSpec) -> LogForms:
    f, defaults = derive(spec), spec.param_values
    log_alpha, log_beta = log_space(f.alpha, defaults), log_space(f.beta, defaults)
    return LogForms(log_alpha, log_beta, sp.diff(log_alpha, t), sp.diff(log_beta, t))


def _drift_in_log_space(spec: ScheduleSpec, logs: LogForms) -> tuple[sp.Expr, sp.Expr]:
    """(K_x, K_e) = ((log alpha)' - g, beta ((log snr)' + g)) with g = eps/alpha^2 (MATH.md §1)."""
    f = derive(spec)
    if f.eps == 0:
        g = sp.Integer(0)
    elif spec.diffusion == "optimal":
        g = logs.d_log_snr
    else:
        g = f.eps * sp.exp(-2 * logs.log_alpha)
    return logs.d_log_alpha - g, sp.exp(logs.log_beta) * (logs.d_log_snr + g)


def _eta_in_log_space(logs: LogForms, prediction: str) -> tuple[sp.Expr, sp.Expr]:
    """(p, q) of §2 through log alpha and log beta: W = alpha^2 snr' = alpha beta (log snr)'."""
    if prediction == "velocity":
        q = sp.exp(-logs.log_beta) / logs.d_log_snr
        return -logs.d_log_alpha * q, q
    if prediction == "noise":
        return sp.exp(-logs.log_beta), -sp.exp(-logs.log_snr)
    if prediction == "score":
        return sp.exp(-logs.log_beta), sp.exp(2 * logs.log_alpha - logs.log_beta)
    return sp.Integer(0), sp.Integer(1)


def _guarded(exprs: list[sp.Expr], fallbacks: list[sp.Expr]) -> list[sp.Expr]:
    """Each closed form that contains an exponential (which may overflow at other parameter values or
    near the ends) wrapped as _finite_or(closed form, log-space form); the others as they are."""
    return [_finite_or(e, fb) if e.has(sp.exp) and sp.sympify(fb) != e else e for e, fb in zip(exprs, fallbacks)]


def _eta_coefficients(source: ScheduleSpec, prediction: str) -> tuple[sp.Expr, sp.Expr]:
    """(p, q) with eta_X = p x + q m in the source frame."""
    eta_x, _ = derive(source).to_eta(prediction)
    return simplify(sp.diff(eta_x, x)), simplify(sp.diff(eta_x, m))


def _singular_at_start(spec: ScheduleSpec) -> bool:
    f = derive(spec)
    if f.eps == 0:
        return False
    try:
        value = boundary_value(f.eps, 0)
    except GaveUp:
        raise
    except (TimeLimit, NotImplementedError, SpecError):
        return True
    return not (value.is_finite and value.is_real)


# --- the SPEC literal ---------------------------------------------------------------------------

def kernel_spec(spec: ScheduleSpec) -> dict:
    """The ``SPEC`` dict of a kernel: strings the safe parser reads back into ``spec``.

    Refuses (:class:`SpecError` naming the field) when a string would not parse back to the same
    expression, e.g. for a float inside an expression built outside the parser.
    """
    if spec.data_var.free_symbols:
        raise SpecError(f"schedule {spec.name!r}: a kernel needs a numeric data variance, got {spec.data_var}")
    symbols = spec.param_symbols
    strings = {"alpha": _spec_string(spec.alpha), "beta": _spec_string(spec.beta)}
    if spec.sigma is not None:
        strings["sigma"] = _spec_string(spec.sigma)
    for field, text in strings.items():
        try:
            back = parse_expression(text, symbols, what=field)
        except SpecError as err:
            raise SpecError(f"schedule {spec.name!r}: {field} = {text!r} does not parse back ({err})") from None
        if back != getattr(spec, field):
            raise SpecError(f"schedule {spec.name!r}: {field} = {text!r} parses back to a different expression "
                            f"({sp.srepr(back)} != {sp.srepr(getattr(spec, field))})")
    data_var = sp.sstr(spec.data_var)
    if parse_expression(data_var, {}, variables={}, what="data_var") != spec.data_var:
        raise SpecError(f"schedule {spec.name!r}: data_var = {data_var!r} does not parse back to itself")
    params = {name: float(value) for name, value in spec.params}
    for name, value in spec.params:
        if sp.Rational(repr(params[name])) != value:
            raise SpecError(f"schedule {spec.name!r}: parameter {name!r} = {value} is not a float64 number")
    return {"name": spec.name, "alpha": strings["alpha"], "beta": strings["beta"],
            "sigma": spec.diffusion if spec.sigma is None else strings["sigma"], "data_var": data_var,
            "params": params, "boundary_tol": float(spec.boundary_tol), "description": spec.description}


class _SpecPrinter(StrPrinter):
    """sstr, with the functions SymPy makes from the parser's whitelist written back in it: cot(x) (from
    tan(pi/2 - x)) as tan(pi/2 - x), which the parser reads back into the same cot(x)."""

    def _print_cot(self, expr):
        return f"tan(pi/2 - ({self._print(expr.args[0])}))"


def _spec_string(expr: sp.Expr) -> str:
    text = sp.sstr(expr)
    if expr.has(sp.cot):
        text = _SpecPrinter({"order": None}).doprint(expr)
    return text


def spec_key(spec: ScheduleSpec) -> str:
    """A hex key (16 characters) of the kernel a spec gives: its SPEC, FORMAT and SymPy's major.minor."""
    minor = ".".join(sp.__version__.split(".")[:2])
    payload = json.dumps({"spec": kernel_spec(spec), "format": FORMAT, "sympy": minor}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- rendering ----------------------------------------------------------------------------------

def render_kernel(spec: ScheduleSpec, *, name: str, command: str) -> str:
    """The source text of the kernel module of ``spec``; ``command`` regenerates it (header).

    Bounded: within RENDER_SECONDS, else :class:`formulas.GaveUp` (a SpecError, "gave up after N s")."""
    return run_budgeted(RENDER_SECONDS, f"generating the kernel of {spec.name!r}", _render, spec, name, command)


#: fn(name, args, doc, outputs) -> the text of one kernel function (render_function with the printer and
#: the parameters bound)
_FunctionWriter = Callable[[str, tuple[sp.Symbol, ...], str, list[sp.Expr]], str]


@lru_cache(maxsize=64)
def _render(spec: ScheduleSpec, name: str, command: str) -> str:
    """render_kernel's text, cached: the header, the module constants, the helpers, then the functions."""
    spec_dict = kernel_spec(spec)
    report = validate(spec)                     # at the parameter defaults
    at_defaults = spec.substituted()
    f, f0 = derive(spec), derive(at_defaults)
    defaults = tuple(spec.param_values.items())
    stochastic = f0.eps != 0
    expo = exponential_step(spec)
    ode_expo = exponential_step(spec.with_diffusion("ode")) if f.eps != 0 else expo
    ode = derive(spec.with_diffusion("ode"))
    logs = log_forms(spec)
    inverse, inverse_reason = _printable_snr_inverse(f.snr, defaults)
    expo, ode_expo = (_printable_step(step) for step in (expo, ode_expo))
    params = [(pname, float(value)) for pname, value in spec.params]

    constants = _assignments({
        "FORMAT": repr(FORMAT),
        "NAME": repr(name),
        "SPEC": _literal("SPEC = ", spec_dict),
        "PARAMS": repr(dict(params)),
        "PREDICTIONS": repr(PREDICTIONS),
        "DIFFUSION": repr(spec.diffusion),
        "STOCHASTIC": repr(bool(stochastic)),
        "POINT_MASS": repr(report.kind == "pointmass"),
        "SINGULAR_START": repr(_singular_at_start(at_defaults)),
        "SNR_INVERSE": repr("closed form" if inverse is not None else "numeric"),
        "EXPONENTIAL": _literal("EXPONENTIAL = ", expo.reason or "closed form"),
    })
    fn: _FunctionWriter = partial(render_function, KernelPrinter(), params=params)
    params_doc = " Parameters are keyword-only." if params else ""
    fns = [*_time_functions(fn, f, logs, inverse, inverse_reason, params_doc),
           *_drift_functions(fn, spec, f, ode, logs),
           *_step_functions(fn, expo, ode_expo)]
    text = "".join([_header(name, command), constants, _HELPERS, "\n\n".join(fns)])
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def _assignments(values: dict[str, str]) -> str:
    """``KEY = value`` lines (a value that already starts with ``KEY = `` as it is)."""
    lines = [value if value.startswith(f"{key} = ") else f"{key} = {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _printable_snr_inverse(snr: sp.Expr, defaults: tuple) -> tuple[sp.Expr | None, str]:
    """(t as a function of S = snr(t), "") when SymPy finds it and torch can compute it, else (None, why not)."""
    inverse = snr_inverse(snr, defaults)
    if inverse is None:
        return None, (f"SymPy found no closed-form inverse of the snr within {_solve_seconds()} s: the runtime "
                      "inverts log_snr numerically")
    missing = unprintable(inverse)
    if missing:
        return None, (f"the closed-form inverse of the snr uses a function torch lacks "
                      f"({missing}): the runtime inverts log_snr numerically")
    return inverse, ""


def _time_functions(fn: _FunctionWriter, f: Formulas, logs: LogForms, inverse: sp.Expr | None,
                    inverse_reason: str, params_doc: str) -> list[str]:
    """``schedule``, ``log_snr`` and ``time_of_log_snr`` (None, with the reason, without a closed form)."""
    fns = [
        fn("schedule", (t,), f"(alpha, beta, alpha', beta', sigma) at times t.{params_doc}",
           [f.alpha, f.beta, f.d_alpha, f.d_beta, f.sigma]),
        fn("log_snr", (t,), "log snr = log(beta) - log(alpha) at times t, in log space.", [logs.log_snr]),
    ]
    if inverse is None:
        return [*fns, _comment_line("time_of_log_snr = None", inverse_reason)]
    return [*fns, fn("time_of_log_snr", (lam,), "The time t with log_snr(t) = lam.",
                     [inverse.subs(snr_symbol, sp.exp(lam))])]


def _drift_functions(fn: _FunctionWriter, spec: ScheduleSpec, f: Formulas, ode: Formulas,
                     logs: LogForms) -> list[str]:
    """``drift``, ``ode_drift`` and ``eta_<prediction>`` for each prediction, guarded by their log-space forms."""
    fns = [
        fn("drift", (t,), "(K_x, K_e): drift b = K_x x + K_e eta_X of this schedule's diffusion.",
           _guarded([f.drift_x, f.drift_eta], _drift_in_log_space(spec, logs))),
        fn("ode_drift", (t,), "(K_x, K_e) of the probability-flow ODE (sigma = 0).",
           _guarded([ode.drift_x, ode.drift_eta], _drift_in_log_space(spec.with_diffusion("ode"), logs))),
    ]
    for prediction in PREDICTIONS:
        p, q = _eta_coefficients(spec, prediction)
        fns.append(fn(f"eta_{prediction}", (t,),
                      f"(p, q): eta_X = p x + q m for a model trained on this schedule, {prediction} output m.",
                      _guarded([p, q], _eta_in_log_space(logs, prediction))))
    return fns


def _step_functions(fn: _FunctionWriter, expo: ExponentialStep, ode_expo: ExponentialStep) -> list[str]:
    """``exponential`` and ``ode_exponential`` (None, with the reason, without a closed form)."""
    fns = []
    for fname, step in (("exponential", expo), ("ode_exponential", ode_expo)):
        if step.reason:
            fns.append(_comment_line(f"{fname} = None", step.reason))
        else:
            fns.append(fn(fname, (t, t_next), "(A, B, C): x(t_next) = A x(t) + B eta_X + C xi, eta_X frozen.",
                          [step.A, step.B, step.C]))
    return fns


def _printable_step(step: ExponentialStep) -> ExponentialStep:
    """``step``, or no step (with the reason) when its closed form uses a function torch lacks."""
    if step.reason:
        return step
    for expr in (step.A, step.B, step.C):
        missing = unprintable(expr)
        if missing:
            return ExponentialStep(None, None, None, reason=(
                f"exponential integrator unavailable: its closed form uses {missing}, which torch lacks"))
    return step


def _solve_seconds() -> float:
    from . import conversion

    return conversion.SOLVE_SECONDS


def _header(name: str, command: str) -> str:
    doc = f'"""Kernel {name!r}: one schedule\'s closed forms for the lazyflow runtime (plain PyTorch, no SymPy)."""'
    if len(doc) > LINE_LENGTH:
        doc = (f'"""Kernel {name!r}: one schedule\'s closed forms for the lazyflow runtime\n'
               '(plain PyTorch, no SymPy)."""')
    return (f"# Generated by lazyflow.derive.codegen (format {FORMAT}) with SymPy {sp.__version__}. DO NOT EDIT.\n"
            "# Regenerate with:\n"
            f"{_command_comment(command)}\n"
            f"{doc}\n"
            "import torch\n\n")


def _command_comment(command: str) -> str:
    """``#   command`` broken before its options (with shell continuations) to fit the line length."""
    words = re.split(r" (?=--)", command)
    lines, current = [], "#   " + words[0]
    for word in words[1:]:
        if len(current) + 1 + len(word) + 2 > LINE_LENGTH:
            lines.append(current + " \\")
            current = "#     " + word
        else:
            current += " " + word
    return "\n".join([*lines, current])


def _comment_line(code: str, reason: str) -> str:
    """``code  # reason``, the reason continued on comment lines when long."""
    words = reason.split(" ")
    lines, current = [], f"{code}  # {words[0]}"
    for word in words[1:]:
        if len(current) + 1 + len(word) > LINE_LENGTH:
            lines.append(current)
            current = "# " + word
        else:
            current += " " + word
    return "\n".join([*lines, current]) + "\n"


def _literal(prefix: str, value) -> str:
    """``prefix`` followed by the literal, wrapped by pprint to the line length."""
    text = pprint.pformat(value, width=LINE_LENGTH - len(prefix), sort_dicts=False)
    return prefix + text.replace("\n", "\n" + " " * len(prefix))


_HELPERS = '''

def _full(value, like):
    """``value`` (a number or a parameter tensor) broadcast to the shape, dtype and device of ``like``."""
    return torch.zeros_like(like) + value


def _param(value, like):
    """A parameter as a tensor of the dtype and device of ``like`` (it broadcasts against ``like``)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _log1p_exp(value):
    """log(1 + exp(value)), finite for every finite value."""
    return torch.logaddexp(value, torch.zeros_like(value))


def _finite_or(value, fallback):
    """``value`` where it is finite, else ``fallback``: the same quantity computed from log alpha and
    log beta, for where the closed form overflows float64 (derive/MATH.md §9)."""
    return torch.where(torch.isfinite(value), value, fallback)


'''


def render_function(printer: KernelPrinter, name: str, args: tuple[sp.Symbol, ...], doc: str,
                    outputs: list[sp.Expr], params: Sequence[tuple[str, float]] = ()) -> str:
    """The source of a torch function ``name`` of the tensors ``args`` (and of the keyword-only ``params``,
    (name, default) pairs) returning ``outputs`` after CSE, printed by ``printer``."""
    outputs = [sp.sympify(e) for e in outputs]
    replacements, reduced = _inline_scalar_constants(*sp.cse(outputs, symbols=sp.numbered_symbols("_c")))
    first = str(args[0])
    names = [str(a) for a in args]
    if params:
        names += ["*", *(f"{pname}={value!r}" for pname, value in params)]
    signature = f"def {name}({', '.join(names)}):"
    if len(signature) > LINE_LENGTH:
        signature = "\n".join([f"def {name}(", *(f"    {n}," for n in names), "):"])
    lines = [signature, f'    """{doc}"""']
    used = set().union(*(e.free_symbols for e in reduced), *(v.free_symbols for _, v in replacements))
    for pname, _ in params:
        if any(s.name == pname for s in used):
            lines.append(f"    {pname} = _param({pname}, {first})")
    timed = set(args)     # symbols whose value depends on the tensor arguments
    for symbol, value in replacements:
        if value.free_symbols & timed:
            timed.add(symbol)
        lines += _statement(f"    {symbol} = ", printer.doprint(value))
    printed = []
    for expr in reduced:
        text = printer.doprint(expr)
        printed.append(text if expr.free_symbols & timed else f"_full({text}, {first})")
    if len(printed) == 1:
        lines += _statement("    return ", printed[0])
    else:
        one_line = f"    return ({', '.join(printed)})"
        if len(one_line) <= LINE_LENGTH:
            lines.append(one_line)
        else:
            lines.append("    return (")
            for text in printed:
                wrapped = _wrap(text, LINE_LENGTH - 8 - 1, LINE_LENGTH - 12)
                lines.append("        " + wrapped[0])
                lines += ["            " + rest for rest in wrapped[1:]]
                lines[-1] += ","
            lines.append("    )")
    return "\n".join(lines) + "\n"


def _inline_scalar_constants(replacements: list, reduced: list) -> tuple[list, list]:
    """Put back the CSE constants (plain Python floats in the kernel) that would reach a torch function or
    power on their own, e.g. ``torch.pow(_c1 + 1, 2)`` with ``_c1 = -cosh(1)``: a constant expression is
    printed as one float literal instead."""
    while True:
        numeric: dict[sp.Symbol, sp.Expr] = {}
        for symbol, value in replacements:
            if value.free_symbols <= set(numeric):
                numeric[symbol] = value
        inline = set()
        for expr in [value for _, value in replacements] + list(reduced):
            for node in sp.preorder_traversal(expr):
                if isinstance(node, (sp.Pow, sp.Function)) and node.free_symbols and node.free_symbols <= set(numeric):
                    inline |= node.free_symbols
        if not inline:
            return replacements, reduced
        values = {symbol: numeric[symbol] for symbol in inline}
        kept = []
        for symbol, value in replacements:
            value = value.xreplace(values)
            if symbol in inline:
                values[symbol] = value
            else:
                kept.append((symbol, value))
        values = {symbol: value.xreplace(values) for symbol, value in values.items()}
        replacements, reduced = kept, [e.xreplace(values) for e in reduced]


def _statement(prefix: str, text: str) -> list[str]:
    """``prefix + text``; when too long, ``prefix (`` with ``text`` wrapped inside the parentheses."""
    if len(prefix) + len(text) <= LINE_LENGTH:
        return [prefix + text]
    indent = " " * (len(prefix) - len(prefix.lstrip()))
    inner = indent + "    "
    wrapped = _wrap(text, LINE_LENGTH - len(inner), LINE_LENGTH - len(inner))
    return [prefix + "(", *(inner + line for line in wrapped), indent + ")"]


def _wrap(text: str, first_width: int, width: int) -> list[str]:
    """Break printed code (meant to sit inside parentheses) between tokens into lines of at most
    ``first_width`` then ``width`` characters, preferring breaks before + and - at a shallow depth."""
    if len(text) <= first_width:
        return [text]
    points = []       # (position, depth, rank): a line may start at ``position``
    depth = 0
    previous = None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (token.NEWLINE, token.NL, token.ENDMARKER, token.INDENT, token.DEDENT):
            continue
        col = tok.start[1]
        if tok.string in ")]}":
            depth -= 1
        elif col > 0 and previous not in ("(", "[", "{", ".") and tok.string not in (",", "(", "**", "."):
            if tok.string in ("+", "-") and previous is not None and previous not in ("*", "/", "**", ","):
                rank = 0
            elif previous == ",":
                rank = 1
            elif tok.string in ("*", "/"):
                rank = 2
            else:
                rank = 3
            if previous != "**":
                points.append((col, depth, rank))
        if tok.string in "([{" and tok.type == token.OP:
            depth += 1
        previous = tok.string
    lines, start, limit = [], 0, first_width
    while len(text) - start > limit:
        window = [p for p in points if start < p[0] <= start + limit]
        if not window:
            break
        late = [p for p in window if p[0] >= start + limit // 2] or window
        pos = min(late, key=lambda p: (p[1], p[2], -p[0]))[0]
        lines.append(text[start:pos].rstrip())
        start = pos
        limit = width
    lines.append(text[start:].strip())
    return lines


# --- writing and the shipped kernels --------------------------------------------------------------

def write_kernel(spec: ScheduleSpec, out_dir: str | Path, *, name: str | None = None, command: str,
                 force: bool = False) -> Path:
    """Render and write ``<out_dir>/<module>.py`` (module = :func:`kernel_name` of ``name or spec.name``).

    Refuses to overwrite an existing file unless ``force``; returns the path.
    """
    module = kernel_name(name or spec.name)
    path = Path(out_dir) / f"{module}.py"
    if path.exists() and not force:
        raise SpecError(f"kernel file {str(path)!r} exists; pass --force to overwrite")
    text = render_kernel(spec, name=module, command=command)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


def _shipped_text(schedule: str) -> str:
    command = SHIPPED_COMMAND.format(schedule=schedule)
    return render_kernel(preset(schedule), name=kernel_name(schedule), command=command)


def check_shipped(folder: str | Path) -> dict[str, str]:
    """{module: unified diff} for each shipped kernel in ``folder`` that differs from what the generator
    writes today (the first header line, which names SymPy's patch version, is not compared)."""
    diffs = {}
    for schedule in SHIPPED:
        module = kernel_name(schedule)
        path = Path(folder) / f"{module}.py"
        want = _shipped_text(schedule).splitlines(keepends=True)[1:]
        have = path.read_text().splitlines(keepends=True)[1:] if path.exists() else []
        if want != have:
            diffs[module] = "".join(difflib.unified_diff(have, want, f"{path} (committed)", f"{path} (generated)"))
    return diffs


def update_shipped(folder: str | Path) -> list[Path]:
    """Write every shipped kernel into ``folder``; returns the paths."""
    return [write_kernel(preset(schedule), folder, name=kernel_name(schedule),
                         command=SHIPPED_COMMAND.format(schedule=schedule), force=True) for schedule in SHIPPED]
