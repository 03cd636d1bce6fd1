"""How the bench runs one row: a sampler of ours (by the options its ``lazyflow sample`` flags give), a peer, a
tuned grid file or the Gaussian-map baseline, from the same start noise x0 = ``standard_normal(seed, range(n),
0, data_shape)``, its network calls counted (:class:`~lazyflow.runtime.core.call_counter.CallCounter`; ``nfe`` = calls per batch)
and its samples scored: by the model's scorer, and a deterministic row by ``path`` against x*
(:class:`.bench_references.PathReferences`)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ...errors import LazyflowError
from ..core.data_frame import without_skip
from ..core.integrators import INTEGRATORS
from ..models.kind import LoadedModel, ModelKind, Scorer
from .bench_methods import STATS_FILE_MISSING, OurMethod
from .bench_references import PathReferences
from .bench_report import GAUSSIAN_MAP, short_score
from .bench_row import BenchRow
from ..core.call_counter import CallCounter
from .data_rows import BenchStats, bench_stats, gaussian_map
from .paths import PathReference, path_error
from .scorers import PATH_METRIC

__all__ = ["BenchModel", "BenchRunner"]


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
        """The velocity model the flow peers get and x* solves (an exact model seen through its velocity)."""
        loaded = self.loaded
        return loaded.model if loaded.prediction == "velocity" else loaded.answering(loaded.source, "velocity").model

    def reference_model(self) -> tuple[Callable, str]:
        """(model, prediction) x* solves: the velocity (:meth:`peer_model`) of an exact or velocity model; a trained
        network of another prediction as it is (the runtime converts it)."""
        loaded = self.loaded
        if self.exact or loaded.prediction == "velocity":
            return self.peer_model(), "velocity"
        return loaded.model, loaded.prediction

    def peer_network(self):
        """What the peers call: a discrete diffusion network as diffusers calls it, else :meth:`peer_model`."""
        return self.peer_model() if self.loaded.diffusion is None else self.loaded.diffusion.net


class BenchRunner:
    """Runs and scores one method (ours, by its sample_args' options) or one peer, all from the same start
    noise ``start`` (x0 of every row); deterministic rows get ``path`` against x* (``references``).
    ``args_for(method, steps, stats_file)``: a row's ``lazyflow sample`` flags; ``on_samples(row, samples)``
    sees every run's samples; ``halves``: each row also records path on each half of the samples (a pilot's
    check); runs go ``batch_size`` samples at a time (bounded memory), the conditioning following them."""

    def __init__(self, bench: BenchModel, shape: tuple[int, ...], seed: int, args_for: Callable,
                 on_samples: Callable | None, *, batch_size: int | None = None, device=None, halves: bool = False):
        from ..core.noise import standard_normal

        self.bench, self.model, self.scorer = bench, bench.loaded.model, bench.scorer
        self.shape, self.seed = shape, seed
        self.source, self.prediction = bench.loaded.source, bench.loaded.prediction
        self.args_for, self.on_samples, self.halves = args_for, on_samples, halves
        self.size = batch_size or shape[0]
        self.batches = math.ceil(shape[0] / self.size)
        self.options = {"batch_size": batch_size, "model_kwargs": bench.loaded.model_kwargs or None, "device": device}
        self.start = standard_normal(seed, range(shape[0]), 0, shape[1:], device=device)   # what sample() starts from
        model, prediction = bench.reference_model()
        self.references = PathReferences(model, self.source, self.start, self.options, prediction)
        self.path_scores: dict[str, float] = {}
        self.stats: dict[str, BenchStats] = {}
        self.exact_samples = None

    @property
    def path(self) -> PathReference | None:
        """x* from the run's start noise (None until solved or read)."""
        return self.references.main

    @property
    def primary(self) -> str:
        """The primary metric: the scorer's first, else ``path`` (a path-only scorer)."""
        return (*self.scorer.metrics, PATH_METRIC)[0]

    def prepare_path(self, log) -> None:
        """Solves x* and scores it."""
        self.references.main = self.references.solve()
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

    def score(self, x, stochastic: bool, reference: PathReference | None = None) -> tuple[dict, tuple | None]:
        """(scores by metric, path on each half or None) of samples ``x``; ``path`` against ``reference``
        (default: the run's x*), None for a stochastic row."""
        reference = reference or self.path
        scores = self.scorer.score(x)
        scores[PATH_METRIC] = None if stochastic or reference is None else reference.error(x)
        halves = None
        if self.halves and scores[PATH_METRIC] is not None:
            half = len(x) // 2
            halves = (path_error(x[:half], reference.samples[:half]), path_error(x[half:], reference.samples[half:]))
        return scores, halves

    def row(self, method: str, *, peer: bool, stochastic: bool, budget: int, nfe: int, seconds: float,
            scores: dict | None = None, halves: tuple | None = None, **fields: Any) -> BenchRow:
        """A row of this bench (its primary metric; ``seconds`` to the millisecond)."""
        return BenchRow(method, peer, stochastic, nfe, budget, self.primary, round(seconds, 3), scores or {},
                        halves, **fields)

    def one(self, method: OurMethod, steps: int, budget: int) -> BenchRow:
        """``method`` at ``steps`` steps in the column ``budget``, by the options of its ``lazyflow sample`` flags."""
        from ..core.sampler import sample

        counter = CallCounter(self.model)
        start = time.perf_counter()
        x, found = None, self.stats.get(method.stats) if method.stats else None
        stochastic = method.target().stochastic
        try:
            x = sample(counter, self.shape, schedule=method.target(), source=self.source, steps=steps,
                       integrator=method.integrator, grid=method.grid, final_step=method.final_step,
                       prediction=self.prediction, data_stats=None if found is None else found.stats, seed=self.seed,
                       **self.options)
            (scores, halves), error = self.score(x, stochastic, self.own_start(method, steps)), ""
        except LazyflowError as err:
            scores, halves, error = {}, None, str(err)
        file = None if found is None or found.file is None else str(found.file)
        row = self.row(method.name, peer=False, stochastic=stochastic, budget=budget, nfe=counter.calls // self.batches,
                       seconds=time.perf_counter() - start, scores=scores, halves=halves, error=error,
                       sample_args=tuple(self.args_for(method, steps, file)), stats=method.stats)
        if method.stats and file is None:
            row = row.with_details(sample_args_need=f"the {method.stats} statistics file (bench run without an output "
                                                    f"path, so not written): replace {STATS_FILE_MISSING} by a file "
                                                    "of these statistics")
        if self.on_samples is not None and x is not None:
            self.on_samples(row, x)
        return row

    def own_start(self, method: OurMethod, steps: int) -> PathReference | None:
        """x* from where a run of ``method`` at ``steps`` starts, for a discrete diffusion network (whose peers are
        measured so too): a grid that starts at t_0 > 0 (open log-snr grids, tuned grid files) starts at the log snr
        lam_0 there, at the source time of lam_0, from alpha x0 in every frame (the frames meet at equal log snr,
        x scaled by alpha_source / alpha_target).  None (the bench's x*) for any other model or grid."""
        import torch

        from ..core.grids import make_grid

        if self.bench.loaded.diffusion is None or method.target().point_mass:
            return None
        target = method.target()
        first = make_grid(target, self.source, steps, method.grid)[:1].to(torch.float64)
        lam = target.log_snr(first)
        if bool(torch.isneginf(lam).all()):
            return None
        t0 = self.source.time_of_log_snr(lam)
        return self.references.from_start(float(t0[0]), float(self.source.values(t0).alpha[0]))

    def tuned(self, path: str, model_name: str, prediction: str, log) -> BenchRow:
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
        own = self.source if grid.x0_weights else None   # a solver runs in the model's own schedule (a table: no name)
        scale = grid.schedule_for(load_schedule(name if own is None else own), scale_given=False).diffusion_scale
        with torch.no_grad():
            row = self.one(OurMethod(name, grid.integrator, str(path), final, scale, own=own), grid.steps, grid.nfe)
            init = grid.tuning.get("init")   # a bespoke solver's start is a solver, not a grid: no untuned row
            base = self.one(OurMethod(name, grid.integrator, init, final, scale), grid.steps, grid.nfe) \
                if init and not grid.x0_weights else None
        tuning = grid.tuning
        method = f"{grid.schedule}/{grid.integrator}/tuned:{Path(path).name}" + (f"/{final}" if final else "")
        untuned = {k: None if base is None else base.score(k) for k in (*self.scorer.metrics, PATH_METRIC)}
        row = replace(row, method=method).with_details(
            tuned=True, held_out=tuning.get("seed") != self.seed, tuning_seed=tuning.get("seed"),
            tuning_seconds=tuning.get("seconds"), tuning_model_calls=tuning.get("model_calls"),
            tuning_samples=tuning.get("samples"), untuned={"grid": init, **untuned})
        log(f"  tuned {row.method} at {row.nfe} NFE: {short_score(row.primary_score)} (untuned {init}: "
            f"{short_score(None if base is None else base.primary_score)})")
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
            if self.stats[method.stats].stats.first_call_mean or method.grid.startswith("logsnr-open:"):
                integrator = without_skip(integrator)   # the mean is read at t = 0, or the grid starts later: a call
        return integrator.steps_for_nfe(budget)

    def ours(self, methods: list[OurMethod], nfes: list[int], log) -> list[BenchRow]:
        """Each of ``methods`` at each budget of ``nfes``."""
        rows = []
        for method in methods:
            rows += [self.one(method, self.steps_for(method, budget), budget) for budget in nfes]
            log(f"  {method.name}: " + ", ".join(f"{r.nfe}->{short_score(r.primary_score)}" for r in rows[-len(nfes):]))
        return rows

    def baseline_rows(self, nfes: list[int], log) -> list[BenchRow]:
        """The baseline mu + Sigma^(1/2) x0 (moments of the exact samples behind the statistics; no network
        call), one row per budget so that it shows in every column; flagged ``baseline``."""
        start = time.perf_counter()
        x = gaussian_map(self.exact_samples, self.start)
        scores, halves = self.score(x, stochastic=False)
        seconds = time.perf_counter() - start
        rows = []
        for budget in nfes:
            rows.append(self.row(GAUSSIAN_MAP, peer=False, stochastic=False, budget=budget, nfe=0, seconds=seconds,
                                 scores=scores, halves=halves).with_details(baseline=True,
                                                                            stats_samples=len(self.exact_samples)))
            if self.on_samples is not None:
                self.on_samples(rows[-1], x)
        log(f"  {GAUSSIAN_MAP}: {short_score(scores.get(self.primary))}")
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

    def peer(self, name: str, stochastic: bool, fn: Callable, model: Callable, budget: int) -> BenchRow:
        """The peer ``fn`` at ``budget`` on the velocity ``model``, from a copy of our start noise (paired); its
        path against the model's ODE from where it starts; a peer's failure is its row's error."""
        import torch

        from .peers import PEER_GRIDS, peer_start

        t0, scale = peer_start(fn, budget)
        reference = None if stochastic else self.references.from_start(t0, scale)
        counter = CallCounter(model)
        start = time.perf_counter()
        scores, halves, x, error = {}, None, None, ""
        try:
            x = self.peer_samples(fn, counter, budget)
            if torch.isfinite(x).all():
                scores, halves = self.score(x, stochastic, reference)
            else:
                error = "non-finite samples"
        except Exception as err:  # noqa: BLE001 - a peer failing must not stop the bench
            error = f"{type(err).__name__}: {err}"
        row = self.row(name, peer=True, stochastic=stochastic, budget=budget, nfe=counter.calls // self.batches,
                       seconds=time.perf_counter() - start, scores=scores, halves=halves, error=error,
                       grid=getattr(fn, "grid", None) or PEER_GRIDS.get(name))
        if t0 > 0 or (reference is not None and reference is not self.path):
            row = row.with_details(start={"t": t0, "scale": scale, **({} if reference is None else {
                "path_reference": reference.method, "path_reference_check": reference.check})})
        if self.on_samples is not None and x is not None:
            self.on_samples(row, x)
        return row

    def peers(self, model, nfes: list[int], log, stochastic_too: bool = True) -> list[BenchRow]:
        """The installed peers of the model (:func:`.peers.bench_peers`) on ``model`` (:meth:`BenchModel.peer_network`),
        each at each budget of ``nfes``; ``stochastic_too=False`` leaves the stochastic peers out."""
        from .peers import bench_peers

        rows = []
        for name, (stochastic, fn) in bench_peers(self.bench.loaded)[0].items():
            if stochastic and not stochastic_too:
                continue
            rows += [self.peer(name, stochastic, fn, model, budget) for budget in nfes]
            log(f"  {name}: " + ", ".join(f"{r.nfe}->{short_score(r.primary_score)}" for r in rows[-len(nfes):]))
        return rows

