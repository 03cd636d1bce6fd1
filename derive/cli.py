"""The SymPy side of the ``lazyflow`` command: ``derive``, ``lazy``, ``convert`` (and ``emit``)."""
from __future__ import annotations

import argparse
import json
import sys

import sympy as sp

from .conversion import convert
from .errors import SpecError
from .formulas import derive
from .lazy import solve_lazy
from .parse import parse_expression
from .schedule import ScheduleSpec, from_expressions, resolve
from .symbols import v
from .validate import validate

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the derivation subcommands on the main parser."""
    p = sub.add_parser("derive", help="derive the formulas of a schedule")
    _schedule_args(p)
    _output_args(p)
    p.set_defaults(handler=run_derive)

    p = sub.add_parser("lazy", help="solve the zero-drift condition for the missing one of alpha, beta, sigma")
    p.add_argument("--alpha")
    p.add_argument("--beta")
    p.add_argument("--sigma", help="ode, optimal, or an expression for sigma(t)")
    p.add_argument("--data-var", default="1", help="data variance v (a number, or v for a symbol)")
    _output_args(p)
    p.set_defaults(handler=run_lazy)

    p = sub.add_parser("convert", help="time map and scale from a target schedule to a source schedule")
    p.add_argument("--source", required=True, help="preset name or TOML file the model was trained on")
    p.add_argument("--target", required=True, help="preset name or TOML file to sample in")
    _output_args(p)
    p.set_defaults(handler=run_convert)
    add_emit_command(sub)


def _schedule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", help="preset name or a .toml file")
    p.add_argument("--alpha", help="alpha(t), e.g. 'cos(pi*t/2)'")
    p.add_argument("--beta", help="beta(t), e.g. 'sin(pi*t/2)'")
    p.add_argument("--sigma", help="ode, optimal, lazy or an expression for sigma(t)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a named numeric parameter usable in the expressions (repeatable)")
    p.add_argument("--data-var", default=None, help="data variance v of the Gaussian oracle (default 1)")
    p.add_argument("--name", default=None, help="a name for a custom schedule")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object of SymPy-parsable strings")
    p.add_argument("--latex", action="store_true", help="print LaTeX")


def spec_from_args(args: argparse.Namespace) -> ScheduleSpec:
    """A schedule from ``--schedule`` or ``--alpha/--beta`` (plus ``--sigma``, ``--param``, ``--data-var``)."""
    if args.schedule and (args.alpha or args.beta):
        raise SpecError("give either --schedule or --alpha/--beta, not both")
    if args.schedule:
        spec = resolve(args.schedule)
        if args.sigma:
            sigma = args.sigma.strip()
            if sigma in ("ode", "optimal", "lazy"):
                spec = spec.with_diffusion(sigma)
            else:
                params = dict(spec.params)
                spec = spec.with_diffusion("sigma", parse_expression(sigma, params, what="sigma"))
    elif args.alpha and args.beta:
        params = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep:
                raise SpecError(f"--param expects NAME=VALUE, got {item!r}")
            params[key.strip()] = value.strip()
        spec = from_expressions(args.alpha, args.beta, args.sigma or "ode", params=params,
                                name=args.name or "custom")
    else:
        raise SpecError("give --schedule NAME, or both --alpha and --beta")
    if args.data_var is not None:
        spec = ScheduleSpec(spec.name, spec.alpha, spec.beta, spec.diffusion, spec.sigma,
                            _data_var(args.data_var), spec.params, spec.boundary_tol, spec.description)
    return spec


def _data_var(text: str) -> sp.Expr:
    if text.strip() == "v":
        return v
    value = parse_expression(text, {}, variables={}, what="--data-var")
    if not value.is_number or not value.is_positive:
        raise SpecError(f"--data-var must be a positive number or v, got {text!r}")
    return value


def _emit(values: dict[str, sp.Expr], args: argparse.Namespace, notes: list[str] = ()) -> None:
    if args.json:
        print(json.dumps({k: sp.sstr(e) for k, e in values.items()}, indent=2))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return
    width = max(map(len, values))
    for key, expr in values.items():
        text = sp.latex(expr) if args.latex else sp.sstr(expr)
        print(f"{key.ljust(width)} = {text}")
    for note in notes:
        print(f"note: {note}")


def run_derive(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    report = validate(spec) if not spec.data_var.free_symbols else None
    values = derive(spec).as_dict()
    notes = [f"{spec.name}: {report.kind} schedule; snr monotone {report.snr_monotone}", *report.notes] if report else []
    _emit(values, args, notes)
    return 0


def run_lazy(args: argparse.Namespace) -> int:
    def expr(text: str | None, what: str) -> sp.Expr | None:
        return None if text is None else parse_expression(text, {}, what=what)

    sigma = args.sigma
    if sigma is not None and sigma.strip() not in ("ode", "optimal"):
        sigma = expr(sigma, "sigma")
    elif sigma is not None:
        sigma = sigma.strip()
    spec = solve_lazy(expr(args.alpha, "alpha"), expr(args.beta, "beta"), sigma, data_var=_data_var(args.data_var))
    f = derive(spec)
    _emit({"alpha": f.alpha, "beta": f.beta, "sigma": f.sigma}, args,
          [f"zero drift on data N(0, {spec.data_var} I); diffusion: {spec.diffusion}"])
    return 0


def run_convert(args: argparse.Namespace) -> int:
    source, target = resolve(args.source), resolve(args.target)
    conv = convert(source, target)
    if not conv.closed_form:
        raise SpecError(conv.note)
    values = {"time_map": conv.time_map, "scale": conv.scale,
              "diffusion": conv.target_eps(derive(source).eps)}
    _emit(values, args, [f"source time tau = time_map(t) of {source.name!r} for target time t of {target.name!r}; "
                         f"diffusion is the target eps corresponding to the source's ({source.diffusion})"])
    return 0


def add_emit_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("emit", help="generate a PyTorch kernel module into runtime/kernels")
    _schedule_args(p)
    p.add_argument("--source", default="linear", help="schedule the model was trained on (default linear)")
    p.add_argument("--out-dir", default=None, help="folder to write into (default: the runtime/kernels package)")
    p.set_defaults(handler=run_emit)


def emit_command_line(args: argparse.Namespace) -> str:
    """The exact command that regenerates a kernel (written into its header)."""
    import shlex

    words = ["lazyflow", "emit"]
    if args.schedule:
        words += ["--schedule", args.schedule]
    else:
        words += ["--alpha", args.alpha, "--beta", args.beta]
        for item in args.param:
            words += ["--param", item]
    if args.sigma:
        words += ["--sigma", args.sigma]
    if args.data_var is not None:
        words += ["--data-var", args.data_var]
    words += ["--source", args.source]
    if args.name:
        words += ["--name", args.name]
    return " ".join(shlex.quote(w) for w in words)


def run_emit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .codegen import write_kernel

    target = spec_from_args(args)
    source = resolve(args.source)
    out_dir = Path(args.out_dir) if args.out_dir else Path(__file__).resolve().parent.parent / "runtime" / "kernels"
    path = write_kernel(target, source, out_dir, name=args.name or target.name, command=emit_command_line(args))
    print(f"wrote {path}")
    return 0
