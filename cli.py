"""The ``lazyflow`` command (also ``python -m lazyflow``): a thin shell on top of derive, runtime and figures.

Every subcommand names schedules the same way (a preset, a ``.toml`` file, a kernel ``.py`` file, or
``--alpha/--beta/--sigma`` expressions).  Refused input (:class:`LazyflowError`) prints one line on
stderr and exits 2; anything else is a bug and keeps its traceback.  Subcommands import SymPy or torch
only when they run, and choices and help texts are read from the registries only when needed, so
``lazyflow derive`` does not load torch.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import LazyflowError

__all__ = ["main", "build_parser"]

PREDICTIONS = ("velocity", "x", "noise", "score")


# --- registries, read when argparse checks a value or prints help -----------------------------------

def _registry(module: str, name: str) -> Any:
    from importlib import import_module

    return getattr(import_module(f"{__package__}.runtime.{module}"), name)


class _Lazy:
    """Choices (a list) or a help text (a str) built from a runtime registry only when argparse checks a
    value or prints help, so that building the parser does not import torch."""

    def __init__(self, build: Callable[[], Any]):
        self.build = build

    def __iter__(self):
        return iter(list(self.build()))

    def __contains__(self, value: object) -> bool:
        return value in self.build()

    def __mod__(self, params: dict) -> str:   # argparse formats help texts with %
        return self.build().replace("%", "%%") % params

    def strip(self) -> str:
        return self.build().strip()


def _names(module: str, name: str) -> _Lazy:
    return _Lazy(lambda: list(_registry(module, name)))


def _integrators_help(what: str, default: str) -> _Lazy:
    return _Lazy(lambda: f"{what}: " + "; ".join(f"{i.name} ({i.description})" for i in _registry(
        "core.integrators", "INTEGRATORS").values()) + f" (default {default})")


def _models_help(more: str) -> _Lazy:
    return _Lazy(lambda: "a model name: " + _registry("models.registry", "describe_kinds")(files=False) + more)


# --- schedules: one identity for every subcommand ----------------------------------------------------

def _schedule_args(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    p.add_argument("--schedule", default=default,
                   help="preset name, a .toml schedule or a kernel .py file" + (f" (default {default})" if default else ""))
    p.add_argument("--alpha", help="alpha(t), e.g. 'cos(pi*t/2)' (with --beta, instead of --schedule)")
    p.add_argument("--beta", help="beta(t), e.g. 'sin(pi*t/2)'")
    p.add_argument("--sigma", help="ode, optimal, lazy or an expression for sigma(t)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a schedule parameter, e.g. shift=1.7 for sd3 (repeatable)")
    p.add_argument("--data-var", default=None, help="data variance v of the Gaussian oracle (default 1)")
    p.add_argument("--name", default=None, help="a name for a schedule given by expressions")


def _params(items: list[str], flag: str = "--param") -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LazyflowError(f"{flag} expects NAME=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def _numbers(items: list[str], flag: str = "--param") -> dict[str, float]:
    params = _params(items, flag)
    try:
        return {key: float(value) for key, value in params.items()}
    except ValueError:
        raise LazyflowError(f"{flag}: values must be numbers, got {params}") from None


def schedule_spec(args: argparse.Namespace):
    """The ScheduleSpec the schedule arguments name (SymPy)."""
    from .derive import ScheduleSpec, from_expressions, parse_expression, resolve
    from .derive.schedule import DIFFUSION_KEYWORDS
    from .derive.symbols import v

    if args.schedule and (args.alpha or args.beta):
        raise LazyflowError("give either --schedule or --alpha/--beta, not both")
    params = _params(args.param)
    if args.schedule:
        spec = resolve(args.schedule)
        if params:
            spec = spec.bind(**_numbers(args.param))
        if args.sigma:
            sigma = args.sigma.strip()
            spec = spec.with_diffusion(sigma) if sigma in DIFFUSION_KEYWORDS else \
                spec.with_diffusion("sigma", parse_expression(sigma, dict(spec.param_symbols), what="sigma"))
    elif args.alpha and args.beta:
        spec = from_expressions(args.alpha, args.beta, args.sigma or "ode", params=params, name=args.name or "custom")
    else:
        raise LazyflowError("give --schedule NAME, or both --alpha and --beta")
    if args.data_var is not None:
        spec = ScheduleSpec(spec.name, spec.alpha, spec.beta, spec.diffusion, spec.sigma,
                            v if args.data_var.strip() == "v" else _data_var(args.data_var),
                            spec.params, spec.boundary_tol, spec.description)
    return spec


def _data_var(text: str):
    from .derive import parse_expression

    value = parse_expression(text, {}, variables={}, what="--data-var")
    if not value.is_number or not value.is_positive:
        raise LazyflowError(f"--data-var must be a positive number or v, got {text!r}")
    return value


def schedule(args: argparse.Namespace):
    """The runtime Schedule the schedule arguments name; SymPy only for expressions, TOML files or a
    changed diffusion (generated once into the user cache)."""
    from .runtime.core.schedule import load_schedule

    if args.alpha or args.beta or args.sigma or args.data_var is not None:
        return load_schedule(schedule_spec(args))
    return load_schedule(args.schedule, **_numbers(args.param))


# --- derive, lazy, convert, emit -------------------------------------------------------------------

def _print_formulas(values: dict, args: argparse.Namespace, notes: list[str] = ()) -> None:
    import sympy as sp

    if args.json:
        print(json.dumps({k: sp.sstr(e) for k, e in values.items()}, indent=2))
    else:
        width = max(map(len, values))
        for key, expr in values.items():
            print(f"{key.ljust(width)} = {sp.latex(expr) if args.latex else sp.sstr(expr)}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr if args.json else sys.stdout)


def run_derive(args: argparse.Namespace) -> int:
    import sympy as sp

    from .derive import derive, validate

    given = schedule_spec(args)
    spec = given.substituted()
    report = validate(spec) if not spec.data_var.free_symbols else None
    notes = [f"{spec.name}: {report.kind} schedule; snr monotone {report.snr_monotone}; alpha, beta > 0 "
             f"{report.positive}", *report.notes] if report else []
    values = derive(spec).as_dict()
    if given.params:   # parameters were substituted: print alpha and beta simplified
        values.update(alpha=sp.simplify(values["alpha"]), beta=sp.simplify(values["beta"]))
    _print_formulas(values, args, notes)
    return 0


def run_lazy(args: argparse.Namespace) -> int:
    from .derive import derive, parse_expression
    from .derive.lazy import solve_lazy_with_notes
    from .derive.symbols import v

    def expr(text: str | None, what: str):
        return None if text is None else parse_expression(text, {}, what=what)

    sigma = args.sigma.strip() if args.sigma is not None else None
    sigma = expr(sigma, "sigma") if sigma not in (None, "ode", "optimal") else sigma
    data_var = v if args.data_var.strip() == "v" else _data_var(args.data_var.strip())
    spec, notes = solve_lazy_with_notes(expr(args.alpha, "alpha"), expr(args.beta, "beta"), sigma, data_var=data_var)
    f = derive(spec)
    _print_formulas({"alpha": f.alpha, "beta": f.beta, "sigma": f.sigma}, args,
                    [f"zero drift on data N(0, {spec.data_var} I); diffusion: {spec.diffusion}", *notes])
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from .derive import convert, derive, resolve

    source, target = resolve(args.source).substituted(), resolve(args.target).substituted()
    conv = convert(source, target)
    if conv.closed_form:
        values = {"time_map": conv.time_map, "scale": conv.scale, "diffusion": conv.target_eps(derive(source).eps)}
        notes = [f"source time tau = time_map(t) of {source.name!r} for target time t of {target.name!r}; "
                 f"diffusion is the target eps corresponding to the source's ({source.diffusion})"]
    else:
        values = {"source_log_snr": conv.source_log_snr, "target_log_snr": conv.target_log_snr}
        notes = [f"{conv.note}: tau(t) solves source_log_snr(tau) = target_log_snr(t), found by bisection at run "
                 "time; scale c = (alpha + beta)_target(t) / (alpha + beta)_source(tau)"]
    _print_formulas(values, args, notes)
    return 0


def run_emit(args: argparse.Namespace) -> int:
    from .derive.codegen import write_kernel

    words = ["lazyflow", "emit", *(["--schedule", args.schedule] if args.schedule else
                                   ["--alpha", args.alpha, "--beta", args.beta])]
    words += [w for item in args.param for w in ("--param", item)]
    for flag, value in (("--sigma", args.sigma), ("--data-var", args.data_var), ("--name", args.name)):
        words += [flag, value] if value else []
    spec = schedule_spec(args)
    path = write_kernel(spec, args.out_dir, name=args.name or spec.name, force=args.force,
                        command=" ".join(shlex.quote(w) for w in words))   # the command that regenerates it
    print(f"wrote {path}")
    return 0


# --- sample, train, tune-grid --------------------------------------------------------------------

def parse_grid(text: str):
    """A named grid, logsnr[-open]:FIRST,LAST, a tuned grid's .json file or comma-separated explicit times."""
    try:
        return _registry("core.grids", "parse_grid")(text)
    except LazyflowError as err:
        raise LazyflowError(f"--grid: {err}") from None


def _numbers_of(text: str | None, flag: str, what: str, kind: type = float) -> tuple | None:
    try:
        return None if text is None else tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise LazyflowError(f"{flag}: cannot read {text!r} as {what}") from None


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given for a --model-kind (a model that takes none refuses them)."""
    given = {"class_labels": args.class_labels, "vae": args.vae, "model_params": _params(args.model_param,
             "--model-param"), "guidance_interval": _numbers_of(args.guidance_interval, "--guidance-interval", "lo,hi"),
             "guidance_channels": args.guidance_channels, "guidance": None if args.guidance == 1.0 else args.guidance}
    return {key: value for key, value in given.items() if value not in (None, "", {})}


def run_sample(args: argparse.Namespace) -> int:
    from .runtime.models.sampling import sample_to_file

    run = sample_to_file(args.model, args.out, kind=args.model_kind, model_options=_model_options(args),
                         num_samples=args.num_samples, schedule=schedule(args), source=args.source,
                         source_params=_numbers(args.source_param, "--source-param"), prediction=args.prediction,
                         diffusion_scale=args.diffusion_scale, data_stats=args.data_stats,
                         shape=_numbers_of(args.shape, "--shape", "comma-separated sizes", int),
                         steps=args.steps, integrator=args.integrator, final_step=args.final_step,
                         grid=parse_grid(args.grid), seed=args.seed, batch_size=args.batch_size, device=args.device,
                         compile=args.compile, capture=args.capture, shards=args.shards,
                         note=lambda line: print(f"lazyflow sample: {line}", file=sys.stderr))
    for line in run.report(args.grid):
        print(line)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .runtime.models.train import train

    path = train(args.what, args.out_dir, steps=args.steps)
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    card = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({k: v for k, v in card.items() if k in ("test_accuracy", "train_seconds")}))
    return 0


def run_tune_grid(args: argparse.Namespace) -> int:
    from .runtime.models.tuning import tune_grid_file

    target = schedule(args) if args.diffusion_scale is None else schedule(args).with_diffusion_scale(args.diffusion_scale)
    path, grid = tune_grid_file(args.model, args.out, schedule=target, prediction=args.prediction,
                                integrator=args.integrator, nfe=args.nfe, final_step=args.final_step,
                                init=parse_grid(args.init), samples=args.samples, seed=args.seed,
                                holdout_seed=args.holdout_seed, reference_steps=args.reference_steps,
                                max_evals=args.max_evals, log=lambda line: print(line, file=sys.stderr))
    t = grid.tuning
    print(f"wrote {path}: {grid.steps} steps of {grid.schedule} for {grid.integrator} at {grid.nfe} NFE, times "
          f"{[round(v, 5) for v in grid.times]}; loss {t['loss_before']:.4g} -> {t['loss_after']:.4g} (seed {t['seed']}), "
          f"held-out seed {t['holdout_seed']}: {t['holdout_loss_before']:.4g} -> {t['holdout_loss_after']:.4g}; "
          f"cost {t['seconds']:.1f} s, {t['model_calls']} model calls")
    print(f"use: lazyflow sample --model {args.model} --schedule {grid.base_schedule} --integrator {grid.integrator} "
          f"--grid {path} --out samples.npy")
    return 0


# --- bench, bench-overhead, plot ---------------------------------------------------------------------

def _positive_ints(text: str, flag: str) -> list[int]:
    items = [v for v in text.split(",") if v.strip()]
    values = _numbers_of(",".join(items), flag, "comma-separated integers", int) if items else ()
    if not values or min(values) < 1:
        raise LazyflowError(f"{flag}: need positive integers, got {text!r}")
    return list(values)


def run_bench(args: argparse.Namespace) -> int:
    from .runtime.evaluation.bench import bench_metrics, format_report, run_quality_bench

    nfes = sorted(set(_positive_ints(args.nfe, "--nfe")))
    if args.n < 10:
        raise LazyflowError(f"--n must be at least 10 (the Fréchet distance needs a covariance), got {args.n}")
    metrics = bench_metrics(args.model, args.metric)
    result = run_quality_bench(args.model, nfes, args.n, args.seed, include_peers=not args.no_peers,
                               full=not args.quick, log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print,
                               prediction=args.prediction, grid_files=[f for g in args.grid_file for f in g.split(",") if f])
    print(json.dumps(result, indent=1) if args.json else format_report(result, metrics, args.markdown))
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=1))
    if args.plot:
        from .figures.plots import plot_bench

        _save_figure(plot_bench(result), args.plot)
    return 0


def run_overhead(args: argparse.Namespace) -> int:
    import torch

    from .runtime.core.sampler import resolve_device
    from .runtime.evaluation.overhead import format_overhead, overhead_bench

    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = set(modes) - {"eager", "compile", "capture"}
    if unknown:
        raise LazyflowError(f"--modes: unknown {sorted(unknown)}; use eager, compile, capture")
    if args.repeats < 5:
        raise LazyflowError(f"--repeats must be at least 5 (the median of fewer runs is not a measurement), got {args.repeats}")
    result = overhead_bench(str(device), models=tuple(m.strip() for m in args.models.split(",")),
                            batches=tuple(_positive_ints(args.batches, "--batches")), steps=args.steps,
                            repeats=args.repeats, modes=modes, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(result, indent=1) if args.json else format_overhead(result))
    return 0


def _save_figure(fig, out: str) -> None:
    import matplotlib.pyplot as plt

    path = Path(out)
    if path.suffix.lower() != ".png":
        raise LazyflowError(f"--out must be a .png file, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def _bench_result(source: str) -> dict:
    try:
        result = json.loads(Path(source).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LazyflowError(f"--from {source}: cannot read a bench result ({err})") from None
    if not isinstance(result, dict) or "rows" not in result:
        raise LazyflowError(f"--from {source}: not a bench result (written by lazyflow bench --save)")
    return result


def run_plot(args: argparse.Namespace) -> int:
    from .figures import plots

    names = [n.strip() for n in getattr(args, "schedules", "").split(",") if n.strip()]
    if args.kind == "schedules":
        fig = plots.plot_schedules(names, source=args.source)
    elif args.kind == "drift":
        fig = plots.plot_drift(names, steps=args.steps)
    elif args.kind == "trajectories":
        fig = plots.plot_trajectories(names, data=args.data, steps=args.steps)
    elif args.kind == "samples":
        fig = plots.plot_samples(names, [int(v) for v in args.nfe.split(",")], model=args.model,
                                 integrators=[i.strip() for i in args.integrators.split(",")])
    else:
        fig = plots.plot_bench(_bench_result(args.source_json))
    _save_figure(fig, args.out)
    return 0


# --- the parser: one short function per subcommand ------------------------------------------------

def _command(sub, name: str, handler: Callable[[argparse.Namespace], int], help: str, **kw) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, **kw)
    p.set_defaults(handler=handler)
    return p


def _output_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="one JSON object of SymPy-parsable strings")
    group.add_argument("--latex", action="store_true", help="print LaTeX")


def _formula_parsers(sub) -> None:
    p = _command(sub, "derive", run_derive, "derive the formulas of a schedule")
    _schedule_args(p)
    _output_args(p)
    p = _command(sub, "lazy", run_lazy, "solve the zero-drift condition for the missing one of alpha, beta, sigma")
    p.add_argument("--alpha")
    p.add_argument("--beta")
    p.add_argument("--sigma", help="ode, optimal, or an expression for sigma(t)")
    p.add_argument("--data-var", default="1", help="data variance v (a number, or v for a symbol)")
    _output_args(p)
    p = _command(sub, "convert", run_convert, "time map and scale from a target schedule to a source schedule")
    p.add_argument("--source", required=True, help="schedule the model was trained on (preset, .toml or kernel .py)")
    p.add_argument("--target", required=True, help="schedule to sample in (preset, .toml or kernel .py)")
    _output_args(p)
    p = _command(sub, "emit", run_emit, "generate a PyTorch kernel module for a schedule")
    _schedule_args(p)
    p.add_argument("--out-dir", default=".", help="folder to write <name>.py into (default: the current directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def _run_args(p: argparse.ArgumentParser, *, integrator: str, what: str, scale: str, prediction: str) -> None:
    """The schedule, integrator, final step, diffusion scale and prediction of a sampling run."""
    _schedule_args(p, default="pointmass")
    p.add_argument("--integrator", default=integrator, choices=_names("core.integrators", "INTEGRATORS"),
                   metavar="NAME", help=_integrators_help(what, integrator))
    p.add_argument("--final-step", default=None, choices=_names("core.integrators", "FINAL_STEPS"), metavar="STEP",
                   help=_Lazy(lambda: "the last step: " + ", ".join(_registry("core.integrators", "FINAL_STEPS"))
                              + " (the denoised mean eta_X; default euler)"))
    p.add_argument("--diffusion-scale", type=float, default=None, metavar="LAMBDA", help=scale)
    p.add_argument("--prediction", default=None, choices=PREDICTIONS, help=prediction)


def _sit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-kind", default=None, metavar="KIND", help=_Lazy(lambda: "the kind of the --model file: "
                   + ", ".join(k.name for k in _registry("models.registry", "MODEL_KINDS").values() if k.takes_file)
                   + " (a SiT's input size, classes and learn_sigma are read from the checkpoint)"))
    p.add_argument("--model-param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a setting of --model-kind, e.g. depth=2 (repeatable)")
    p.add_argument("--class-labels", default=None, metavar="L1,L2,...",
                   help="SiT class labels, repeated in order over the samples (sample i gets label i mod count)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale for a SiT (default 1: "
                   "none; a guided evaluation is one network call on a doubled batch)")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only where the model's time t (noise 0, data 1) is in [LO, HI]")
    p.add_argument("--guidance-channels", type=int, default=None, metavar="K",
                   help="guide only the first K output channels (the SiT/DiT reference code guides 3); default all")
    p.add_argument("--vae", default=None, metavar="FOLDER", help="a local diffusers AutoencoderKL folder: also decode "
                   "the SiT latents (scale 0.18215) and write them as OUT.png")


def _sample_parser(sub) -> None:
    p = _command(sub, "sample", run_sample, "sample a pretrained model in few steps")
    p.add_argument("--model", default="digits", help=_models_help("; or a model file, or a checkpoint with "
                                                                  "--model-kind (default digits)"))
    _sit_args(p)
    _run_args(p, integrator="euler", what="the integrator", scale="sigma = LAMBDA * the schedule's sigma (0: its ODE; "
              "default 1, or a tuned grid file's); a stochastic schedule only", prediction="the model's output "
              "(default: the model's own, else velocity; an exact model answers with the one asked)")
    p.add_argument("--source", default=None, help="schedule the model was trained on (default: the model's own, "
                   "else linear)")
    p.add_argument("--source-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the source schedule, e.g. shift=3 (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="steps (default 8, or a tuned --grid file's)")
    p.add_argument("--grid", default="uniform", help=_Lazy(lambda: ", ".join(_registry("core.grids", "GRIDS")) +
                   ", logsnr:FIRST,LAST (uniform in log snr between these, from t = 0), logsnr-open:FIRST,LAST "
                   "(starting at log snr FIRST: for noise and score models), a tuned grid's .json file (lazyflow "
                   "tune-grid), or comma-separated times (default uniform)"))
    p.add_argument("--shape", default=None, help="data shape, e.g. 1,8,8 (default: the model's own)")
    p.add_argument("--data-stats", default=None, metavar="FILE", help="the data's statistics (a DataStats .safetensors "
                   "file) for the data-frame integrators")
    p.add_argument("--num-samples", "--n", dest="num_samples", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile each step's noise draw and update (for "
                   "small models on a GPU; does not pay on the CPU for small states)")
    p.add_argument("--capture", action="store_true", help="record the whole loop, model included, as a CUDA graph "
                   "and replay it for every batch (CUDA only; for small models)")
    p.add_argument("--out", required=True, help="FILE.npy (raw samples), FILE.png (image grid) or FILE.pt; under "
                   "torchrun rank 0 writes it after gathering every rank's samples")
    p.add_argument("--shards", action="store_true", help="under torchrun: each rank writes its own share as "
                   "OUT.rankRRRRR-of-WWWWW.SUFFIX and rank 0 writes OUT.index.json (no gathering; for large runs)")


def _train_parser(sub) -> None:
    p = _command(sub, "train", run_train, "reproduce an embedded model's weights")
    p.add_argument("what", choices=_names("models.train", "RECIPES"), metavar="WHAT",
                   help=_Lazy(lambda: ", ".join(_registry("models.train", "RECIPES"))))
    p.add_argument("--out-dir", default=".", help="folder for the weights (default: the current directory)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")


def _bench_parser(sub) -> None:
    p = _command(sub, "bench", run_bench, "sample quality (FD) against NFE, ours and peers side by side")
    p.add_argument("--model", default="digits", help=_Lazy(lambda: "a model the bench scores: " + ", ".join(
        _registry("evaluation.bench", "bench_models")()) + ", or a digits model file (default digits)"))
    p.add_argument("--prediction", default=None, choices=PREDICTIONS,
                   help="what an exact model outputs (default velocity; peers always get its velocity)")
    p.add_argument("--metric", default=None, help="comma-separated tables to print: the model's metrics, fd (digits) "
                   "or fd, sw, weight_tv (exact mixtures); default all of them")
    p.add_argument("--nfe", default="2,4,6,8,12,16")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", default=None, help="also write the JSON result to this file")
    p.add_argument("--plot", default=None, help="write the quality-vs-NFE plot to this PNG")
    p.add_argument("--markdown", action="store_true", help="also print the best of each kind per budget as a "
                   "markdown table, each goal checked: ours against the best peer at 4 and 6 NFE, each family "
                   "against its converged reference at 8 (what the README shows)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--quick", action="store_true", help="uniform grids only")
    p.add_argument("--grid-file", action="append", default=[], metavar="FILE.json",
                   help="a tuned grid (lazyflow tune-grid; repeatable or comma-separated): scored at its own NFE beside "
                        "its untuned starting grid and reported apart from the table as tuned")


def _tune_parser(sub) -> None:
    p = _command(sub, "tune-grid", run_tune_grid, "fit a few-step time grid against high-accuracy reference "
                 "trajectories (training-free; minutes on a CPU) and save it as a .json file for --grid")
    p.add_argument("--model", default="digits", help=_models_help(", or a model file (default digits)"))
    p.add_argument("--nfe", type=int, required=True, help="network evaluations of the tuned run")
    _run_args(p, integrator="multistep", what="the integrator the grid is tuned for", scale="tune for sigma = LAMBDA * "
              "the schedule's sigma (a stochastic schedule; stored in the file, and sample --grid FILE, the bench and "
              "the scheduler run at it)", prediction="what an exact model outputs (default velocity; noise and score "
              "need --init logsnr-open:...)")
    p.add_argument("--init", default="logsnr", help="the starting grid (any --grid of sample); its ends are kept")
    p.add_argument("--samples", type=int, default=256, help="samples the loss is measured on (default 256)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the tuning samples")
    p.add_argument("--holdout-seed", type=int, default=None, help="seed of the held-out check (default seed + 1000)")
    p.add_argument("--reference-steps", type=int, default=200, help="Heun steps of the reference ODE (default 200)")
    p.add_argument("--max-evals", type=int, default=400, help="trial grids Nelder-Mead may run (default 400)")
    p.add_argument("--out", default="grid.json", help="the grid file to write (default grid.json)")


def _overhead_parser(sub) -> None:
    p = _command(sub, "bench-overhead", run_overhead, "sampler time beyond the model's own calls, every integrator "
                 "family, beside a plain Euler loop and diffusers' FlowMatchEuler")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--steps", type=int, default=16, help="network calls per run (default 16)")
    p.add_argument("--models", default="mlp,convnet,sit", help="mlp, convnet, sit (SiT-XL/2 size in bf16 on a GPU, "
                   "width 256 and 4 blocks on the CPU)")
    p.add_argument("--batches", default="8,64,256", help="batch sizes (the transformer runs at 64 and below)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell, alternating (median reported)")
    p.add_argument("--modes", default="eager,capture", help="eager, compile, capture (capture needs CUDA)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _plot_parser(sub) -> None:
    kinds = _command(sub, "plot", run_plot, "draw comparison figures").add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="PNG file to write")
    common.add_argument("--schedules", default="linear,vp,pointmass", help="comma-separated presets, .toml or kernel "
                        ".py files")
    kinds.add_parser("schedules", parents=[common], help="alpha, beta, log snr, sigma, eps*, time map, scale") \
        .add_argument("--source", default="linear")
    kinds.add_parser("drift", parents=[common], help="Gaussian drift and drift norm along 2D paths") \
        .add_argument("--steps", type=int, default=64)
    q = kinds.add_parser("trajectories", parents=[common], help="2D sample paths side by side")
    q.add_argument("--data", default="gmm", choices=["gmm", "moons"])
    q.add_argument("--steps", type=int, default=16)
    q = kinds.add_parser("samples", parents=[common], help="digit grids: rows schedule/integrator, columns NFE")
    q.add_argument("--model", default="digits")
    q.add_argument("--nfe", default="2,4,8,16")
    q.add_argument("--integrators", default="euler,multistep-pc")
    q = kinds.add_parser("bench", help="quality against NFE from a bench JSON")
    q.add_argument("--from", dest="source_json", required=True, help="JSON written by lazyflow bench --save")
    q.add_argument("--out", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazyflow", description="Sample pretrained flow models in fewer steps "
                                     "by integrating them in a lazy schedule.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_formula_parsers, _sample_parser, _train_parser, _bench_parser, _tune_parser, _overhead_parser,
                _plot_parser):
        add(sub)
    return parser


def _join_expressions(argv: list[str]) -> list[str]:
    """``--alpha -t+1`` as ``--alpha=-t+1``: argparse would take ``-t+1`` for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--alpha", "--beta", "--sigma") and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command; refused input prints one line on stderr and exits 2."""
    args = build_parser().parse_args(_join_expressions(sys.argv[1:] if argv is None else list(argv)))
    try:
        return int(args.handler(args) or 0)
    except LazyflowError as err:
        print(f"lazyflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lazyflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader went away (``lazyflow derive ... | head``): stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
