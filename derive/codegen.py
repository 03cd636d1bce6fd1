"""Code generation: SymPy formulas -> a plain-PyTorch kernel module in ``runtime/kernels``.

A kernel holds, for one (target schedule, source schedule) pair, vectorised functions of a
time tensor: the target's alpha, beta, their derivatives and sigma; log snr of both schedules;
the time map tau(t) and scale c(t) to the source (DESIGN.md section 3); the drift coefficients
K_x, K_e of b = K_x x + K_e eta_X; the source parameterizations eta_X = p x + q m; and the
exponential-integrator step (A, B, C) over [t, t_next] with eta_X frozen, when SymPy finds a
closed form.  The runtime composes each integrator's affine update x' = A x + B m + C xi from these.
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

import sympy as sp
from sympy.printing.pytorch import TorchPrinter

from .conversion import convert
from .errors import SpecError
from .formulas import PREDICTIONS, derive, simplify
from .limits import TimeLimit, time_limit
from .schedule import ScheduleSpec
from .symbols import m, t, t_next, x
from .validate import boundary_value, validate

__all__ = ["KernelPrinter", "ExponentialStep", "exponential_step", "render_kernel", "write_kernel", "kernel_name",
           "INTEGRATE_SECONDS"]

INTEGRATE_SECONDS = 20.0


class KernelPrinter(TorchPrinter):
    """TorchPrinter that prints numeric constants as float literals (``torch.sqrt(2)`` fails on ints)."""

    def _print(self, expr, **kwargs):
        if isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Integer and expr.is_real:
            return repr(float(sp.N(expr, 20)))
        return super()._print(expr, **kwargs)

    def _print_Abs(self, expr):
        return f"torch.abs({self._print(expr.args[0])})"

    def _print_sign(self, expr):
        return f"torch.sign({self._print(expr.args[0])})"


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
    (G = 0: the DDIM step; point mass: the Brownian-bridge step.)
    """
    f = derive(spec)
    if f.eps == 0:
        G = sp.Integer(0)
    elif spec.diffusion == "optimal" or simplify(f.eps - f.eps_star) == 0:
        G = f.log_snr
    else:
        try:
            with time_limit(INTEGRATE_SECONDS):
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
    G = G.replace(sp.log, lambda arg: sp.log(-arg) if _negative_inside(arg) else sp.log(arg))
    later = {t: t_next}
    D = simplify(sp.exp(G - G.subs(later)))
    A = simplify(f.alpha.subs(later) / f.alpha * D)
    B = simplify(f.beta.subs(later) - f.alpha.subs(later) * f.snr * D)
    C = simplify(f.alpha.subs(later) * sp.sqrt(1 - D**2))
    return ExponentialStep(A, B, C)


def _negative_inside(expr: sp.Expr) -> bool:
    value = expr.subs(t, sp.Rational(1, 2))
    return bool(value.is_number and value.is_negative)


def _eta_coefficients(source: ScheduleSpec, prediction: str) -> tuple[sp.Expr, sp.Expr]:
    """(p, q) with eta_X = p x + q m in the source frame."""
    eta_x, _ = derive(source).to_eta(prediction)
    return simplify(sp.diff(eta_x, x)), simplify(sp.diff(eta_x, m))


def _singular_at_start(spec: ScheduleSpec) -> bool:
    f = derive(spec)
    if f.eps == 0:
        return False
    try:
        with time_limit(INTEGRATE_SECONDS):
            value = boundary_value(f.eps, 0)
    except (TimeLimit, NotImplementedError):
        return True
    return not (value.is_finite and value.is_real)


def _function(printer: KernelPrinter, name: str, args: str, doc: str, outputs: list[sp.Expr]) -> str:
    """A torch function of the given tensor arguments returning ``outputs`` after CSE."""
    replacements, reduced = sp.cse([sp.sympify(e) for e in outputs], symbols=sp.numbered_symbols("_c"))
    lines = [f"def {name}({args}):", f'    """{doc}"""']
    first = args.split(",")[0].strip()
    for symbol, value in replacements:
        lines.append(f"    {symbol} = {printer.doprint(value)}")
    printed = []
    for expr in reduced:
        text = printer.doprint(expr)
        printed.append(text if expr.free_symbols else f"_full({text}, {first})")
    lines.append(f"    return {printed[0]}" if len(printed) == 1 else f"    return ({', '.join(printed)})")
    return "\n".join(lines) + "\n"


def _spec_strings(spec: ScheduleSpec) -> dict[str, str]:
    return {"alpha": sp.sstr(spec.alpha), "beta": sp.sstr(spec.beta), "diffusion": spec.diffusion,
            "sigma": sp.sstr(derive(spec).sigma)}


def render_kernel(target: ScheduleSpec, source: ScheduleSpec, *, name: str, command: str) -> str:
    """The source text of the kernel module for sampling a ``source``-trained model in ``target``."""
    report = validate(target)
    validate(source)
    ft, fs = derive(target), derive(source)
    conversion = convert(source, target)
    printer = KernelPrinter()
    expo = exponential_step(target)
    ode_expo = exponential_step(target.with_diffusion("ode")) if ft.eps != 0 else expo
    ode_drift = derive(target.with_diffusion("ode"))
    parts = [_HEADER.format(name=name, version=sp.__version__, command=command)]
    meta = {
        "NAME": repr(name),
        "SOURCE": repr(source.name),
        "TARGET": repr(target.name),
        "PREDICTIONS": repr(PREDICTIONS),
        "DIFFUSION": repr(target.diffusion),
        "STOCHASTIC": repr(ft.eps != 0),
        "POINT_MASS": repr(report.kind == "pointmass"),
        "SINGULAR_START": repr(_singular_at_start(target)),
        "TIME_MAP": repr("closed form" if conversion.closed_form else "numeric"),
        "EXPONENTIAL": repr(expo.reason or "closed form"),
        "SPEC": repr(_spec_strings(target)),
        "SOURCE_SPEC": repr(_spec_strings(source)),
    }
    parts.append("\n".join(f"{key} = {value}" for key, value in meta.items()) + "\n\n")
    parts.append(_HELPERS)
    fns = [
        _function(printer, "schedule", "t", "Target (alpha, beta, alpha', beta', sigma) at times t.",
                  [ft.alpha, ft.beta, ft.d_alpha, ft.d_beta, ft.sigma]),
        _function(printer, "log_snr", "t", "Target log snr = log(beta/alpha).", [ft.log_snr]),
        _function(printer, "source_schedule", "t", "Source (alpha, beta) at source times t.", [fs.alpha, fs.beta]),
        _function(printer, "source_log_snr", "t", "Source log snr at source times t.", [fs.log_snr]),
        _function(printer, "drift", "t", "(K_x, K_e): drift b = K_x x + K_e eta_X of the target diffusion.",
                  [ft.drift_x, ft.drift_eta]),
        _function(printer, "ode_drift", "t", "(K_x, K_e) of the probability-flow ODE (sigma = 0).",
                  [ode_drift.drift_x, ode_drift.drift_eta]),
    ]
    if conversion.closed_form:
        fns.append(_function(printer, "time_map", "t", "Source time tau(t) with snr_source(tau) = snr_target(t).",
                             [conversion.time_map]))
        fns.append(_function(printer, "scale", "t", "Scale c(t): I_target(t) = c(t) I_source(tau(t)) in law.",
                             [conversion.scale]))
    else:
        fns.append("time_map = None  # no closed form: the runtime inverts source_log_snr numerically\n"
                   "scale = None\n")
    for prediction in PREDICTIONS:
        p, q = _eta_coefficients(source, prediction)
        fns.append(_function(printer, f"eta_{prediction}", "t",
                             f"(p, q): eta_X = p x + q m for a {prediction}-prediction source model at source times t.",
                             [p, q]))
    for fname, step in (("exponential", expo), ("ode_exponential", ode_expo)):
        if step.reason:
            fns.append(f"{fname} = None  # {step.reason}\n")
        else:
            fns.append(_function(printer, fname, "t, t_next",
                                 "(A, B, C): x(t_next) = A x(t) + B eta_X + C xi, eta_X frozen over the step.",
                                 [step.A, step.B, step.C]))
    parts.append("\n\n".join(fns))
    return "".join(parts)


def write_kernel(target: ScheduleSpec, source: ScheduleSpec, out_dir: str | Path, *, name: str | None = None,
                 command: str) -> Path:
    """Render and write ``<out_dir>/<name>.py``; returns the path."""
    module = kernel_name(name or target.name)
    path = Path(out_dir) / f"{module}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_kernel(target, source, name=module, command=command))
    return path


_HEADER = '''# Generated by lazyflow's derive.codegen with SymPy {version}. DO NOT EDIT.
# Regenerate with:
#   {command}
"""Kernel {name!r}: coefficient functions for the lazyflow runtime (plain PyTorch, no SymPy)."""
import torch

'''

_HELPERS = '''

def _full(value, like):
    """A constant broadcast to the shape, dtype and device of ``like``."""
    return torch.full_like(like, float(value))


'''
