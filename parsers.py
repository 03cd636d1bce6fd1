"""The command line's parsers: one short function per subcommand, choices and help read lazily from the
registries (so that building the parser, and ``lazyflow derive``, never imports torch).

Each subcommand's parser records the command's name (``args.command``); the shell (:mod:`lazyflow.cli`) maps
names to its handlers, so this module never imports it.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from .errors import LazyflowError
from .predictions import PREDICTIONS
from .runtime.core import defaults as DEFAULTS

__all__ = ["build_parser", "join_expressions", "PREDICTIONS", "OneLineParser", "named_values", "numbers_of",
           "positive_ints"]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose refusals are one line on stderr (exit 2), as every other refusal of the
    command line: ``lazyflow sample: error: MESSAGE (lazyflow sample --help lists the flags)``."""

    def error(self, message: str) -> None:   # argparse's own prints the usage first: several lines
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} ({self.prog} --help lists the flags)\n")


# --- flag values: the text of a flag read as values, refused in one line naming the flag ---------------

def named_values(items: list[str], flag: str = "--param") -> dict[str, str]:
    """NAME=VALUE items of a repeatable flag as a dict of texts."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LazyflowError(f"{flag} expects NAME=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def numbers_of(text: str | None, flag: str, what: str, kind: type = float) -> tuple | None:
    """Comma-separated numbers of ``kind`` (None stays None); anything else is refused naming ``flag``."""
    try:
        return None if text is None else tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise LazyflowError(f"{flag}: cannot read {text!r} as {what}") from None


def positive_ints(text: str, flag: str) -> list[int]:
    """Comma-separated positive integers (empty items skipped), at least one."""
    items = [v for v in text.split(",") if v.strip()]
    values = numbers_of(",".join(items), flag, "comma-separated integers", int) if items else ()
    if not values or min(values) < 1:
        raise LazyflowError(f"{flag}: need positive integers, got {text!r}")
    return list(values)


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

def _schedule_args(p: argparse.ArgumentParser, *, default: str | None = None, what: str = "the schedule",
                   alias: str | None = None) -> None:
    """The one schedule group of every command that takes a schedule: a preset, a ``.toml`` or kernel ``.py``
    file, or ``--alpha/--beta`` expressions, each with ``--sigma``, ``--param``, ``--data-var`` and ``--name``.
    ``--schedule`` is None unless given; ``schedule_default`` holds the command's default (used only when
    neither --schedule nor --alpha/--beta is given: lazyflow.derive.flags.spec_from_parts)."""
    g = p.add_argument_group(what, "a preset name, a .toml schedule, a kernel .py file, or --alpha and --beta "
                             "expressions in t (never both)")
    names = ["--schedule", *([alias] if alias else [])]
    g.add_argument(*names, dest="schedule", default=None, metavar="SCHEDULE",
                   help="preset name, a .toml schedule or a kernel .py file" + (f" (default {default})" if default
                                                                                 else ""))
    g.add_argument("--alpha", help="alpha(t), e.g. 'cos(pi*t/2)' (with --beta, instead of --schedule)")
    g.add_argument("--beta", help="beta(t), e.g. 'sin(pi*t/2)'")
    g.add_argument("--sigma", help="ode, optimal, lazy or an expression for sigma(t)")
    g.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a schedule parameter, e.g. shift=1.7 for sd3 (repeatable)")
    g.add_argument("--data-var", default=None, help="data variance v of the Gaussian oracle (default 1)")
    g.add_argument("--name", default=None, help="a name for a schedule given by expressions")
    p.set_defaults(schedule_default=default)


# --- one short function per subcommand -------------------------------------------------------

def _command(sub, name: str, help: str, **kw) -> argparse.ArgumentParser:
    """The subparser of command ``name``; it records the name, which the shell maps to its handler."""
    p = sub.add_parser(name, help=help, **kw)
    p.set_defaults(command=name)
    return p


def _output_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="one JSON object of SymPy-parsable strings")
    group.add_argument("--latex", action="store_true", help="print LaTeX")


def _formula_parsers(sub) -> None:
    p = _command(sub, "derive", "derive the formulas of a schedule")
    _schedule_args(p)
    _output_args(p)
    p = _command(sub, "lazy", "solve the zero-drift condition for the missing one of alpha, beta, sigma")
    p.add_argument("--alpha")
    p.add_argument("--beta")
    p.add_argument("--sigma", help="ode, optimal, or an expression for sigma(t)")
    p.add_argument("--data-var", default="1", help="data variance v (a number, or v for a symbol)")
    p.add_argument("--data-mean", default=None, help="data mean (a number, or mu for a symbol): the lazy frame "
                   "is then centred, w = x - beta mu (default 0)")
    _output_args(p)
    p = _command(sub, "convert", "time map and scale from a target schedule to a source schedule")
    p.add_argument("--source", required=True, help="schedule the model was trained on (preset, .toml or kernel .py)")
    _schedule_args(p, what="the target schedule (the one to sample in; --target is --schedule)", alias="--target")
    _output_args(p)
    p = _command(sub, "emit", "generate a PyTorch kernel module for a schedule")
    _schedule_args(p)
    p.add_argument("--out-dir", default=".", help="folder to write <name>.py into (default: the current directory)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


def _run_args(p: argparse.ArgumentParser, *, integrator: str, what: str, scale: str, prediction: str) -> None:
    """The schedule, integrator, final step, diffusion scale and prediction of a sampling run."""
    _schedule_args(p, default=DEFAULTS.SCHEDULE)
    p.add_argument("--integrator", default=integrator, choices=_names("core.integrators", "INTEGRATORS"),
                   metavar="NAME", help=_integrators_help(what, integrator))
    p.add_argument("--final-step", default=None, choices=_names("core.integrators", "FINAL_STEPS"), metavar="STEP",
                   help=_Lazy(lambda: "the last step: " + ", ".join(_registry("core.integrators", "FINAL_STEPS"))
                              + f" (the denoised mean eta_X; default {DEFAULTS.FINAL_STEP})"))
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
    p.add_argument("--prompt-embeds", default=None, metavar="FILE", help="for --model-kind diffusers-transformer: a "
                   "safetensors file of encoder_hidden_states (P, tokens, dim) and pooled_projections (P, dim); "
                   "sample i gets prompt i mod P")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale for a SiT (default 1: "
                   "none; a guided evaluation is one network call on a doubled batch)")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only where the model's time t (noise 0, data 1) is in [LO, HI]")
    p.add_argument("--guidance-channels", type=int, default=None, metavar="K",
                   help="guide only the first K output channels (the SiT/DiT reference code guides 3); default all")
    p.add_argument("--vae", default=None, metavar="FOLDER", help="a local diffusers AutoencoderKL folder: also decode "
                   "the SiT latents (scale 0.18215) and write them as OUT.png")


def _data_shape(text: str) -> tuple[int, ...]:
    """``--shape``'s type: :func:`lazyflow.runtime.models.kind.data_shape_option`, its refusal as argparse's."""
    try:
        return _registry("models.kind", "data_shape_option")(text, flag=None)
    except LazyflowError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _shape_arg(p: Any) -> None:
    """``--shape``, declared once for every command that takes it (``p``: a parser or an argument group)."""
    p.add_argument("--shape", type=_data_shape, default=None, metavar="C,H,W", help="the data (latent) shape, "
                   "comma-separated, e.g. 1,8,8 (default: the model's own; needed where the model does not say it: a "
                   "TorchScript file without data_shape, FLUX's packed latents as TOKENS,CHANNELS)")


def _sample_parser(sub) -> None:
    p = _command(sub, "sample", "sample a pretrained model in few steps")
    p.add_argument("--model", default="digits", help=_models_help("; or a model file, or a checkpoint with "
                                                                  "--model-kind (default digits)"))
    _sit_args(p)
    _run_args(p, integrator=DEFAULTS.INTEGRATOR, what="the integrator", scale="sigma = LAMBDA * the schedule's sigma (0: its ODE; "
              "default 1, or a tuned grid file's); a stochastic schedule only", prediction="the model's output "
              "(default: the model's own, else velocity; an exact model answers with the one asked)")
    p.add_argument("--source", default=None, help="schedule the model was trained on (default: the model's own, "
                   "else linear)")
    p.add_argument("--source-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the source schedule, e.g. shift=3 (repeatable)")
    p.add_argument("--steps", type=int, default=None, help=f"steps (default {DEFAULTS.STEPS}, or a tuned --grid "
                   "file's)")
    p.add_argument("--grid", default=DEFAULTS.GRID, help=_Lazy(lambda: ", ".join(_registry("core.grids", "GRIDS")) +
                   ", logsnr:FIRST,LAST (uniform in log snr between these, from t = 0), logsnr-open:FIRST,LAST "
                   "(starting at log snr FIRST: for noise and score models), shift:S (SD3's flow sigmas shifted by S), a tuned "
                   "grid's .json file (lazyflow "
                   f"tune-grid), or comma-separated times ending at 1 (default {DEFAULTS.GRID})"))
    _shape_arg(p)
    p.add_argument("--data-stats", default=None, metavar="FILE", help="the data's statistics (a DataStats .safetensors "
                   "file) for the data-frame integrators (without it they integrate in N(E[X | c], I))")
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
    again = p.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true", help="overwrite existing output (and drop an unfinished run "
                       "kept in OUT.partial/)")
    again.add_argument("--resume", action="store_true", help="continue a killed run from the batches it finished "
                       "(kept in OUT.partial/; same settings, refused otherwise); the output equals an uninterrupted run's")


def _train_parser(sub) -> None:
    p = _command(sub, "train", "reproduce an embedded model's weights")
    p.add_argument("what", choices=_names("models.train", "RECIPES"), metavar="WHAT",
                   help=_Lazy(lambda: ", ".join(_registry("models.train", "RECIPES"))))
    p.add_argument("--out-dir", default=".", help="folder for the weights (default: the current directory)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed (another network from the "
                   "same recipe)")


def _bench_parser(sub) -> None:
    p = _command(sub, "bench", "sample quality (FD) against NFE, ours and peers side by side")
    p.add_argument("--model", default="digits", help=_Lazy(lambda: "a model the bench scores: " + ", ".join(
        _registry("evaluation.bench", "bench_models")()) + ", or a digits model file (default digits); any model "
        "file with --model-kind (a SiT checkpoint, torchscript, diffusers-transformer): the path table alone"))
    p.add_argument("--prediction", default=None, choices=PREDICTIONS,
                   help="what an exact model outputs (default velocity; peers always get its velocity)")
    p.add_argument("--metric", default=None, help="comma-separated tables to print: the model's metrics, fd (digits) "
                   "or fd, sw, weight_tv, nll_gap (exact mixtures), and path (all); default all of them")
    p.add_argument("--nfe", default=None, help="comma-separated budgets (default 2,4,6,8,12,16; 4,6,8 with --model-kind)")
    p.add_argument("--n", type=int, default=None, help="samples (default 2000; 64 with --model-kind)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", default=None, help="also write the JSON result to this file")
    p.add_argument("--plot", default=None, help="write the quality-vs-NFE plot to this PNG")
    p.add_argument("--markdown", action="store_true", help="also print the best of each kind per budget as a "
                   "markdown table, each goal checked: ours against the best peer at 4 and 6 NFE, each family "
                   "against its converged reference at 8 (what the README shows)")
    p.add_argument("--no-peers", action="store_true")
    _schedule_args(p, what="only this schedule's rows of ours (default: every schedule the bench compares)")
    p.add_argument("--quick", action="store_true", help="uniform grids only")
    p.add_argument("--grid-file", action="append", default=[], metavar="FILE.json",
                   help="a tuned grid (lazyflow tune-grid; repeatable or comma-separated): scored at its own NFE beside "
                        "its untuned starting grid and reported apart from the table as tuned")
    _model_bench_args(p)


def _model_bench_args(p: argparse.ArgumentParser) -> None:
    """``lazyflow bench --model FILE --model-kind KIND``: pathwise errors on the user's own model (no dataset)."""
    _sit_args(p)
    g = p.add_argument_group("a model file (--model-kind)", "every deterministic sampler's path error against the "
                             "model's own converged ODE solution from the same noise; no dataset")
    _shape_arg(g)
    g.add_argument("--label-seed", type=int, default=0, help="without --class-labels, a SiT's labels are drawn "
                   "uniformly from this seed (default 0)")
    g.add_argument("--batch-size", type=int, default=32, help="samples per batch: every run and the reference go "
                   "batch by batch (default 32)")
    g.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or mps")
    g.add_argument("--reference-steps", type=int, default=400, help="steps N of the reference (multistep3-pc, uniform, "
                   "float64), checked against N/2 (default 400)")
    g.add_argument("--reference-cache", default=None, metavar="FILE.safetensors", help="read the reference from FILE "
                   "if it exists (refused if made with other settings), else compute it and write it there")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (network evaluations, on stderr)")
    g.add_argument("--stats-samples", type=int, default=2000, metavar="N", help="the data frames' statistics come from "
                   "N of the model's own samples, drawn once (multistep-pc, 32 steps; default 2000); with --save "
                   "they are written next to it for the rows' lazyflow sample flags")
    g.add_argument("--no-data-frames", action="store_true", help="leave out the data-frame rows (and their statistics)")
    g.add_argument("--pilot", default=None, metavar="FILE.json", help="the JSON of an earlier bench of this model "
                   "(--save; other --seed, fewer --n): its recommended sampler at each budget is run here and checked "
                   "against this bench's best of ours and the best peer")
    g.add_argument("--tune", type=int, default=0, metavar="K", help="per budget, tune the grids of the K lowest-path "
                   "rows of ours on other noise (seed + 1, 128 samples; lazyflow tune-grid's method) and score them "
                   "here; the grids are written next to --save (default 0: none)")
    g.add_argument("--bespoke", action="store_true", help="per budget, fit a bespoke solver (its own times and step "
                   "weights; tune-grid --integrator bespoke) on other noise (seed + 1, 128 samples) and score it here; "
                   "written next to --save")


def _tune_parser(sub) -> None:
    p = _command(sub, "tune-grid", "fit a few-step time grid against high-accuracy reference "
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
    p.add_argument("--max-evals", type=int, default=400, help="trial grids Nelder-Mead may run (default 400); with "
                   "--integrator bespoke (a solver of its own times and step weights, fitted in the model's own "
                   "schedule by Adam through the model), its iterations")
    p.add_argument("--out", default="grid.json", help="the grid file to write (default grid.json)")


def _overhead_parser(sub) -> None:
    p = _command(sub, "bench-overhead", "sampler time beyond the model's own calls, every integrator "
                 "family, beside a plain Euler loop and diffusers' FlowMatchEuler")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--steps", type=int, default=16, help="network calls per run (default 16)")
    p.add_argument("--models", default="mlp,convnet,sit", help="mlp, convnet, sit (SiT-XL/2 size in bf16 on a GPU, "
                   "width 256 and 4 blocks on the CPU)")
    p.add_argument("--batches", default="8,64,256", help="batch sizes (the transformer runs at 64 and below)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell, alternating (median reported)")
    p.add_argument("--modes", default="eager,capture", help="eager, compile, capture (capture needs CUDA)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--frames", action="store_true", help="instead: the data frames' own work per call (diag, dct, "
                   "lowrank 64) at the latent shapes of SiT-XL/2, SD3 and FLUX (packed), against a stand-in for one "
                   "call of a model of that size (--batches, --repeats; e.g. --batches 1,4)")


def _plot_parser(sub) -> None:
    kinds = _command(sub, "plot", "draw comparison figures").add_subparsers(dest="kind", required=True)
    from .figures.kinds import PLOT_KINDS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="PNG file to write")
    _schedule_args(common, what="one schedule drawn instead of --schedules")
    for kind in PLOT_KINDS.values():   # each kind's flags and defaults, declared once in figures/kinds.py
        q = kinds.add_parser(kind.name, parents=[common] if kind.schedules else [], help=kind.help)
        if not kind.schedules:
            q.add_argument("--out", required=True, help="PNG file to write")
        for f in kind.all_flags:
            q.add_argument(f"--{f.name}", dest=f.key, default=f.default, type=f.type, choices=f.choices,
                           required=f.required, help=f.help)
    q = kinds.add_parser("all", help="redraw every figure committed in figures/ with the settings that drew it")
    q.add_argument("--out-dir", required=True, help="folder to write the PNGs into (figures/ redraws the committed ones)")
    q.add_argument("--only", default=None, metavar="FILES", help="comma-separated file names, e.g. schedules.png "
                   "(default: every figure)")
    q.add_argument("--from", dest="source_json", default=None, metavar="FILE", help="the bench result of "
                   "quality_vs_nfe.png (default: the committed figures/bench_digits.json)")


def _stats_parser(sub) -> None:
    p = _command(sub, "stats", "write the data statistics (mean, covariance) of the data-frame integrators: from "
                 "samples of the data, or from the model's own samples")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--from", dest="samples", default=None, metavar="FILE", help="the data: a .npy or .pt file of "
                       "shape (n, *data_shape)")
    given.add_argument("--from-model", dest="model", default=None, metavar="MODEL",
                       help=_models_help("; its own samples, drawn with a deterministic sampler, stand in for the data"))
    p.add_argument("--kind", default="diag", metavar="KIND", help="scalar, diag, channel (per channel of dimension "
                   "1), lowrank (needs --rank), full (small data only), dct (per 2-D DCT coefficient of each plane: "
                   "images, latents; --packed for FLUX's packed latents) or auto (chosen from the data shape and the "
                   "number of samples) (default diag)")
    p.add_argument("--rank", type=int, default=None, help="eigenpairs kept by --kind lowrank")
    p.add_argument("--packed", action="store_true", help="--kind dct or auto: the samples are packed latents "
                   "(n, S, K), S tokens on a square grid (FLUX); the DCT runs over the token grid per channel")
    p.add_argument("--grid", default=None, metavar="H,W", help="--packed: the token grid, where it is not square")
    p.add_argument("--floor", type=float, default=1e-3, help="the least variance (default 1e-3)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=None,
                   help="--from-model: samples drawn (default 2000)")
    p.add_argument("--steps", type=int, default=None, help="--from-model: steps of the sampler (default 32)")
    p.add_argument("--integrator", default=None, choices=_names("core.integrators", "INTEGRATORS"),
                   metavar="NAME", help="--from-model: the sampler's integrator (default multistep-pc)")
    p.add_argument("--seed", type=int, default=None, help="--from-model: the noise seed (default 0)")
    p.add_argument("--device", default=None, help="--from-model: where the model runs")
    _shape_arg(p)
    p.add_argument("--condition", default=None, choices=("none", "label", "first-call"),
                   help="--from-model, a conditional model: one set for all samples (none, the default), one per "
                        "class label (label), or the covariance within the conditions with each sample's mean read "
                        "from its first call (first-call: prompts, guidance)")
    _sit_args(p)
    _schedule_args(p, default="linear", what="--from-model: the sampler's schedule")
    p.add_argument("--out", required=True, help="the statistics file to write (.safetensors; lazyflow sample "
                   "--data-stats reads it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")


def _comfyui_parser(sub) -> None:
    p = _command(sub, "comfyui-node", "write the lazyflow sampler custom node for ComfyUI (a one-file "
                 "custom_nodes folder that imports it from this package)")
    p.add_argument("directory", metavar="DIR", help="the node's folder, e.g. ComfyUI/custom_nodes/lazyflow_sampler (not a folder named lazyflow)")
    p.add_argument("--force", action="store_true", help="replace an existing DIR/__init__.py")


def build_parser() -> argparse.ArgumentParser:
    """The ``lazyflow`` parser with every subcommand (``args.command`` names the one given)."""
    from . import __version__

    parser = OneLineParser(prog="lazyflow", description="Sample pretrained flow models in fewer steps "
                           "by integrating them in a lazy schedule.")
    parser.add_argument("--version", action="version", version=f"lazyflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_formula_parsers, _sample_parser, _train_parser, _bench_parser, _tune_parser, _overhead_parser,
                _plot_parser, _stats_parser, _comfyui_parser):
        add(sub)
    return parser


def join_expressions(argv: list[str]) -> list[str]:
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
