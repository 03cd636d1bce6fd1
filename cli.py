"""The ``lazyflow`` command (also ``python -m lazyflow``): the shell on top of derive, runtime and figures.

Every subcommand names schedules the same way (a preset, a ``.toml`` file, a kernel ``.py`` file, or
``--alpha/--beta/--sigma`` expressions).  Refused input (:class:`LazyflowError`) prints one line on
stderr and exits 2; anything else is a bug and keeps its traceback.  Subcommands import SymPy or torch
only when they run, so ``lazyflow derive`` does not load torch.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .errors import LazyflowError

__all__ = ["main", "build_parser"]

OUTPUT_SUFFIXES = (".npy", ".png", ".pt")  # raw samples, an image grid, a torch tensor


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


def _numbers(params: dict[str, str], flag: str) -> dict[str, float]:
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
            spec = spec.bind(**_numbers(params, "--param"))
        if args.sigma:
            sigma = args.sigma.strip()
            if sigma in DIFFUSION_KEYWORDS:
                spec = spec.with_diffusion(sigma)
            else:
                symbols = {name: symbol for name, symbol in spec.param_symbols.items()}
                spec = spec.with_diffusion("sigma", parse_expression(sigma, symbols, what="sigma"))
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
    return load_schedule(args.schedule, **_numbers(_params(args.param), "--param"))


# --- derive, lazy, convert, emit -------------------------------------------------------------------

def _output_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="one JSON object of SymPy-parsable strings")
    group.add_argument("--latex", action="store_true", help="print LaTeX")


def _print_formulas(values: dict, args: argparse.Namespace, notes: list[str] = ()) -> None:
    import sympy as sp

    if args.json:
        print(json.dumps({k: sp.sstr(e) for k, e in values.items()}, indent=2))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return
    width = max(map(len, values))
    for key, expr in values.items():
        print(f"{key.ljust(width)} = {sp.latex(expr) if args.latex else sp.sstr(expr)}")
    for note in notes:
        print(f"note: {note}")


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

    def expr(text: str | None, what: str):
        return None if text is None else parse_expression(text, {}, what=what)

    sigma = args.sigma
    if sigma is not None and sigma.strip() not in ("ode", "optimal"):
        sigma = expr(sigma, "sigma")
    elif sigma is not None:
        sigma = sigma.strip()
    data_var = args.data_var.strip()
    if data_var == "v":
        from .derive.symbols import v as data_var
    else:
        data_var = _data_var(data_var)
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


def _emit_command(args: argparse.Namespace) -> str:
    """The command that regenerates an emitted kernel (written into its header)."""
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
    if args.name:
        words += ["--name", args.name]
    return " ".join(shlex.quote(w) for w in words)


def run_emit(args: argparse.Namespace) -> int:
    from .derive.codegen import write_kernel

    spec = schedule_spec(args)
    path = write_kernel(spec, args.out_dir, name=args.name or spec.name, command=_emit_command(args), force=args.force)
    print(f"wrote {path}")
    return 0


# --- sample, train -------------------------------------------------------------------------------

def parse_grid(text: str):
    """A named grid, logsnr[-open]:FIRST,LAST, a tuned grid's .json file or comma-separated explicit times."""
    from .runtime.core.grids import parse_grid as parse

    try:
        return parse(text)
    except LazyflowError as err:
        raise LazyflowError(f"--grid: {err}") from None


def run_sample(args: argparse.Namespace) -> int:
    from .runtime import models
    from .runtime.core.distributed import launched_by_torchrun, ranks_of
    from .runtime.core.sampler import resolve_device, sample_batches
    from .runtime.core.schedule import load_schedule

    out = Path(args.out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise LazyflowError(f"--out must end in .npy, .png or .pt, got {out.name!r}")
    if args.num_samples < 1:
        raise LazyflowError(f"--num-samples must be >= 1, got {args.num_samples}")
    sit_only = [flag for flag, value in (("--class-labels", args.class_labels), ("--vae", args.vae),
                                         ("--model-param", args.model_param),
                                         ("--guidance-interval", args.guidance_interval),
                                         ("--guidance-channels", args.guidance_channels)) if value]
    if args.guidance != 1.0:
        sit_only.append("--guidance")
    if sit_only and not args.model_kind:
        raise LazyflowError(f"{', '.join(sit_only)} need --model-kind (a SiT checkpoint)")
    device = resolve_device(args.device)
    target = schedule(args)
    if args.diffusion_scale is not None:
        target = target.with_diffusion_scale(args.diffusion_scale)
    model_kwargs = None
    guidance_note = ""
    if args.model_kind:   # a SiT checkpoint: latents (and images with --vae), class labels, guidance
        from .runtime.models import sit
        from .runtime.models.adapters import from_sit
        from .runtime.models.guidance import guided

        if out.suffix == ".png":
            raise LazyflowError("a SiT run writes latents: --out must end in .pt or .npy (with --vae the images "
                                "go to the same name with .png)")
        if not args.class_labels:
            raise LazyflowError("--class-labels is needed for a SiT (comma-separated; "
                                "the model's num_classes is the null class)")
        overrides = {}
        for key, value in _params(args.model_param, "--model-param").items():
            low = value.lower()
            try:
                overrides[key] = True if low == "true" else False if low == "false" else \
                    int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                raise LazyflowError(f"--model-param {key}: {value!r} is not a number or true/false") from None
        net = sit.load_sit(args.model, args.model_kind, **overrides).to(device)
        model = from_sit(net)
        shape = tuple(net.data_shape)
        model_kwargs = {"y": sit.class_labels(args.class_labels, args.num_samples, net.num_classes).to(device)}
        interval = None
        if args.guidance_interval:
            try:
                interval = tuple(float(v) for v in args.guidance_interval.split(","))
            except ValueError:
                raise LazyflowError(f"--guidance-interval: cannot read {args.guidance_interval!r} as lo,hi") from None
        if args.guidance != 1.0:
            model = guided(model, args.guidance, null={"y": net.num_classes}, interval=interval,
                           channels=args.guidance_channels)
            guidance_note = f", guidance {args.guidance:g}" + (f" on t in {list(interval)}" if interval else "") + \
                " (one network call on a doubled batch per evaluation)"
        meta = {}   # SiT: the linear schedule and velocity prediction
    else:
        model = models.load(args.model).to(device)
        meta = getattr(model, "metadata", {})
        shape = None
    source = load_schedule(args.source or meta.get("schedule", "linear"),
                           **_numbers(_params(args.source_param, "--source-param"), "--source-param"))
    prediction = args.prediction or meta.get("prediction", "velocity")
    if meta.get("exact"):   # an exact mixture (gmm64, gmm4096) answers on the asked source and prediction
        model = model.view(source, prediction)
    if args.shape:
        try:
            shape = tuple(int(s) for s in args.shape.split(","))
        except ValueError:
            raise LazyflowError(f"--shape: cannot read {args.shape!r} as comma-separated sizes") from None
    elif shape is None and hasattr(model, "data_shape"):
        shape = tuple(model.data_shape)
    elif shape is None:
        raise LazyflowError("--shape is needed for this model (its data shape is not recorded)")
    grid = parse_grid(args.grid)
    if isinstance(grid, str) and grid.endswith(".json"):   # a tuned grid: its steps unless --steps is given
        from .runtime.core.gridfile import load_grid_file

        tuned = load_grid_file(grid)
        args.steps = tuned.steps if args.steps is None else args.steps
        if args.diffusion_scale is None and tuned.diffusion_scale != 1:   # the scale the grid was tuned at
            target = target.with_diffusion_scale(tuned.diffusion_scale)
        if tuned.integrator and tuned.integrator != args.integrator:
            print(f"lazyflow sample: note: {tuned.describe()} was tuned for {tuned.integrator}, not {args.integrator}",
                  file=sys.stderr)
        grid = tuned
    args.steps = 8 if args.steps is None else args.steps
    ranks = ranks_of(launched_by_torchrun(), device)
    if args.shards and ranks.single:
        raise LazyflowError("--shards is for runs under torchrun (several processes); one process writes --out")
    batches = sample_batches(model, (args.num_samples, *shape), schedule=target, source=source, steps=args.steps,
                             integrator=args.integrator, final_step=args.final_step, grid=grid,
                             prediction=prediction, seed=args.seed, batch_size=args.batch_size, device=device,
                             compile=args.compile, capture=args.capture, model_kwargs=model_kwargs,
                             distributed=not ranks.single,
                             progress=ranks.rank == 0 and args.num_samples * args.steps > 2000)
    what = (f"schedule {target.describe()}, {args.steps} steps, {args.integrator}, grid {args.grid}{guidance_note}")
    if ranks.single:
        done = _write_as_they_finish(batches, out)
        print(f"wrote {out} ({done} samples of shape {tuple(shape)}, {what})")
    elif args.shards:
        _write_as_they_finish(batches, _shard_path(out, ranks.rank, ranks.world))
        if ranks.rank == 0:
            index = _write_shard_index(out, args.num_samples, ranks.world)
            print(f"wrote {index} and {ranks.world} shards ({args.num_samples} samples of shape {tuple(shape)}, {what})")
    else:   # gather on every rank, written once by rank 0
        import torch

        from .runtime.core.distributed import gather_batches

        x = gather_batches([x for _, x in batches], args.num_samples, tuple(shape), ranks, device=device,
                           dtype=torch.float32)
        if ranks.rank == 0:
            _write_as_they_finish([(range(args.num_samples), x)], out)
            print(f"wrote {out} ({args.num_samples} samples of shape {tuple(shape)} from {ranks.world} processes, "
                  f"{what})")
    if not ranks.single:
        import torch.distributed as dist

        dist.destroy_process_group()
    if args.model_kind and args.vae:
        import numpy as np
        import torch

        latents = torch.from_numpy(np.load(out)) if out.suffix == ".npy" else torch.load(out, weights_only=True)
        images = sit.decode_latents(latents, args.vae, device=device)
        path = sit.save_image_grid(images, out.with_suffix(".png"))
        print(f"wrote {path} ({len(images)} images of {images.shape[1]}x{images.shape[2]}, VAE {args.vae})")
    return 0


def _shard_path(out: Path, rank: int, world: int) -> Path:
    """Rank r's shard of ``out``: OUT.rank00002-of-00008.npy (same suffix)."""
    return out.with_name(f"{out.stem}.rank{rank:05d}-of-{world:05d}{out.suffix}")


def _write_shard_index(out: Path, n: int, world: int) -> Path:
    """OUT.index.json: each shard's file and the sample indices [start, stop) it holds, in order."""
    from .runtime.core.distributed import Ranks, share

    shards = []
    for rank in range(world):
        part = share(n, Ranks(rank, world))
        shards.append({"file": _shard_path(out, rank, world).name, "start": part.start, "stop": part.stop})
    index = out.with_name(f"{out.stem}.index.json")
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({"num_samples": n, "shards": shards}, indent=1) + "\n")
    return index


def _write_as_they_finish(batches, out: Path) -> int:
    """Write the samples to ``out`` after every finished batch (atomically), so that a run interrupted or
    failing in batch k keeps batches 1..k-1; returns the number of samples written."""
    import numpy as np
    import torch

    finished: list = []
    count = 0

    def write() -> None:
        x = torch.cat(finished).float().cpu()
        partial = out.with_name(f".{out.stem}.partial{out.suffix}")
        if out.suffix == ".npy":
            np.save(partial, x.numpy())
        elif out.suffix == ".pt":
            torch.save(x, partial)
        else:
            _figures().save_image_grid(x, partial)
        partial.replace(out)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for _, x in batches:
            finished.append(x)
            count += len(x)
            write()
    except (LazyflowError, KeyboardInterrupt) as err:
        if count:
            kept = f"kept the {count} samples of the finished batches in {out}"
            if isinstance(err, KeyboardInterrupt):
                print(f"lazyflow sample: interrupted; {kept}", file=sys.stderr)
            else:
                raise type(err)(f"{err} ({kept})") from err
        raise
    return count


def run_train(args: argparse.Namespace) -> int:
    from .runtime.models import train

    overrides = {"steps": args.steps} if args.steps else {}
    if args.what == "digits":
        path = train.train_digits(args.out_dir, **overrides)
    elif args.what == "moons":
        path = train.train_moons(args.out_dir, **overrides)
    else:
        path = train.train_classifier(args.out_dir)
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    card = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({k: v for k, v in card.items() if k in ("test_accuracy", "train_seconds")}))
    return 0


# --- bench, plot -------------------------------------------------------------------------------------

def run_bench(args: argparse.Namespace) -> int:
    from .runtime.evaluation.bench import best_by_kind, format_table, goals_markdown, run_quality_bench

    try:
        nfes = sorted({int(v) for v in args.nfe.split(",")})
    except ValueError:
        raise LazyflowError(f"--nfe: cannot read {args.nfe!r} as comma-separated integers") from None
    if min(nfes) < 1:
        raise LazyflowError("--nfe values must be >= 1")
    if args.n < 10:
        raise LazyflowError(f"--n must be at least 10 (the Fréchet distance needs a covariance), got {args.n}")
    from .runtime.models.gmm import NAMES as EXACT

    known = ("fd", "sw", "weight_tv") if args.model in EXACT else ("fd",)
    metrics = args.metric.split(",") if args.metric else list(known)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise LazyflowError(f"--metric {','.join(unknown)}: the metrics of {args.model!r} are {', '.join(known)}")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run_quality_bench(args.model, nfes, args.n, args.seed, include_peers=not args.no_peers,
                               full=not args.quick, log=log, prediction=args.prediction,
                               grid_files=[f for item in args.grid_file for f in item.split(",") if f])
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for metric in metrics:
            print(format_table(result, metric))
            print(best_by_kind(result, metric))
            print()
            if args.markdown:
                print(goals_markdown(result, metric))
                print()
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=1))
    if args.plot:
        _save_figure(_figures().plot_bench(result), args.plot)
    return 0


def run_tune_grid(args: argparse.Namespace) -> int:
    from .runtime.models import gmm
    from .runtime import models
    from .runtime.core.gridfile import save_grid_file
    from .runtime.core.schedule import load_schedule
    from .runtime.evaluation.tune import tune_grid

    if not args.out.endswith(".json"):
        raise LazyflowError(f"--out must end in .json, got {args.out!r}")
    if args.model in gmm.NAMES:
        model = gmm.load(args.model, prediction=args.prediction or "velocity")
    else:
        if args.prediction not in (None, "velocity"):
            raise LazyflowError("--prediction selects the output of an exact model (gmm64, gmm4096); "
                                f"{args.model!r} predicts what it was trained to")
        model = models.load(args.model)
    meta = getattr(model, "metadata", {})
    target = schedule(args)
    if args.diffusion_scale is not None:
        target = target.with_diffusion_scale(args.diffusion_scale)
    grid = tune_grid(model, model_name=args.model, schedule=target, source=load_schedule(meta.get("schedule", "linear")),
                     prediction=args.prediction or meta.get("prediction", "velocity"), integrator=args.integrator,
                     nfe=args.nfe, final_step=args.final_step, init=parse_grid(args.init), samples=args.samples,
                     seed=args.seed, holdout_seed=args.holdout_seed, reference_steps=args.reference_steps,
                     max_evals=args.max_evals, log=lambda line: print(line, file=sys.stderr))
    path = save_grid_file(grid, args.out)
    t = grid.tuning
    print(f"wrote {path}: {grid.steps} steps of {grid.schedule} for {grid.integrator} at {grid.nfe} NFE, times "
          f"{[round(v, 5) for v in grid.times]}; loss {t['loss_before']:.4g} -> {t['loss_after']:.4g} (seed {t['seed']}), "
          f"held-out seed {t['holdout_seed']}: {t['holdout_loss_before']:.4g} -> {t['holdout_loss_after']:.4g}; "
          f"cost {t['seconds']:.1f} s, {t['model_calls']} model calls")
    print(f"use: lazyflow sample --model {args.model} --schedule {grid.base_schedule} --integrator {grid.integrator} "
          f"--grid {path} --out samples.npy")
    return 0


def run_overhead(args: argparse.Namespace) -> int:
    from .runtime.evaluation.overhead import format_overhead, overhead_bench
    from .runtime.core.sampler import resolve_device

    device = resolve_device(args.device or ("cuda" if _cuda() else "cpu"))
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


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _positive_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LazyflowError(f"{flag}: cannot read {text!r} as comma-separated integers") from None
    if not values or min(values) < 1:
        raise LazyflowError(f"{flag}: need positive integers, got {text!r}")
    return values


def _figures():
    from .figures import plots

    return plots


def _save_figure(fig, out: str) -> None:
    import matplotlib.pyplot as plt

    path = Path(out)
    if path.suffix.lower() != ".png":
        raise LazyflowError(f"--out must be a .png file, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def run_plot(args: argparse.Namespace) -> int:
    plots = _figures()
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
        try:
            result = json.loads(Path(args.source_json).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LazyflowError(f"--from {args.source_json}: cannot read a bench result ({err})") from None
        if not isinstance(result, dict) or "rows" not in result:
            raise LazyflowError(f"--from {args.source_json}: not a bench result (written by lazyflow bench --save)")
        fig = plots.plot_bench(result)
    _save_figure(fig, args.out)
    return 0


# --- the parser ------------------------------------------------------------------------------------

class _Registry:
    """Choices read from a runtime registry when argparse first checks a value, so that building the
    parser (and ``lazyflow derive``) does not import torch."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def _names(self) -> list[str]:
        from importlib import import_module

        return list(getattr(import_module(f"{__package__}.runtime.{self.module}"), self.name))

    def __contains__(self, value) -> bool:
        return value in self._names()

    def __iter__(self):
        return iter(self._names())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazyflow", description="Sample pretrained flow models in fewer steps "
                                     "by integrating them in a lazy schedule.")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.add_argument("--source", required=True, help="schedule the model was trained on (preset, .toml or kernel .py)")
    p.add_argument("--target", required=True, help="schedule to sample in (preset, .toml or kernel .py)")
    _output_args(p)
    p.set_defaults(handler=run_convert)

    p = sub.add_parser("emit", help="generate a PyTorch kernel module for a schedule")
    _schedule_args(p)
    p.add_argument("--out-dir", default=".", help="folder to write <name>.py into (default: the current directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=run_emit)

    p = sub.add_parser("sample", help="sample a pretrained model in few steps")
    p.add_argument("--model", default="digits", help="embedded model name (digits), a model file, or a SiT "
                                                   "checkpoint (.pt state dict or .safetensors) with --model-kind")
    p.add_argument("--model-kind", default=None, metavar="KIND",
                   help="the --model file is a SiT checkpoint of this kind: sit-{s,b,l,xl}/{2,4,8} (input size, "
                        "classes and learn_sigma are read from the checkpoint)")
    p.add_argument("--model-param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a setting of --model-kind, e.g. depth=2 (repeatable)")
    p.add_argument("--class-labels", default=None, metavar="L1,L2,...",
                   help="SiT class labels, repeated in order over the samples (sample i gets label i mod count)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale for a SiT (default 1: none; a guided evaluation is one "
                        "network call on a doubled batch)")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only where the model's time t (noise 0, data 1) is in [LO, HI]")
    p.add_argument("--guidance-channels", type=int, default=None, metavar="K",
                   help="guide only the first K output channels (the SiT/DiT reference code guides 3); default all")
    p.add_argument("--vae", default=None, metavar="FOLDER",
                   help="a local diffusers AutoencoderKL folder: also decode the SiT latents (scale 0.18215) and "
                        "write them as OUT.png")
    _schedule_args(p, default="pointmass")
    p.add_argument("--source", default=None, help="schedule the model was trained on (default: the model's own, "
                                                  "else linear)")
    p.add_argument("--source-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the source schedule, e.g. shift=3 (repeatable)")
    p.add_argument("--diffusion-scale", type=float, default=None, metavar="LAMBDA",
                   help="sigma = LAMBDA * the schedule's sigma (0: its ODE; default 1); a stochastic schedule only")
    p.add_argument("--steps", type=int, default=None, help="steps (default 8, or a tuned --grid file's)")
    p.add_argument("--integrator", default="euler", choices=_Registry("core.integrators", "INTEGRATORS"), metavar="NAME",
                   help="euler, heun, midpoint, exponential, exp-midpoint, multistep, multistep-pc, multistep3, "
                        "multistep3-pc (default euler)")
    p.add_argument("--final-step", default=None, choices=("euler", "denoise"))
    p.add_argument("--grid", default="uniform", help="uniform, source, logsnr, edm, logsnr:FIRST,LAST (uniform in "
                   "log snr between these, from t = 0), logsnr-open:FIRST,LAST (starting at log snr FIRST: for noise "
                   "and score models), a tuned grid's .json file (lazyflow tune-grid), or comma-separated times")
    p.add_argument("--prediction", default=None, choices=("velocity", "x", "noise", "score"),
                   help="the model's output (default: the model's own, else velocity)")
    p.add_argument("--shape", default=None, help="data shape, e.g. 1,8,8 (default: the model's own)")
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
    p.set_defaults(handler=run_sample)

    p = sub.add_parser("train", help="reproduce an embedded model's weights")
    p.add_argument("what", choices=["digits", "moons", "classifier"])
    p.add_argument("--out-dir", default=".", help="folder for the weights (default: the current directory)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.set_defaults(handler=run_train)

    p = sub.add_parser("bench", help="sample quality (FD) against NFE, ours and peers side by side")
    p.add_argument("--model", default="digits", help="digits, or an exact Gaussian mixture: gmm64, gmm4096")
    p.add_argument("--prediction", default=None, choices=("velocity", "x", "noise", "score"),
                   help="what the exact mixture model outputs (default velocity; peers always get its velocity)")
    p.add_argument("--metric", default=None, help="comma-separated tables to print: fd (digits), or fd, sw, "
                                                  "weight_tv (exact mixtures; default all of the model's)")
    p.add_argument("--nfe", default="2,4,6,8,12,16")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", default=None, help="also write the JSON result to this file")
    p.add_argument("--plot", default=None, help="write the quality-vs-NFE plot to this PNG")
    p.add_argument("--markdown", action="store_true", help="also print the best of each kind per budget as a "
                   "markdown table with issue 12's goals checked (what the README shows)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--quick", action="store_true", help="uniform grids only")
    p.add_argument("--grid-file", action="append", default=[], metavar="FILE.json",
                   help="a tuned grid (lazyflow tune-grid; repeatable or comma-separated): scored at its own NFE beside "
                        "its untuned starting grid and reported apart from the table as tuned")
    p.set_defaults(handler=run_bench)

    p = sub.add_parser("tune-grid", help="fit a few-step time grid against high-accuracy reference trajectories "
                       "(training-free; minutes on a CPU) and save it as a .json file for --grid")
    p.add_argument("--model", default="digits", help="digits, a model file, or an exact mixture: gmm64, gmm4096")
    p.add_argument("--nfe", type=int, required=True, help="network evaluations of the tuned run")
    _schedule_args(p, default="pointmass")
    p.add_argument("--integrator", default="multistep", choices=_Registry("core.integrators", "INTEGRATORS"), metavar="NAME",
                   help="the integrator the grid is tuned for (default multistep)")
    p.add_argument("--final-step", default=None, choices=("euler", "denoise"))
    p.add_argument("--diffusion-scale", type=float, default=None, metavar="LAMBDA",
                   help="tune for sigma = LAMBDA * the schedule's sigma (a stochastic schedule; stored in the file, "
                        "and sample --grid FILE, the bench and the scheduler run at it)")
    p.add_argument("--prediction", default=None, choices=("velocity", "x", "noise", "score"),
                   help="what the exact mixture outputs (default velocity; noise and score need --init logsnr-open:...)")
    p.add_argument("--init", default="logsnr", help="the starting grid (any --grid of sample); its ends are kept")
    p.add_argument("--samples", type=int, default=256, help="samples the loss is measured on (default 256)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the tuning samples")
    p.add_argument("--holdout-seed", type=int, default=None, help="seed of the held-out check (default seed + 1000)")
    p.add_argument("--reference-steps", type=int, default=200, help="Heun steps of the reference ODE (default 200)")
    p.add_argument("--max-evals", type=int, default=400, help="trial grids Nelder-Mead may run (default 400)")
    p.add_argument("--out", default="grid.json", help="the grid file to write (default grid.json)")
    p.set_defaults(handler=run_tune_grid)

    p = sub.add_parser("bench-overhead", help="sampler time beyond the model's own calls, every integrator family, "
                       "beside a plain Euler loop and diffusers' FlowMatchEuler")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--steps", type=int, default=16, help="network calls per run (default 16)")
    p.add_argument("--models", default="mlp,convnet,sit", help="mlp, convnet, sit (SiT-XL/2 size in bf16 on a GPU, "
                   "width 256 and 4 blocks on the CPU)")
    p.add_argument("--batches", default="8,64,256", help="batch sizes (the transformer runs at 64 and below)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell, alternating (median reported)")
    p.add_argument("--modes", default="eager,capture", help="eager, compile, capture (capture needs CUDA)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run_overhead)

    p = sub.add_parser("plot", help="draw comparison figures")
    kinds = p.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="PNG file to write")
    common.add_argument("--schedules", default="linear,vp,pointmass",
                        help="comma-separated presets, .toml or kernel .py files")
    q = kinds.add_parser("schedules", parents=[common], help="alpha, beta, log snr, sigma, eps*, time map, scale")
    q.add_argument("--source", default="linear")
    q = kinds.add_parser("drift", parents=[common], help="Gaussian drift and drift norm along 2D paths")
    q.add_argument("--steps", type=int, default=64)
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
    p.set_defaults(handler=run_plot)
    return parser


#: options whose value is an expression and may start with a minus sign (``--alpha -t+1``)
_EXPRESSION_OPTIONS = ("--alpha", "--beta", "--sigma")


def _join_expressions(argv: list[str]) -> list[str]:
    """``--alpha -t+1`` as ``--alpha=-t+1``: argparse would take ``-t+1`` for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _EXPRESSION_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command; refused input prints one line on stderr and exits 2."""
    parser = build_parser()
    args = parser.parse_args(_join_expressions(sys.argv[1:] if argv is None else list(argv)))
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
