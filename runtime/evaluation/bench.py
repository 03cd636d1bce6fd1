"""The quality benchmark behind ``lazyflow bench``: every sampler at equal numbers of network
evaluations, ours and the peers' side by side on one model, from the same initial noise.  It returns
data (and formats tables); the command line prints and plots them.  This module runs a bench; its parts are
:mod:`.bench_methods` (which rows are run), :mod:`.bench_runner` (runs one row, counts its calls, scores it),
:mod:`.bench_references` (the converged ODE paths and references), :mod:`.bench_row` (a row, typed, and its
JSON) and :mod:`.bench_report` (the tables).

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
import sys
from pathlib import Path
from typing import Callable

from ...errors import LazyflowError
from ...predictions import SILENT_AT_SNR_0
from .bench_methods import OPEN_GRID, OPEN_REFERENCE_GRID, STATS_FILE_MISSING, OurMethod, data_frame_methods, \
    open_start, our_methods, sample_args
from .bench_references import converged_references
from .bench_report import machine
from .bench_row import BenchRow
from .bench_runner import BenchModel, BenchRunner
from .data_rows import stats_kinds
from .scorers import PATH_METRIC, kind_metrics, scorer_factory

# the names of the bench's parts that this module exported before they moved: importable from here as before
from .bench_methods import BENCH_SCHEDULES, DATA_FRAME_GRID  # noqa: F401
from .bench_references import REFERENCES  # noqa: F401
from .bench_report import GAUSSIAN_MAP, best_by_kind, format_report, format_table, goals_markdown  # noqa: F401
from .scorers import DigitsScorer  # noqa: F401

__all__ = ["run_quality_bench", "bench_models", "bench_metrics", "bench_model", "FLOOR_SETS"]

#: independent exact sample sets averaged for the floors of the exact models
FLOOR_SETS = 5


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
    """Every method at every NFE budget on ``n`` samples, with floors and converged ODE and SDE references: the
    bench's JSON document (its rows written by :meth:`.bench_row.BenchRow.to_json`).

    The model comes from the model registry (:mod:`lazyflow.runtime.models.registry`) with its kind's
    scorer (:mod:`.scorers`): ``digits``, FD in the classifier's features against the digits dataset; the
    exact mixtures ``gmm64``/``gmm4096``/``gmm:SEED`` (:mod:`lazyflow.runtime.models.gmm`) seen through
    ``prediction`` (velocity, x, noise, score), scored by fd, sw, weight_tv and nll_gap
    (:mod:`lazyflow.runtime.evaluation.gmm_metrics`).  Every deterministic row gets ``path`` against the
    converged ODE solution from the same noise (``result["path_reference"]``, :mod:`.paths`).
    ``methods`` replaces the method list (then no data-frame rows or baseline are added unless asked for by
    a method's ``stats``); ``on_samples(row, samples)`` sees every run's samples with its
    :class:`.bench_row.BenchRow` (rows of ours carry ``sample_args``).  Noise and score predictions of an exact
    model run on :data:`OPEN_GRID` (see :func:`open_start`; no data-frame rows there).  ``grid_files``: tuned
    grids (``lazyflow tune-grid``), each scored at its own NFE beside its untuned starting grid, in
    ``result["tuned_rows"]`` (kept out of ``rows``).  ``save``: the path the caller writes the JSON to; the
    data-frame rows' statistics files are written next to it (:func:`.data_rows.stats_file`), else their
    ``sample_args`` name :data:`STATS_FILE_MISSING`."""
    import torch

    bench = bench_model(model_name, prediction, n)
    prediction = bench.loaded.prediction
    shown = prediction if bench.exact else None
    run = BenchRunner(bench, (n, *bench.loaded.data_shape), seed, lambda method, steps, stats_path: sample_args(
        model_name, method, steps, n, seed, shown, stats_path), on_samples)
    open_grid = bench.exact and prediction in SILENT_AT_SNR_0
    methods = _methods(run, methods, full, open_grid, save, log)
    with torch.no_grad():
        rows = run.ours(methods, nfes, log)
        rows += run.baseline_rows(nfes, log) if run.exact_samples is not None else []
        if include_peers:
            rows += run.peers(bench.peer_network(), nfes, log)
    tuned_rows = [run.tuned(path, model_name, prediction, log) for path in grid_files or []]
    references = converged_references(run.one, bench.exact, open_grid, log)
    return _document(run, rows, tuned_rows, references, nfes, include_peers, open_grid)


def _document(run: BenchRunner, rows: list[BenchRow], tuned_rows: list[BenchRow], references: list[dict],
              nfes: list[int], include_peers: bool, open_grid: bool) -> dict:
    """The bench's JSON document: its rows, settings, references, floors and where it ran."""
    from .peers import bench_peers

    bench = run.bench
    result = {"rows": [row.to_json() for row in rows], "model": bench.name, "n": run.shape[0], "seed": run.seed,
              "nfe_budgets": nfes, "metrics": [*bench.scorer.metrics, PATH_METRIC], "reference": references[0],
              "references": references, "path_reference": {**run.path.fields(), "scores": run.path_scores},
              "skipped": bench_peers(bench.loaded)[1] if include_peers else [], "machine": machine(),
              "date": datetime.date.today().isoformat(), "command": "lazyflow " + " ".join(sys.argv[1:])}
    if run.stats:
        result["data_stats"] = {kind: s.info for kind, s in run.stats.items()}
    if tuned_rows:
        result["tuned_rows"] = [row.to_json() for row in tuned_rows]
    if open_grid and bench.loaded.diffusion is not None:
        result["grid_note"] = (f"{run.prediction} prediction is undefined at snr = 0: every run of ours starts at log "
                               f"snr -5 (grid {OPEN_GRID}) from alpha z but the data frames on their own grids (they "
                               "start at t = 0 without a call), the references at -12 "
                               f"({OPEN_REFERENCE_GRID}); point-mass frames are left out.  Every row's path is measured "
                               "against the model's ODE from that row's own start (ours: t = 0 or the open grid's log "
                               "snr; each peer: its scheduler's first timestep or sigma_max)")
    elif open_grid:
        result["grid_note"] = (f"{run.prediction} prediction is undefined at snr = 0: every run starts at log snr -5 "
                               f"(grid {OPEN_GRID}), the references at -12 ({OPEN_REFERENCE_GRID}); point-mass "
                               "frames (which start at snr = 0) and the data-frame integrators (which skip the "
                               "call at t = 0) are left out")
    result.update(_floors(bench, run.shape[0], run.seed))
    return result


def _methods(run: BenchRunner, methods: list[OurMethod] | None, full: bool, open_grid: bool, save: str | Path | None,
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
    discrete = run.bench.loaded.diffusion is not None   # its data frames start on the open grid with the others
    kinds = stats_kinds(math.prod(run.shape[1:]), data_shape=tuple(run.shape[1:])) \
        if default and (discrete or not open_grid) else ()
    needed = tuple(dict.fromkeys((*kinds, *(m.stats for m in methods if m.stats))))
    if needed:
        run.prepare_stats(needed, save, log)
    frames = data_frame_methods(full, kinds)   # from t = 0 without a call there, and (discrete) on the open grid
    return methods + frames + (open_start(frames) if open_grid else [])


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
