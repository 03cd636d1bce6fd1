"""The ``lazyflow`` command (also ``python -m lazyflow``): a thin shell on top of derive, runtime and figures.

Every subcommand names schedules the same way (a preset, a ``.toml`` file, a kernel ``.py`` file, or
``--alpha/--beta/--sigma`` expressions).  Refused input (:class:`LazyflowError`) prints one line on
stderr and exits 2; anything else is a bug and keeps its traceback.  The parsers are in
:mod:`lazyflow.parsers`; each command's handler here imports SymPy or torch only when it runs, so
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

from .atomic_write import write_text_atomic
from .errors import LazyflowError
from .parsers import build_parser, join_expressions, named_values, numbers_of, positive_ints

__all__ = ["main"]


# --- schedules: one identity for every subcommand ----------------------------------------------------

def _schedule_parts(args: argparse.Namespace) -> dict[str, Any]:
    """The schedule flags besides --schedule, as the keywords of spec_from_parts and load_schedule_parts
    (with the command's default, used only when neither --schedule nor --alpha/--beta is given)."""
    return {"alpha": args.alpha, "beta": args.beta, "sigma": args.sigma, "params": named_values(args.param),
            "data_var": args.data_var, "name": args.name, "default": getattr(args, "schedule_default", None)}


def schedule_given(args: argparse.Namespace) -> bool:
    """True when any flag of the schedule group was given (for commands whose default is many schedules)."""
    return any(getattr(args, key) not in (None, []) for key in ("schedule", "alpha", "beta", "sigma", "param",
                                                                "data_var", "name"))


def schedule_words(args: argparse.Namespace) -> list[str]:
    """The schedule flags as given (the command's default schedule when none), as command-line words."""
    chosen = args.schedule if args.schedule is not None or args.alpha is not None else \
        getattr(args, "schedule_default", None)
    words = ["--schedule", chosen] if chosen is not None else ["--alpha", args.alpha, "--beta", args.beta]
    words += [w for item in args.param for w in ("--param", item)]
    for flag, value in (("--sigma", args.sigma), ("--data-var", args.data_var), ("--name", args.name)):
        words += [flag, value] if value else []
    return words


def schedule_text(args: argparse.Namespace) -> str:
    """The schedule the flags name as one text load_schedule resolves (a generated kernel's path for
    expressions, parameters or a changed diffusion)."""
    from .runtime.core.schedule import schedule_text_parts

    return schedule_text_parts(args.schedule, **_schedule_parts(args))


def schedule_spec(args: argparse.Namespace):
    """The ScheduleSpec the schedule arguments name (SymPy)."""
    from .derive.flags import spec_from_parts

    return spec_from_parts(args.schedule, **_schedule_parts(args))


def schedule(args: argparse.Namespace):
    """The runtime Schedule the schedule arguments name; SymPy only for expressions, TOML files or a
    changed diffusion (generated once into the user cache)."""
    from .runtime.core.schedule import load_schedule_parts

    return load_schedule_parts(args.schedule, **_schedule_parts(args))


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
    from .derive import derive
    from .derive.flags import data_mean, data_variance, lazy_inputs
    from .derive.lazy import solve_lazy_with_notes

    mean = data_mean(args.data_mean)
    spec, notes = solve_lazy_with_notes(*lazy_inputs(args.alpha, args.beta, args.sigma),
                                        data_var=data_variance(args.data_var.strip()), data_mean=mean)
    f = derive(spec)
    data = f"N({0 if mean is None else mean}, {spec.data_var} I)"
    _print_formulas({"alpha": f.alpha, "beta": f.beta, "sigma": f.sigma}, args,
                    [f"zero drift on data {data}; diffusion: {spec.diffusion}", *notes])
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from .derive import convert, resolve

    values, notes = convert(resolve(args.source).substituted(), schedule_spec(args).substituted()).formulas()
    _print_formulas(values, args, notes)
    return 0


def run_emit(args: argparse.Namespace) -> int:
    from .derive.codegen import write_kernel

    words = ["lazyflow", "emit", *schedule_words(args)]
    spec = schedule_spec(args)
    path = write_kernel(spec, args.out_dir, name=args.name or spec.name, force=args.force,
                        command=" ".join(shlex.quote(w) for w in words))   # the command that regenerates it
    print(f"wrote {path}")
    return 0


# --- sample, train, tune-grid --------------------------------------------------------------------

def parse_grid(text: str):
    """A named grid, logsnr[-open]:FIRST,LAST, a tuned grid's .json file or comma-separated explicit times."""
    from .runtime.core.grids import parse_grid as parse

    try:
        return parse(text)
    except LazyflowError as err:
        raise LazyflowError(f"--grid: {err}") from None


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given for a --model-kind (a model that takes none refuses them)."""
    given = {"class_labels": args.class_labels, "vae": args.vae, "model_params": named_values(args.model_param,
             "--model-param"), "guidance_interval": numbers_of(args.guidance_interval, "--guidance-interval", "lo,hi"),
             "guidance_channels": args.guidance_channels, "guidance": None if args.guidance == 1.0 else args.guidance,
             "prompt_embeds": args.prompt_embeds}
    return {key: value for key, value in given.items() if value not in (None, "", {})}


def run_sample(args: argparse.Namespace) -> int:
    from .runtime.core.options import option_names
    from .runtime.core.schedule import param_numbers
    from .runtime.models.sampling import sample_to_file

    given = {name: getattr(args, name) for name in option_names() if hasattr(args, name)}   # flags named as options
    run = sample_to_file(args.model, args.out, kind=args.model_kind, model_options=_model_options(args),
                         num_samples=args.num_samples, diffusion_scale=args.diffusion_scale,
                         source_params=param_numbers(named_values(args.source_param, "--source-param"),
                                                     "--source-param"),
                         shape=args.shape, shards=args.shards,
                         force=args.force, resume=args.resume,
                         note=lambda line: print(f"lazyflow sample: {line}", file=sys.stderr),
                         **{**given, "schedule": None if args.integrator == "bespoke" and not schedule_given(args)
                            else schedule(args), "grid": parse_grid(args.grid)})   # None: a solver's own schedule
    for line in run.report(args.grid):
        print(line)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .runtime.models.train import train

    path = train(args.what, args.out_dir, steps=args.steps, seed=args.seed)
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    card = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({k: v for k, v in card.items() if k in ("test_accuracy", "train_seconds")}))
    return 0


def run_tune_grid(args: argparse.Namespace) -> int:
    from .runtime.evaluation.tune import tune_grid_file, tuned_summary

    own = args.integrator == "bespoke" and not schedule_given(args)   # a solver: the model's own schedule
    target = None if own else schedule(args) if args.diffusion_scale is None else \
        schedule(args).with_diffusion_scale(args.diffusion_scale)
    path, grid = tune_grid_file(args.model, args.out, schedule=target, prediction=args.prediction,
                                integrator=args.integrator, nfe=args.nfe, final_step=args.final_step,
                                init=parse_grid(args.init), samples=args.samples, seed=args.seed,
                                holdout_seed=args.holdout_seed, reference_steps=args.reference_steps,
                                max_evals=args.max_evals, log=lambda line: print(line, file=sys.stderr))
    print(tuned_summary(path, grid))
    words = ["lazyflow", "sample", "--model", args.model, *([] if own else schedule_words(args)), "--integrator", grid.integrator,
             "--grid", str(path), "--out", "samples.npy"]
    print("use: " + " ".join(shlex.quote(w) for w in words))
    return 0


# --- bench, bench-overhead, plot ---------------------------------------------------------------------

def _progress_line(*parts: object) -> None:
    """A bench's progress (one line per row, reference, statistics): on stderr, so that stdout is the report."""
    print(*parts, file=sys.stderr)


def run_bench(args: argparse.Namespace) -> int:
    from .runtime.evaluation.bench import bench_metrics, format_report, run_quality_bench

    if args.model_kind:
        return _run_model_bench(args)
    nfes = sorted(set(positive_ints(args.nfe or "2,4,6,8,12,16", "--nfe")))
    args.n = 2000 if args.n is None else args.n
    if args.n < 10:
        raise LazyflowError(f"--n must be at least 10 (the Fréchet distance needs a covariance), got {args.n}")
    metrics = bench_metrics(args.model, args.metric)
    methods = _bench_methods(args) if schedule_given(args) else None
    result = run_quality_bench(args.model, nfes, args.n, args.seed, include_peers=not args.no_peers, methods=methods,
                               full=not args.quick, log=_progress_line,
                               prediction=args.prediction, grid_files=[f for g in args.grid_file for f in g.split(",") if f],
                               save=args.save)
    print(json.dumps(result, indent=1) if args.json else format_report(result, metrics, args.markdown))
    if args.save:
        write_text_atomic(args.save, json.dumps(result, indent=1))
    if args.plot:
        from .figures.plots import plot_bench, save_figure

        print(f"wrote {save_figure(plot_bench(result), args.plot)}")
    return 0


def _run_model_bench(args: argparse.Namespace) -> int:
    """``lazyflow bench --model FILE --model-kind KIND``: the path table on the user's own model
    (:mod:`lazyflow.runtime.evaluation.model_bench`)."""
    from .runtime.evaluation.model_bench import format_model_report, run_model_bench

    for flag, given in (("--prediction", args.prediction), ("--grid-file", args.grid_file), ("--plot", args.plot),
                        ("--markdown", args.markdown), ("--metric", args.metric not in (None, "path"))):
        if given:
            raise LazyflowError(f"{flag}: not with --model-kind (a model file is measured by path alone, no dataset)")
    nfes = sorted(set(positive_ints(args.nfe or "4,6,8", "--nfe")))
    n = 64 if args.n is None else args.n
    if n < 1:
        raise LazyflowError(f"--n must be positive, got {n}")
    methods = [m for m in _bench_methods(args) if not m.target().stochastic] if schedule_given(args) else None
    options = {**_model_options(args), **({"shape": args.shape} if args.shape else {})}
    log = _progress_line
    result = run_model_bench(args.model, args.model_kind, nfes, n, args.seed, options=options, methods=methods,
                             label_seed=args.label_seed, batch_size=args.batch_size, device=args.device,
                             reference_steps=args.reference_steps, reference_cache=args.reference_cache,
                             include_peers=not args.no_peers, full=not args.quick, log=log,
                             data_frames=not args.no_data_frames, stats_samples=args.stats_samples, tune=args.tune,
                             bespoke=args.bespoke,
                             save=args.save, pilot=args.pilot,
                             progress=not args.no_progress)
    print(json.dumps(result, indent=1) if args.json else format_model_report(result))
    if args.save:
        write_text_atomic(args.save, json.dumps(result, indent=1))
    return 0


def _bench_methods(args: argparse.Namespace) -> list:
    """The rows of ours for one given schedule: each one-call integrator on the uniform grid (and logsnr
    unless --quick)."""
    from .runtime.evaluation.bench import OurMethod

    text = schedule_text(args)
    grids = ("uniform",) if args.quick else ("uniform", "logsnr")
    return [OurMethod(text, integrator, grid) for integrator in ("euler", "multistep", "multistep-pc")
            for grid in grids]


def run_overhead(args: argparse.Namespace) -> int:
    from .runtime.evaluation.overhead import format_overhead, measure_overhead

    if args.frames:
        from .runtime.evaluation.frame_overhead import format_frame_overhead, frame_overhead

        if args.repeats < 3:
            raise LazyflowError(f"--repeats must be at least 3, got {args.repeats}")
        if args.device not in (None, "cpu"):
            raise LazyflowError(f"--frames runs on the CPU only (its model is a stand-in), not --device {args.device}")
        result = frame_overhead(tuple(positive_ints(args.batches, "--batches")), repeats=args.repeats,
                                log=lambda line: print(line, file=sys.stderr))
        print(json.dumps(result, indent=1) if args.json else format_frame_overhead(result))
        return 0
    result = measure_overhead(args.device, models=tuple(m.strip() for m in args.models.split(",")),
                              batches=tuple(positive_ints(args.batches, "--batches")), steps=args.steps,
                              repeats=args.repeats, modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                              log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(result, indent=1) if args.json else format_overhead(result))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from .figures import catalog, plots

    if args.kind == "all":
        return _plot_all(args)
    options = vars(args)
    if "schedules" in options and schedule_given(args):
        options["schedules"] = schedule_text(args)
    print(f"wrote {plots.save_figure(catalog.draw(args.kind, options), args.out)}")
    return 0


def _plot_all(args: argparse.Namespace) -> int:
    """``lazyflow plot all``: every committed figure, drawn into ``--out-dir``."""
    from .figures.catalog import BENCH_JSON, draw_all

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    draw_all(args.out_dir, only=only, bench=args.source_json or BENCH_JSON, log=print)
    return 0


# --- stats -----------------------------------------------------------------------------------------

#: the settings of --from-model and their defaults (given with --from they are refused, not ignored)
MODEL_RUN_DEFAULTS = {"n": 2000, "steps": 32, "integrator": "multistep-pc", "seed": 0, "device": None,
                      "condition": "none"}


def _checked_stats_args(args: argparse.Namespace) -> Path:
    """Refuses, before any work, what cannot be run (:func:`~lazyflow.runtime.models.stats_file.check_request`) and
    a --from-model setting given with --from; fills the --from-model defaults; returns --out."""
    from .runtime.models.stats_file import check_request

    out, args.grid = check_request(args.out, force=args.force, kind=args.kind, rank=args.rank, packed=args.packed,
                                   grid=args.grid)
    given = [f"--{key}" for key in MODEL_RUN_DEFAULTS if getattr(args, key) is not None]
    given += ["the schedule flags"] if schedule_given(args) else []
    given += ["--model-kind"] if args.model_kind else []
    given += ["--shape"] if args.shape else []
    given += [f"--{key.replace('_', '-')}" for key in _model_options(args)]
    if args.samples is not None and given:
        raise LazyflowError(f"{', '.join(given)}: settings of --from-model, not of --from")
    vars(args).update({key: value for key, value in MODEL_RUN_DEFAULTS.items() if getattr(args, key) is None})
    return out


def run_stats(args: argparse.Namespace) -> int:
    from .runtime.models.stats_file import stats_of_model, stats_of_samples

    out = _checked_stats_args(args)
    kind = dict(kind=args.kind, rank=args.rank, floor=args.floor, packed=args.packed, grid=args.grid)
    stats, cost = stats_of_samples(args.samples, **kind) if args.samples is not None else \
        stats_of_model(args.model, model_kind=args.model_kind, model_options=_model_options(args), n=args.n,
                       shape=args.shape, steps=args.steps, integrator=args.integrator, device=args.device, condition=args.condition,
                       schedule=schedule(args), seed=args.seed, **kind)
    print(f"wrote {stats.save(out)} ({stats.describe()} {cost})")
    return 0


def run_comfyui_node(args: argparse.Namespace) -> int:
    from .runtime.integrations.comfyui import write_custom_node

    print(f"wrote {write_custom_node(args.directory, force=args.force)} (restart ComfyUI; the node is "
          "'lazyflow sampler' under sampling/custom_sampling/samplers)")
    return 0


# --- the shell ---------------------------------------------------------------------------------

def handler_for(command: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs ``command`` (looked up at each call, so that a test may replace one)."""
    return {"derive": run_derive, "lazy": run_lazy, "convert": run_convert, "emit": run_emit, "sample": run_sample,
            "train": run_train, "bench": run_bench, "tune-grid": run_tune_grid, "bench-overhead": run_overhead,
            "plot": run_plot, "stats": run_stats, "comfyui-node": run_comfyui_node}[command]


def main(argv: list[str] | None = None) -> int:
    """Run the command; refused input prints one line on stderr and exits 2."""
    args = build_parser().parse_args(join_expressions(sys.argv[1:] if argv is None else list(argv)))
    try:
        return int(handler_for(args.command)(args) or 0)
    except LazyflowError as err:
        print(f"lazyflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:   # one line: what a run keeps, where it says so, else that it stopped
        print(f"lazyflow {args.command}: {err}" if str(err) else "lazyflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader went away (``lazyflow derive ... | head``): stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as err:    # the file system refused a path the user gave (exists, not a folder, no access, full)
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        print(f"lazyflow {args.command}: error: {where + ': ' if where else ''}{err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
