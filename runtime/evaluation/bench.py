"""The quality benchmark behind ``lazyflow bench``: every sampler at equal numbers of network
evaluations, ours and the peers' side by side on one model, from the same initial noise.  It returns
data (and formats tables); the command line prints and plots them.

Models come from the model registry (:mod:`lazyflow.runtime.models.registry`), each scored by the scorer
the evaluation layer attaches to its kind (:mod:`.scorers`; a kind's own ``scorer`` overrides it): the
embedded ``digits`` (FD in a classifier's features) and the exact Gaussian mixtures ``gmm64``/``gmm4096``
and ``gmm:SEED`` (fd, sw, weight_tv, nll_gap with known floors).  Every deterministic row, ours and the
peers', also carries ``path``: the mean L2 distance of its samples to the model's own converged ODE
solution from the same initial noise (:mod:`.paths`: the source schedule's multistep3-pc on 800 uniform
steps in float64, checked against 400); stochastic rows carry None.  Every run of ours and every peer
starts from the same noise x0 = ``standard_normal(seed, range(n), 0, data_shape)``.

Besides the frames of :data:`BENCH_SCHEDULES`, the default method list runs the data-frame integrators
with statistics estimated from 2,000 samples (:mod:`.data_rows`), rows named ``.../...[KIND]``, and an
exact model adds the ``Gaussian map (0 NFE)`` baseline row (flagged ``baseline``; never counted as ours).
Every row of ours carries ``sample_args``: the ``lazyflow sample`` flags that reproduce its samples bit for
bit (a data-frame row needs the statistics file, written only when the bench is given an output path)."""
from __future__ import annotations

import datetime
import math
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ...errors import LazyflowError
from ..core.data_frame import stochastic_data_frame, without_skip
from ..core.integrators import INTEGRATORS
from ..models.kind import LoadedModel, ModelKind, Scorer
from .data_rows import STATS_SAMPLES, BenchStats, bench_stats, gaussian_map, stats_kinds
from .goals import best_row, path_goals_markdown, rank_value, versus
from .paths import PATH_REFERENCE_STEPS, PathReference, path_error, path_reference
from .scorers import PATH_METRIC, DigitsScorer, kind_metrics, scorer_factory

__all__ = ["CountingModel", "OurMethod", "our_methods", "data_frame_methods", "run_quality_bench", "format_table",
           "best_by_kind", "goals_markdown", "format_report", "sample_args", "bench_models", "bench_metrics",
           "bench_model", "BenchModel", "DigitsScorer", "BENCH_SCHEDULES", "REFERENCES", "GAUSSIAN_MAP",
           "STATS_FILE_MISSING"]

#: the frames the bench compares
BENCH_SCHEDULES = ("linear", "vp", "pointmass", "linear-sde", "vp-sde")
#: integrators left out of the bench because they lost where measured: multistep3(-pc) equal
#: multistep(-pc) at 4 NFE (no third-order step fits) and lose at 6 and 8 on gmm64 and digits in every frame
#: and grid but one tie (gmm64 logsnr pc at 8: 0.227 vs 0.230, floor 0.219); e.g. linear/uniform pc at 6 NFE:
#: gmm64 0.404 vs 0.320, digits 2.67 vs 2.01
BENCH_SKIPPED_INTEGRATORS = ("multistep3", "multistep3-pc")


class CountingModel:
    """Wraps a model and counts its calls (network evaluations)."""

    def __init__(self, model: Callable):
        self.model, self.calls = model, 0

    def __call__(self, x, t, **kwargs):
        self.calls += 1
        return self.model(x, t, **kwargs)


@dataclass(frozen=True)
class OurMethod:
    schedule: str
    integrator: str
    grid: str
    final_step: str | None = None
    diffusion: float = 1.0      # sigma = diffusion * the schedule's sigma (Schedule.with_diffusion_scale)
    stats: str | None = None    # the data-frame integrators' statistics kind (full, diag, ...)

    @property
    def name(self) -> str:
        """``schedule[*scale]/integrator/grid[/final][[stats]]``; a tuned grid's file as ``tuned:FILE``."""
        last = f"/{self.final_step}" if self.final_step else ""
        scale = f"*{self.diffusion:g}" if self.diffusion != 1 else ""
        kind = f"[{self.stats}]" if self.stats else ""
        grid = f"tuned:{Path(self.grid).name}" if self.grid.endswith(".json") else self.grid
        return f"{self.schedule}{scale}/{self.integrator}/{grid}{last}{kind}"

    def target(self):
        """The schedule this method integrates in, with its diffusion scale."""
        from ..core.schedule import load_schedule

        schedule = load_schedule(self.schedule)
        return schedule if self.diffusion == 1 else schedule.with_diffusion_scale(self.diffusion)



def our_methods(full: bool = True) -> list[OurMethod]:
    """The samplers the bench compares: each schedule with each integrator and grid that applies."""
    methods = []
    for schedule in BENCH_SCHEDULES:
        for integrator, method in INTEGRATORS.items():
            if integrator in BENCH_SKIPPED_INTEGRATORS or not method.classic:
                continue   # the data-frame integrators need the data's statistics, which the bench does not give
            if schedule == "linear" and integrator == "exponential":
                continue  # identical to Euler on the linear schedule
            grids = ("uniform", "source", "logsnr") if full else ("uniform",)
            for grid in grids:
                if grid == "source" and schedule in ("linear", "linear-sde"):
                    continue  # the source frame itself: the same as uniform
                methods.append(OurMethod(schedule, integrator, grid))
    if full:  # the last step: a plain step or the denoised mean eta_X
        methods += [OurMethod("pointmass", integrator, grid, "denoise") for integrator in ("euler", "midpoint", "multistep-pc")
                    for grid in ("uniform", "logsnr")]
        methods += diffusion_sweep()
    return methods


def data_frame_methods(full: bool, kinds: tuple[str, ...]) -> list[OurMethod]:
    """The data-frame integrators (``needs_data_stats``) in each ODE frame of :data:`BENCH_SCHEDULES`, on the
    grids :func:`our_methods` uses, once per statistics kind in ``kinds``."""
    from ..core.schedule import load_schedule

    methods = []
    for kind in kinds:
        for schedule in BENCH_SCHEDULES:
            target = load_schedule(schedule)
            if target.point_mass:
                continue   # the data frames start from noise at t = 0
            for integrator, method in INTEGRATORS.items():
                if not method.needs_data_stats or stochastic_data_frame(method) != target.stochastic:
                    continue   # the ODE frames in the ODE schedules, data-sde* in the optimal-diffusion ones
                if target.stochastic:
                    if integrator in BENCH_SDE_FRAMES:
                        methods += [OurMethod(schedule, integrator, grid, None, scale, stats=kind)
                                    for scale in (1.0, *BENCH_DIFFUSION_SCALES)
                                    for grid in (("uniform", "logsnr") if full else ("uniform",))]
                    continue
                for grid in ("uniform", "source", "logsnr", DATA_FRAME_GRID) if full else ("uniform",):
                    if not (grid == "source" and schedule == "linear"):
                        methods.append(OurMethod(schedule, integrator, grid, stats=kind))
    return methods


#: a grid for the data frames' short budgets: a long first step (it makes no call: the residual is 0 at t = 0)
#: and a short last one (the t = 1 anchor's error grows with it; uniform grids leave samples between the
#: modes, nll_gap > 0).  Range chosen at 4 NFE on gmm:101/102 only, then measured on gmm:201/202 and gmm64
#: (docs/data-frames.md); a fixed log-snr range, so it does not converge as steps grow
DATA_FRAME_GRID = "logsnr:-1,2.5"


#: the stochastic data frames the bench runs (both registered ones)
BENCH_SDE_FRAMES = ("data-sde", "data-sde-multistep")


#: the diffusion strengths between the ODE (0) and the schedule's own (1) that the bench measures
BENCH_DIFFUSION_SCALES = (0.25, 0.5)


def diffusion_sweep() -> list[OurMethod]:
    """The stochastic samplers that did best at full diffusion, at weaker diffusion (on gmm64
    the linear-sde multistep-pc row at 4 NFE halves its FD at scale 0.25)."""
    return [OurMethod(schedule, integrator, grid, None, scale) for scale in BENCH_DIFFUSION_SCALES
            for schedule, integrator, grid in (("linear-sde", "multistep-pc", "uniform"),
                                               ("linear-sde", "multistep", "uniform"),
                                               ("pointmass", "multistep-pc", "source"),
                                               ("pointmass", "multistep-pc", "uniform"),
                                               ("pointmass", "midpoint", "uniform"))]


#: noise- and score-prediction models are undefined at snr = 0 (MATH.md §2): their runs use this grid, which
#: starts at log snr -5 (beta/alpha = 0.007; the start drops beta X) and was the best of -5/-7/-9 .. 3/4/5 on
#: gmm64 (vp multistep, 4 and 8 NFE); the references start at log snr -12 (equal to the velocity references)
OPEN_GRID = "logsnr-open:-5,3"
OPEN_REFERENCE_GRID = "logsnr-open:-12,12"


def open_start(methods: list["OurMethod"]) -> list["OurMethod"]:
    """Each method on :data:`OPEN_GRID` (once per schedule, integrator and final step); point-mass methods are
    left out (a point mass starts at snr = 0, where a noise or score model says nothing)."""
    from ..core.schedule import load_schedule

    out: dict = {}
    for method in methods:
        if not load_schedule(method.schedule).point_mass:
            out.setdefault(replace(method, grid=OPEN_GRID), None)
    return list(out)


def _row(method: str, peer: bool, stochastic: bool, budget: int, nfe: int, fd: float | None, seconds: float,
         error: str = "", scores: dict[str, float] | None = None, sample_args: list[str] | None = None) -> dict:
    """One bench row; ``nfe`` is what the counting wrapper saw, ``budget`` the column it competes in (nfe <= budget).
    ``fd`` is the primary metric; ``scores`` adds the others (exact models); ``sample_args`` are the
    ``lazyflow sample`` flags that reproduce the row's samples bit for bit (None for peers)."""
    row = {"method": method, "peer": peer, "stochastic": stochastic, "nfe": nfe, "budget": budget, "fd": fd,
           "seconds": round(seconds, 3)}
    for key, value in (scores or {}).items():
        row.setdefault(key, value)
    if sample_args is not None:
        row["sample_args"] = sample_args
    if error:
        row["error"] = error
    return row


#: the converged references: kind -> (method, steps); the exact models' steps were measured to converge
#: (MixtureScorer metrics unchanged to the printed digits between these and twice as many steps)
REFERENCES = {"ode": (OurMethod("linear", "heun", "uniform"), 250), "sde": (OurMethod("linear-sde", "euler", "uniform"), 1000)}
EXACT_REFERENCE_STEPS = {"ode": 100, "sde": 500}
#: independent exact sample sets averaged for the floors of the exact models
FLOOR_SETS = 5


#: the name of the baseline row: mu + Sigma^(1/2) z from 2,000 exact samples' moments (:mod:`.data_rows`)
GAUSSIAN_MAP = "Gaussian map (0 NFE)"
#: what a data-frame row's sample_args hold where its statistics file was not written
STATS_FILE_MISSING = "STATS_FILE_NOT_WRITTEN"


def sample_args(model_name: str, method: OurMethod, steps: int, n: int, seed: int,
                prediction: str | None = None, data_stats: str | None = None) -> list[str]:
    """The ``lazyflow sample`` flags that reproduce a bench run of ``method`` bit for bit (add ``--out``);
    ``data_stats``: the statistics file of a data-frame method."""
    args = ["--model", model_name, "--schedule", method.schedule, "--integrator", method.integrator,
            "--steps", str(steps), "--grid", method.grid]
    if method.stats:
        args += ["--data-stats", data_stats or STATS_FILE_MISSING]
    if method.final_step:
        args += ["--final-step", method.final_step]
    if method.diffusion != 1:
        args += ["--diffusion-scale", f"{method.diffusion!r}"]
    if prediction:
        args += ["--prediction", prediction]
    return args + ["--seed", str(seed), "--num-samples", str(n)]


@dataclass(frozen=True)
class BenchModel:
    """A model the bench measures: its ``name``, registered ``kind``, the ``loaded`` model (on the
    asked prediction) and the ``scorer`` of its samples."""

    name: str
    kind: ModelKind
    loaded: LoadedModel
    scorer: Scorer

    @property
    def exact(self) -> bool:
        return self.kind.exact

    def peer_model(self):
        """The velocity model the peers get (an exact model seen through its velocity)."""
        loaded = self.loaded
        return loaded.model if loaded.prediction == "velocity" else loaded.answering(loaded.source, "velocity").model


def bench_models() -> list[str]:
    """The models the bench scores by name (the registered kinds with a scorer, :mod:`.scorers`; a digits
    model file also scores)."""
    from ..models.registry import MODEL_KINDS

    return [k.usage for k in MODEL_KINDS.values() if scorer_factory(k) is not None and not k.takes_file]


def _not_measured(model_name: str) -> LazyflowError:
    from ..models.registry import MODEL_KINDS

    exact = [k.usage for k in MODEL_KINDS.values() if k.exact and scorer_factory(k) is not None and not k.takes_file]
    return LazyflowError(f"the bench measures digits models (samples of shape (1, 8, 8), Fréchet distance in the "
                         f"digits classifier's features), the patches model or the exact models ({', '.join(exact)}); "
                         f"{model_name!r} is neither")


def bench_metrics(model_name: str, asked: str | None = None) -> list[str]:
    """The metrics (``asked``: comma-separated; default all) the bench measures ``model_name`` by, checked
    before the model is loaded; the first of the model's is its primary metric."""
    from ..models.registry import model_kind_for

    kind = model_kind_for(model_name)
    known = kind_metrics(kind)
    if not known:
        raise _not_measured(model_name)
    metrics = asked.split(",") if asked else list(known)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise LazyflowError(f"--metric {','.join(unknown)}: the metrics of {model_name!r} are {', '.join(known)}")
    return metrics


def bench_model(model_name: str, prediction: str | None, n: int) -> BenchModel:
    """``model_name`` from the model registry with the scorer of its samples (``n``: the sample count);
    ``prediction`` picks an exact model's output."""
    from ..models.registry import load_measured

    kind, loaded = load_measured(model_name, prediction)
    factory = scorer_factory(kind)
    scorer = factory(loaded, n) if factory is not None else None
    if scorer is None:
        raise _not_measured(model_name)
    return BenchModel(model_name, kind, loaded, scorer)


def run_quality_bench(model_name: str, nfes: list[int], n: int, seed: int, include_peers: bool = True,
                      full: bool = True, log=print, prediction: str | None = None,
                      methods: list[OurMethod] | None = None, on_samples: Callable | None = None,
                      grid_files: list[str] | None = None, save: str | Path | None = None) -> dict:
    """Every method at every NFE budget on ``n`` samples, with floors and converged ODE and SDE references.

    The model comes from the model registry (:mod:`lazyflow.runtime.models.registry`) with its kind's
    scorer (:mod:`.scorers`): ``digits``, FD in the classifier's features against the digits dataset; the
    exact mixtures ``gmm64``/``gmm4096``/``gmm:SEED`` (:mod:`lazyflow.runtime.models.gmm`) seen through
    ``prediction`` (velocity, x, noise, score), scored by fd, sw, weight_tv and nll_gap
    (:mod:`lazyflow.runtime.evaluation.gmm_metrics`).  Every deterministic row gets ``path`` against the
    converged ODE solution from the same noise (``result["path_reference"]``, :mod:`.paths`).
    ``methods`` replaces the method list (then no data-frame rows or baseline are added unless asked for by
    a method's ``stats``); ``on_samples(row, samples)`` sees every run's samples (rows of ours carry
    ``sample_args``).  Noise and score predictions of an exact model run on :data:`OPEN_GRID` (see
    :func:`open_start`; no data-frame rows there).  ``grid_files``: tuned grids (``lazyflow tune-grid``),
    each scored at its own NFE beside its untuned starting grid, in ``result["tuned_rows"]`` (kept out of
    ``rows``).  ``save``: the path the caller writes the JSON to; the data-frame rows' statistics files are
    written next to it (:func:`.data_rows.stats_file`), else their ``sample_args`` name
    :data:`STATS_FILE_MISSING`."""
    import torch

    from .peers import available_peers

    bench = bench_model(model_name, prediction, n)
    prediction = bench.loaded.prediction
    shown = prediction if bench.exact else None
    run = _Runner(bench, (n, *bench.loaded.data_shape), seed, lambda method, steps, stats_path: sample_args(
        model_name, method, steps, n, seed, shown, stats_path), on_samples)
    open_grid = bench.exact and prediction in ("noise", "score")
    methods = _methods(run, methods, full, open_grid, save, log)
    with torch.no_grad():
        rows = run.ours(methods, nfes, log)
        rows += run.baseline_rows(nfes, log) if run.exact_samples is not None else []
        if include_peers:
            rows += run.peers(bench.peer_model(), nfes, log)
    skipped = available_peers()[1] if include_peers else []
    tuned_rows = [run.tuned(path, model_name, prediction, log) for path in grid_files or []]
    references = _references(run, bench.exact, open_grid, log)
    result = {"rows": rows, "model": model_name, "n": n, "seed": seed, "nfe_budgets": nfes,
              "metrics": [*bench.scorer.metrics, PATH_METRIC], "reference": references[0], "references": references,
              "path_reference": {**run.path.fields(), "scores": run.path_scores}, "skipped": skipped,
              "machine": machine(), "date": datetime.date.today().isoformat(),
              "command": "lazyflow " + " ".join(sys.argv[1:])}
    if run.stats:
        result["data_stats"] = {kind: s.info for kind, s in run.stats.items()}
    if tuned_rows:
        result["tuned_rows"] = tuned_rows
    if open_grid:
        result["grid_note"] = (f"{prediction} prediction is undefined at snr = 0: every run starts at log snr -5 "
                               f"(grid {OPEN_GRID}), the references at -12 ({OPEN_REFERENCE_GRID}); point-mass "
                               "frames (which start at snr = 0) and the data-frame integrators (which skip the "
                               "call at t = 0) are left out")
    result.update(_floors(bench, n, seed))
    return result


def _methods(run: "_Runner", methods: list[OurMethod] | None, full: bool, open_grid: bool, save: str | Path | None,
             log: Callable) -> list[OurMethod]:
    """The methods to run; computes the path reference and the statistics they need (the default list adds
    the data-frame methods and, for an exact model, the Gaussian map's samples)."""
    import torch

    default = methods is None
    methods = our_methods(full) if default else list(methods)
    if open_grid:
        methods = open_start(methods)
    with torch.no_grad():
        run.prepare_path(log)
    kinds = stats_kinds(math.prod(run.shape[1:]), data_shape=tuple(run.shape[1:])) if default and not open_grid else ()
    needed = tuple(dict.fromkeys((*kinds, *(m.stats for m in methods if m.stats))))
    if needed:
        run.prepare_stats(needed, save, log)
    return methods + data_frame_methods(full, kinds)


def _references(run: "_Runner", exact: bool, open_grid: bool, log) -> list[dict]:
    """The converged ODE and SDE references (:data:`REFERENCES`; an exact model converges in fewer steps)."""
    import torch

    references = []
    for kind, (method, steps) in REFERENCES.items():
        steps = EXACT_REFERENCE_STEPS[kind] if exact else steps
        method = replace(method, grid=OPEN_REFERENCE_GRID) if open_grid else method
        with torch.no_grad():
            row = run.one(method, steps, budget=0)
        references.append({"kind": kind, **{k: v for k, v in row.items() if k not in ("peer", "budget")}})
        log(f"  reference {kind} {method.name} at {row['nfe']} NFE: {_fmt(row['fd'])}")
    return references


def _floors(bench: BenchModel, n: int, seed: int) -> dict:
    """The result fields that give the floors: an exact model's metrics on :data:`FLOOR_SETS` sets of n exact
    samples (with its prediction and the metrics' notes), else what the scorer says of its floors."""
    scorer = bench.scorer
    if not bench.exact:
        return scorer.floor_fields(n, seed)
    sets = [scorer.floors(n, seed=20_000 + i) for i in range(FLOOR_SETS)]
    return {"prediction": bench.loaded.prediction, "metric_notes": scorer.describe(), "floors": {
        key: {"mean": sum(s[key] for s in sets) / len(sets), "min": min(s[key] for s in sets),
              "max": max(s[key] for s in sets), "sets": len(sets)} for key in scorer.metrics}}


class _Runner:
    """Runs and scores one method (ours, by its sample_args' options) or one peer, all from the same start
    noise ``start`` (x0 of every row); deterministic rows get ``path`` against ``path`` (the reference)."""

    def __init__(self, bench: BenchModel, shape: tuple[int, ...], seed: int, args_for: Callable,
                 on_samples: Callable | None, *, batch_size: int | None = None, device=None, halves: bool = False):
        from ..core.noise import standard_normal

        self.bench, self.model, self.scorer = bench, bench.loaded.model, bench.scorer
        self.shape, self.seed = shape, seed
        self.source, self.prediction = bench.loaded.source, bench.loaded.prediction
        self.args_for, self.on_samples = args_for, on_samples
        # batches of batch_size samples (bounded memory), the loaded model's conditioning following its samples
        self.size = batch_size or shape[0]
        self.batches = math.ceil(shape[0] / self.size)
        self.options = {"batch_size": batch_size, "model_kwargs": bench.loaded.model_kwargs or None, "device": device}
        self.start = standard_normal(seed, range(shape[0]), 0, shape[1:], device=device)   # what sample() starts from
        self.path: PathReference | None = None
        self.started: dict[tuple[float, float], PathReference] = {}   # the x* of peers that start at t0 > 0
        self.path_scores: dict[str, float] = {}
        self.stats: dict[str, BenchStats] = {}
        self.exact_samples = None
        self.halves = halves   # each row also records path on each half of the samples (a pilot's check)

    def reference(self, steps: int = PATH_REFERENCE_STEPS) -> PathReference:
        """x*, the model's converged ODE solution from this run's start noise (batched and conditioned as the
        rows are: :func:`.paths.path_reference`)."""
        return path_reference(self.bench.peer_model(), self.source, self.start, steps, **self.options)

    def reference_from(self, t0: float, scale: float) -> PathReference | None:
        """x* of a peer that starts at the source time t0 from scale * x0 (:func:`.peers.peer_start`; a linear
        source), with as many steps as the run's own x*; one per start within this run."""
        if t0 == 0 or self.path is None:
            return self.path
        if (t0, scale) not in self.started:
            x0 = self.start * (scale / (1 - t0))    # path_reference starts from alpha(t0) x0 = (1 - t0) x0
            self.started[(t0, scale)] = path_reference(self.bench.peer_model(), self.source, x0, self.path.steps,
                                                       t0=t0, **self.options)
        return self.started[(t0, scale)]

    def prepare_path(self, log) -> None:
        self.path = self.reference()
        self.path_scores = self.scorer.score(self.path.samples.to(self.start.dtype))
        log(f"  path reference {self.path.method}, {self.path.steps} steps in float64: halving its steps moves it "
            f"by {self.path.check:.2e} ({self.path.seconds:.1f} s)")

    def prepare_stats(self, kinds: tuple[str, ...], save, log) -> None:
        """The data-frame rows' statistics (and, for an exact model, the samples they came from)."""
        self.stats, self.exact_samples = bench_stats(self.model, self.shape[1:], kinds, save, source=self.source,
                                                     prediction=self.prediction)
        for kind, found in self.stats.items():
            log(f"  data statistics {kind}: {found.info['from']}, {found.info['samples']} samples, "
                f"{found.info['model_calls']} model calls" + (f", written to {found.file}" if found.file else ""))

    def _score(self, x, stochastic: bool, reference: PathReference | None = None) -> tuple[float | None, dict, str]:
        """(primary metric, scores, error); ``path`` against ``reference`` (default: the run's x*)."""
        reference = reference or self.path
        scores = self.scorer.score(x)
        scores[PATH_METRIC] = None if stochastic or reference is None else reference.error(x)
        if self.halves and scores[PATH_METRIC] is not None:
            half = len(x) // 2
            scores["path_halves"] = [path_error(x[:half], reference.samples[:half]),
                                     path_error(x[half:], reference.samples[half:])]
        return scores[(*self.scorer.metrics, PATH_METRIC)[0]], scores, ""   # a path-only scorer: path is primary

    def one(self, method: OurMethod, steps: int, budget: int) -> dict:
        from ..core.sampler import sample

        counter = CountingModel(self.model)
        start = time.perf_counter()
        x, found = None, self.stats.get(method.stats) if method.stats else None
        stochastic = method.target().stochastic
        try:
            x = sample(counter, self.shape, schedule=method.target(), source=self.source, steps=steps,
                       integrator=method.integrator, grid=method.grid, final_step=method.final_step,
                       prediction=self.prediction, data_stats=None if found is None else found.stats, seed=self.seed,
                       **self.options)
            fd, scores, error = self._score(x, stochastic)
        except LazyflowError as err:
            fd, scores, error = None, {}, str(err)
        file = None if found is None or found.file is None else str(found.file)
        row = _row(method.name, False, stochastic, budget, counter.calls // self.batches, fd,
                   time.perf_counter() - start, error, scores, self.args_for(method, steps, file))
        if method.stats:
            row["stats"] = method.stats
            if file is None:
                row["sample_args_need"] = (f"the {method.stats} statistics file (bench run without an output path, so "
                                           f"not written): replace {STATS_FILE_MISSING} by a file of these statistics")
        if self.on_samples is not None and x is not None:
            self.on_samples(row, x)
        return row

    def tuned(self, path: str, model_name: str, prediction: str, log) -> dict:
        """A tuned grid file's row at its own NFE, with the untuned starting grid's scores beside it."""
        import torch

        from ..core.gridfile import load_grid_file
        from ..core.schedule import load_schedule

        grid = load_grid_file(path)
        if (grid.model, grid.prediction) != (model_name, prediction):
            raise LazyflowError(f"{grid.describe()} (prediction {grid.prediction}) is not for this bench's model "
                                f"{model_name} (prediction {prediction})")
        final = None if grid.final_step == "euler" else grid.final_step
        # the base schedule at the scale the grid was tuned at (refused unless the grid's times are its times)
        name = grid.base_schedule
        scale = grid.schedule_for(load_schedule(name), scale_given=False).diffusion_scale
        with torch.no_grad():
            row = self.one(OurMethod(name, grid.integrator, str(path), final, scale), grid.steps, grid.nfe)
            init = grid.tuning.get("init")   # a bespoke solver's start is a solver, not a grid: no untuned row
            base = self.one(OurMethod(name, grid.integrator, init, final, scale), grid.steps, grid.nfe) \
                if init and not grid.x0_weights else {}
        tuning = grid.tuning
        row["method"] = f"{grid.schedule}/{grid.integrator}/tuned:{Path(path).name}" + (f"/{final}" if final else "")
        row.update(tuned=True, held_out=tuning.get("seed") != self.seed, tuning_seed=tuning.get("seed"),
                   tuning_seconds=tuning.get("seconds"), tuning_model_calls=tuning.get("model_calls"),
                   tuning_samples=tuning.get("samples"),
                   untuned={"grid": init, **{k: base.get(k) for k in (*self.scorer.metrics, PATH_METRIC)}})
        log(f"  tuned {row['method']} at {row['nfe']} NFE: {_fmt(row['fd'])} (untuned {init}: {_fmt(base.get('fd'))})")
        return row

    def steps_for(self, method: OurMethod, budget: int) -> int:
        """The steps of ``method`` within ``budget`` network calls (a tuned grid file's own; a data frame whose
        statistics read the mean at its first call makes that call)."""
        from ..core.grid_choice import own_steps

        if own_steps(method.grid) is not None:   # a tuned grid file's own (the rule of every entry point)
            return own_steps(method.grid)
        integrator = INTEGRATORS[method.integrator]
        if method.stats:
            if method.stats not in self.stats:
                raise LazyflowError(f"{method.name}: this bench has no {method.stats} statistics (made with other "
                                    f"settings: {', '.join(self.stats) or 'none'})")
            if self.stats[method.stats].stats.first_call_mean:
                integrator = without_skip(integrator)   # the mean is read at t = 0: that call is made
        return integrator.steps_for_nfe(budget)

    def ours(self, methods: list[OurMethod], nfes: list[int], log) -> list[dict]:
        rows = []
        for method in methods:
            rows += [self.one(method, self.steps_for(method, budget), budget) for budget in nfes]
            log(f"  {method.name}: " + ", ".join(f"{r['nfe']}->{_fmt(r['fd'])}" for r in rows[-len(nfes):]))
        return rows

    def baseline_rows(self, nfes: list[int], log) -> list[dict]:
        """The baseline mu + Sigma^(1/2) x0 (moments of the exact samples behind the statistics; no network
        call), one row per budget so that it shows in every column; flagged ``baseline``."""
        start = time.perf_counter()
        x = gaussian_map(self.exact_samples, self.start)
        fd, scores, error = self._score(x, stochastic=False)
        seconds = time.perf_counter() - start
        rows = []
        for budget in nfes:
            rows.append(_row(GAUSSIAN_MAP, False, False, budget, 0, fd, seconds, error, scores))
            rows[-1].update(baseline=True, stats_samples=len(self.exact_samples))
            if self.on_samples is not None:
                self.on_samples(rows[-1], x)
        log(f"  {GAUSSIAN_MAP}: {_fmt(fd)}")
        return rows

    def peer_samples(self, fn: Callable, model: Callable, budget: int):
        """The peer ``fn`` on the velocity ``model`` from a copy of our start noise, one batch at a time, each
        batch's model bound to that batch's conditioning (per-sample tensors of the loaded model_kwargs)."""
        import torch

        from ..core.sampler import per_sample_kwargs

        n, kwargs, pieces = self.shape[0], self.options["model_kwargs"] or {}, []
        for lo in range(0, n, self.size):
            part = slice(lo, lo + self.size)
            bound = per_sample_kwargs(kwargs, n, part)
            call = model if not bound and self.options["device"] is None else \
                (lambda x, t, bound=bound: model(x, t.to(x.device), **bound))   # noqa: E731 - one batch's binding
            pieces.append(fn(call, self.start[part].clone(), budget, self.seed))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def peers(self, model, nfes: list[int], log, stochastic_too: bool = True) -> list[dict]:
        """The installed peers on the velocity ``model``, each from a copy of our start noise (paired);
        ``stochastic_too=False`` leaves the stochastic peers out."""
        import torch

        from .peers import PEER_GRIDS, available_peers, peer_start

        rows = []
        for name, (stochastic, fn) in available_peers()[0].items():
            if stochastic and not stochastic_too:
                continue
            t0, scale = peer_start(fn)
            reference = None if stochastic else self.reference_from(t0, scale)
            for budget in nfes:
                counter = CountingModel(model)
                start = time.perf_counter()
                scores, x = {}, None
                try:
                    x = self.peer_samples(fn, counter, budget)
                    fd, scores, error = self._score(x, stochastic, reference) if torch.isfinite(x).all() else \
                        (None, {}, "non-finite samples")
                except Exception as err:  # noqa: BLE001 - a peer failing must not stop the bench
                    fd, error = None, f"{type(err).__name__}: {err}"
                rows.append(_row(name, True, stochastic, budget, counter.calls // self.batches, fd,
                                 time.perf_counter() - start, error, scores))
                if name in PEER_GRIDS:
                    rows[-1]["grid"] = PEER_GRIDS[name]
                if t0 > 0:   # its path is against the model's ODE from where it starts
                    rows[-1]["start"] = {"t": t0, "scale": scale, **({} if reference is None else {
                        "path_reference": reference.method, "path_reference_check": reference.check})}
                if self.on_samples is not None and x is not None:
                    self.on_samples(rows[-1], x)
            log(f"  {name}: " + ", ".join(f"{r['nfe']}->{_fmt(r['fd'])}" for r in rows[-len(nfes):]))
        return rows


def machine() -> str:
    import torch

    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}"


def _fmt(value) -> str:
    if value is None:
        return "  -  "
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def format_table(result: dict, metric: str = "fd", fmt: Callable[[Any], str] | None = None) -> str:
    """Rows = methods, columns = NFE budgets; each cell the ``metric`` written by ``fmt`` (default 3 decimals
    below 1; actual NFE when it differs from the budget); below, the floor and the converged references in
    the same metric."""
    fmt = fmt or _fmt
    budgets = result["nfe_budgets"]
    by_method: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_method.setdefault((row["method"], row["peer"], row["stochastic"]), []).append(row)
    shown = {key: f"{key[0]} [{rows[0]['grid']}]" if rows[0].get("grid") else key[0] for key, rows in by_method.items()}
    width = max((len(name) for name in shown.values()), default=6) + 2
    header = f"{'method'.ljust(width)}{'peer':>5}{'sde':>5}" + "".join(f"{'nfe ' + str(b):>11}" for b in budgets)
    title = f"{metric} ({result['model']}" + (f", prediction {result['prediction']}" if "prediction" in result else "")
    if metric == PATH_METRIC and "path_reference" in result:
        reference = result["path_reference"]
        title += (f"; mean |x - x*| to x* = the model's own ODE solution from the same noise, {reference['method']} "
                  f"at {reference['steps']} steps in float64")
    lines = [title + ")", header, "-" * len(header)]
    for (method, peer, stochastic), rows in by_method.items():
        cells = []
        for budget, row in zip(budgets, rows):
            text = fmt(row.get(metric))
            if row["nfe"] != budget:
                text += f" ({row['nfe']})"
            cells.append(f" {text:>10}")   # at least one space between cells
        name = shown[method, peer, stochastic]
        lines.append(f"{name.ljust(width)}{'yes' if peer else '':>5}{'yes' if stochastic else '':>5}" + "".join(cells))
    lines.append("")
    if any(r.get("baseline") for r in result["rows"]):
        lines.append(f"{GAUSSIAN_MAP}: a baseline, not a sampler (mu + Sigma^(1/2) x0 with the moments of "
                     f"{STATS_SAMPLES:,} exact samples, no network call); never counted as ours")
    refs = "; ".join(f"{r['kind'].upper()} reference {r['method']} at {r['nfe']} NFE: {_fmt3(r.get(metric))}"
                     for r in result.get("references", [result["reference"]] if "reference" in result else []))
    if metric == PATH_METRIC:
        lines.append(path_note(result) + (f"; {refs}" if refs else ""))
    elif "floors" in result:
        floor = result["floors"][metric]
        lines.append(f"{metric} on {result['n']} samples; floor ({result['n']} exact samples, mean of {floor['sets']} "
                     f"sets, range {floor['min']:.4f}-{floor['max']:.4f}): {floor['mean']:.4f}; {refs}")
        lines.append(result["metric_notes"])
    else:
        against = result.get("fd_reference", "the 1,797 digits")
        lines.append(f"FD on {result['n']} samples vs {against}; floors: two dataset halves "
                     f"{result['floor_split_fd']:.3f}, {result['n']} images drawn from the dataset itself "
                     f"{result.get('floor_bootstrap_fd', float('nan')):.3f}; {refs}")
    if "grid_note" in result:
        lines.append(result["grid_note"])
    if result.get("tuned_rows"):
        lines.append(format_tuned(result, metric))
    lines.append(f"machine: {result['machine']}; date {result['date']}")
    if result["skipped"]:
        lines.append("skipped peers: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


def path_check(result: dict) -> dict | None:
    """How far halving the path reference's steps moves it, against the best deterministic ``path`` (ours or
    a peer's, no baseline) at 4 NFE (else the smallest budget): {budget, best, check, ratio}."""
    reference = result.get("path_reference")
    budgets = sorted(result["nfe_budgets"], key=lambda b: (b != 4, b))
    if not reference or not budgets:
        return None
    rows = [best_row(result, PATH_METRIC, budgets[0], peer, False) for peer in (False, True)]
    best = min((r[PATH_METRIC] for r in rows if r is not None), default=None)
    ratio = reference["check"] / best if best else None
    return {"budget": budgets[0], "best": best, "check": reference["check"], "ratio": ratio}


def path_note(result: dict) -> str:
    """The line under the path table: what path is, how its reference is computed, and its convergence."""
    reference, check = result["path_reference"], path_check(result)
    text = (f"path: mean over the {result['n']} samples of |x - x*| (L2 over each sample's coordinates), x* = the "
            f"model's own ODE solution from the same initial noise: {reference['method']} at {reference['steps']} "
            f"steps ({reference['nfe']} NFE) in float64; halving its steps moves it by {reference['check']:.2e}")
    if check and check["ratio"] is not None:
        text += f" ({check['ratio']:.2%} of the best {check['budget']}-NFE path, {check['best']:.4g})"
    scores = ", ".join(f"{k} {_fmt3(v)}" for k, v in reference.get("scores", {}).items())
    return text + (f"; x* itself scores {scores}" if scores else "") + "; stochastic rows: -"


def format_tuned(result: dict, metric: str = "fd") -> str:
    """The tuned rows, apart from the table: each beside its untuned starting grid, with the tuning cost and
    whether the bench's seed was held out from the tuning."""
    lines = [f"tuned grids (lazyflow tune-grid; {metric} on the bench's seed {result['seed']}):"]
    for row in result["tuned_rows"]:
        untuned = row["untuned"]
        lines.append(f"  tuned {row['method']} at {row['nfe']} NFE: {_fmt3(row.get(metric))} (untuned "
                     f"{untuned['grid']}: {_fmt3(untuned.get(metric))}); tuned on seed {row['tuning_seed']}, "
                     f"{row['tuning_samples']} samples, {row['tuning_seconds']} s, {row['tuning_model_calls']} model "
                     f"calls; {'held out' if row['held_out'] else 'NOT held out (same seed)'}")
    return "\n".join(lines)


def format_report(result: dict, metrics: list[str], markdown: bool = False) -> str:
    """What ``lazyflow bench`` prints: per metric the table and the best of each kind per budget (and with
    ``markdown`` the goals table; for ``path`` always its own goals, :func:`.goals.path_goals_markdown`), each
    followed by an empty line."""
    parts = []
    for metric in metrics:
        parts += [format_table(result, metric), best_by_kind(result, metric), ""]
        if metric == PATH_METRIC:
            parts += [path_goals_markdown(result), ""]   # path's own goals (its references score ~0 by design)
        elif markdown:
            parts += [goals_markdown(result, metric), ""]
    return "\n".join(parts)


def _fmt3(value) -> str:
    return "-" if value is None else f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}"


def best_by_kind(result: dict, metric: str = "fd") -> str:
    """The best deterministic and stochastic sampler, ours and peers', at each budget (baseline rows left out;
    nll_gap by its absolute value)."""
    lines = [f"best {metric} per budget:      ours ODE | peer ODE | ours SDE | peer SDE"]
    for budget in result["nfe_budgets"]:
        cells = []
        for stochastic in (False, True):
            for peer in (False, True):
                best = best_row(result, metric, budget, peer, stochastic)
                cells.append(f"{_fmt(best[metric])} {best['method']}" if best else "-")
        lines.append(f"  nfe {budget:>3}: " + " | ".join(cells))
    return "\n".join(lines)


def goals_markdown(result: dict, metric: str = "fd") -> str:
    """The best of each kind per budget as a markdown table, with the bench's goals checked: at 4 and 6 NFE
    the best deterministic sampler of ours 20% below the best deterministic peer; at 4 NFE the best
    stochastic of ours at or below that peer; at 8 NFE each family within 10% of its converged reference.
    Tuned rows (if any) count for ours and are marked; nll_gap counts in absolute value."""
    refs = {r["kind"]: r.get(metric) for r in result.get("references", [])}
    lines = ["| NFE | ours, deterministic | best deterministic peer | ours vs peer | ours, stochastic | "
             "best stochastic peer |", "|---|---|---|---|---|---|"]
    verdicts = []
    for budget in result["nfe_budgets"]:
        ours = best_row(result, metric, budget, False, False, tuned=True)
        peer = best_row(result, metric, budget, True, False)
        ours_sde = best_row(result, metric, budget, False, True, tuned=True)
        peer_sde = best_row(result, metric, budget, True, True)

        def cell(row):
            if row is None:
                return "-"
            mark = " (tuned)" if row.get("tuned") else ""
            return f"{_fmt3(row[metric])} {row['method']}{mark}"
        against = versus(metric, ours[metric], peer[metric])[1] if ours and peer else "-"
        lines.append(f"| {budget} | {cell(ours)} | {cell(peer)} | {against} | {cell(ours_sde)} | {cell(peer_sde)} |")
        if budget in (4, 6) and ours and peer:
            met = rank_value(metric, ours[metric]) <= 0.8 * rank_value(metric, peer[metric])
            verdicts.append(f"- {budget} NFE, deterministic 20% below the best deterministic peer: "
                            f"{'met' if met else 'missed'} ({_fmt3(ours[metric])} against {_fmt3(peer[metric])}, "
                            f"{versus(metric, ours[metric], peer[metric])[1]})")
        if budget == 4 and ours_sde and peer:
            met = rank_value(metric, ours_sde[metric]) <= rank_value(metric, peer[metric])
            verdicts.append(f"- 4 NFE, stochastic at or below the best deterministic peer: {'met' if met else 'missed'}"
                            f" ({_fmt3(ours_sde[metric])} against {_fmt3(peer[metric])})")
        if budget == 8:
            for kind, row in (("ode", ours), ("sde", ours_sde)):
                if row and refs.get(kind) is not None:
                    met = rank_value(metric, row[metric]) <= 1.1 * rank_value(metric, refs[kind])
                    verdicts.append(f"- 8 NFE, {kind.upper()} within 10% of its converged reference: "
                                    f"{'met' if met else 'missed'} ({_fmt3(row[metric])} against "
                                    f"{_fmt3(refs[kind])})")
    return "\n".join(lines + [""] + verdicts)

