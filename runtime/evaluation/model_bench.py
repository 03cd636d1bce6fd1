"""``lazyflow bench --model CKPT --model-kind KIND``: the bench on the user's own model, with no dataset.

Each deterministic sampler, ours and the peers', is scored by its pathwise error (:mod:`.paths`)

    path = (1/n) sum_i |x_i - x*_i|        (L2 over each sample's coordinates)

against x*, the model's own ODE solution from the same start noise x0_i = standard_normal(seed, i): the
probability-flow ODE of the model's velocity on its source schedule, solved by :data:`~.paths.PATH_REFERENCE_INTEGRATOR`
(multistep3-pc) on a uniform grid of ``reference_steps`` steps in float64 (the model is called in its own
dtype), checked against the same solver at half the steps.  Measured on the tests' random SiT against RK4 at
256 steps: 50/100/200/400 steps are 8.5e-4/2.2e-4/5.6e-5/1.4e-5 away (second order: the grid's end steps), so
x*_N is about check/3 from the exact solution, and the check bounds it.  Stochastic samplers have no
pathwise target and are left out.

The data frames run on statistics of the model's own samples (:func:`data_frame_rows`; ``stats_samples`` of
them, drawn once with multistep-pc on 32 steps, their cost in the result): one set for all samples
(``[full]``), the covariance within the conditions with each sample's mean read from its first call
(``[full|first-call]``: prompts, guidance) and, where the model has class labels, one set per label
(``[full|label]``).  Per budget the report names the lowest path of ours beside the best peer's: the
sampler to use (the recommendation, with its ``lazyflow sample`` flags), and checks the pick as a pilot would
make it: chosen on the first half of the samples, scored on the second.

It is the built-in bench's machinery (:class:`.bench_runner.BenchRunner`: the same rows, tables and ``lazyflow sample``
flags) with what a checkpoint needs: the conditioning (SiT class labels, given or drawn from a seed; a
diffusers transformer's prompt embeddings) following its samples, everything run ``batch_size`` samples at
a time (bounded memory), a progress bar of network evaluations, and the reference cached in a safetensors
file that records the settings it was made with (:mod:`.reference_cache`; another setting is refused)."""
from __future__ import annotations

import datetime
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import LazyflowError
from ...predictions import SILENT_AT_SNR_0
from ..core.gridfile import TunedGrid
from ..core.sampler import per_sample_kwargs
from ..models.kind import LoadedModel, ModelKind
from .bench_methods import OurMethod, open_start, our_methods, sample_args
from .bench_report import format_table, machine, path_check
from .bench_row import BenchRow
from .bench_runner import BenchModel, BenchRunner
from ..core.call_counter import CallCounter
from .data_rows import STATS_SAMPLES, STATS_STEPS, BenchStats, bench_stats, stats_key, stats_kinds
from .goals import best_row, versus
from .paths import PATH_REFERENCE_GRID, PATH_REFERENCE_INTEGRATOR
from .reference_cache import cached_reference
from .scorers import PATH_METRIC

__all__ = ["run_model_bench", "format_model_report", "model_bench_methods", "load_bench_model", "PathOnlyScorer",
           "MODEL_REFERENCE_STEPS", "CONVERGED"]

#: the reference's default steps (its check runs half of them)
MODEL_REFERENCE_STEPS = 400
#: the kind options that name a file the model depends on (the cache compares their bytes)
FILE_OPTIONS = ("prompt_embeds",)
#: the reference counts as converged when halving its steps moves it by less than this share of the best
#: 4-NFE path (the triangle inequality bounds how far any row's path moves by that distance)
CONVERGED = 0.01


class PathOnlyScorer:
    """No dataset: nothing scores the samples but ``path`` (added by the runner)."""

    metrics: tuple[str, ...] = ()

    def score(self, samples: Any) -> dict[str, float]:
        return {}


def model_bench_methods(full: bool = True) -> list[OurMethod]:
    """Ours in :func:`.bench_methods.our_methods` that integrate an ODE (path is defined for them), without the
    data-frame integrators (:func:`data_frame_rows` adds them with the model's own statistics)."""
    return [m for m in our_methods(full) if not m.target().stochastic]


#: the data-frame integrators the model bench runs, on these grids and in these schedules (full; --quick: the
#: linear schedule only).  Chosen on the two development test beds (cond-mlp, guided-mlp at guidance 2; docs/
#: data-frames.md): every one of them was the lowest path of some statistics at some budget of 4, 6, 8 NFE
MODEL_DATA_FRAMES = ("data-multistep", "data-multistep-pc", "data-multistep3", "data-multistep3-pc")
MODEL_DATA_FRAME_GRIDS = ("uniform", "logsnr:-1,2.5")
MODEL_DATA_FRAME_SCHEDULES = ("linear", "vp")


def data_frame_rows(keys: list[str], full: bool = True) -> list[OurMethod]:
    """The data-frame rows of the model bench, once per statistics key (:func:`.data_rows.stats_key`)."""
    schedules = MODEL_DATA_FRAME_SCHEDULES if full else MODEL_DATA_FRAME_SCHEDULES[:1]
    return [OurMethod(schedule, integrator, grid, stats=key) for key in keys for schedule in schedules
            for integrator in MODEL_DATA_FRAMES for grid in MODEL_DATA_FRAME_GRIDS]


def stats_conditions(loaded: LoadedModel) -> tuple[str, ...]:
    """How the statistics treat the model's condition: all samples alike, and for a conditional model (one
    with per-sample conditioning) the first call's mean, and per class label where it has labels."""
    per_sample = any(isinstance(v, torch.Tensor) and v.dim() > 0 for v in loaded.model_kwargs.values())
    return ("none",) + (("first-call",) if per_sample else ()) + (("label",) if "y" in loaded.model_kwargs else ())


def stats_keys(loaded: LoadedModel, samples: int) -> list[str]:
    """The statistics the data-frame rows run with: per condition (:func:`stats_conditions`) the kinds that
    :func:`.data_rows.stats_kinds` allows for the samples each set is estimated from (per label: samples over
    the number of classes)."""
    classes = max(1, int(loaded.metadata.get("num_classes", 0)))
    dim = math.prod(loaded.data_shape)
    keys = []
    for condition in stats_conditions(loaded):
        per = samples // classes if condition == "label" else samples
        if per < 2:
            raise LazyflowError(f"--stats-samples {samples}: statistics per label need at least 2 samples of each of "
                                f"the {classes} labels")
        keys += [stats_key(kind, condition) for kind in stats_kinds(dim, per, tuple(loaded.data_shape))]
    return keys


def _random_labels(loaded: LoadedModel, n: int, label_seed: int) -> LoadedModel:
    """``loaded`` with class labels drawn uniformly from [0, num_classes) by ``label_seed``."""
    classes = int(loaded.metadata.get("num_classes", 0))
    if classes < 1:
        raise LazyflowError("the model records no class count: give --class-labels")
    labels = torch.randint(classes, (n,), generator=torch.Generator().manual_seed(label_seed))
    device = loaded.model_kwargs["y"].device
    return replace(loaded, model_kwargs={**loaded.model_kwargs, "y": labels.to(device)})


def load_bench_model(model: str, kind: str, n: int, *, options: dict[str, Any] | None = None,
                     label_seed: int = 0, device: Any = None) -> tuple[ModelKind, LoadedModel]:
    """The file ``model`` of ``kind`` loaded for ``n`` samples with the kind's ``options``; a kind that
    takes class labels and is given none gets labels drawn by ``label_seed``."""
    from ..models.registry import load_model, model_kind_for

    found = model_kind_for(model, kind)
    options = dict(options or {})
    if options.get("vae"):
        raise LazyflowError("--vae: the bench compares latents, it decodes nothing")
    drawn = "class_labels" in found.options and not options.get("class_labels")
    if drawn:
        options["class_labels"] = "0"          # replaced below by labels drawn from label_seed
    loaded = load_model(model, kind=kind, device=device, num_samples=n, **options)
    if drawn:
        loaded = _random_labels(loaded, n, label_seed)
    if loaded.data_shape is None:
        raise LazyflowError(f"the {found.name} model at {model} does not say its data shape: give --shape, "
                            "e.g. --shape 4,32,32")
    if loaded.prediction != "velocity" and loaded.diffusion is None:
        raise LazyflowError(f"{model} predicts {loaded.prediction}; the bench on a model file compares samplers "
                            "on velocity models and on diffusion networks (--model-kind diffusers-unet)")
    return found, loaded


def _kind_flags(kind: str, options: dict[str, Any], loaded: LoadedModel) -> list[str]:
    """The ``lazyflow sample`` flags that load the same model with the same conditioning."""
    flags = ["--model-kind", kind]
    for name, value in options.items():
        if name == "model_params":
            flags += [w for k, v in value.items() for w in ("--model-param", f"{k}={v}")]
        elif name != "class_labels" and value not in (None, ""):
            text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
            flags += ["--" + name.replace("_", "-"), text]
    if options.get("class_labels"):           # the given pattern, repeated over the samples as here
        flags += ["--class-labels", str(options["class_labels"])]
    elif "y" in loaded.model_kwargs:          # labels drawn from --label-seed: each one
        flags += ["--class-labels", ",".join(str(int(v)) for v in loaded.model_kwargs["y"].tolist())]
    return flags


def _settings(model: str, kind: ModelKind, options: dict[str, Any], loaded: LoadedModel, n: int, seed: int,
              steps: int) -> dict[str, Any]:
    """What the reference depends on (a cache made with other settings is refused)."""
    from .reference_cache import content_digest, tensors_digest

    files = {k: content_digest(options[k]) for k in FILE_OPTIONS if options.get(k)}   # by content, not by name
    given = {k: (files[k] if k in files else v if isinstance(v, (int, float, str)) else repr(v))
             for k, v in sorted(options.items()) if k != "class_labels"}
    return {"model": content_digest(model), "kind": kind.name, "options": given,
            "conditioning": tensors_digest(loaded.model_kwargs), "shape": list(loaded.data_shape), "n": n,
            "seed": seed, "source": getattr(loaded.source, "name", str(loaded.source)),
            "method": f"{PATH_REFERENCE_INTEGRATOR}/{PATH_REFERENCE_GRID}", "steps": steps,
            "check_steps": steps // 2, "dtype": "float64"}


def run_model_bench(model: str, kind: str, nfes: list[int], n: int, seed: int, *,
                    options: dict[str, Any] | None = None, label_seed: int = 0, batch_size: int | None = None,
                    device: Any = None, reference_steps: int = MODEL_REFERENCE_STEPS,
                    reference_cache: str | Path | None = None, include_peers: bool = True, full: bool = True,
                    methods: list[OurMethod] | None = None, data_frames: bool = True,
                    stats_samples: int = STATS_SAMPLES, tune: int = 0, bespoke: bool = False,
                    save: str | Path | None = None,
                    pilot: str | Path | None = None, log: Callable = print, progress: bool = True) -> dict:
    """Every deterministic sampler of ours (``methods``, default :func:`model_bench_methods` and, with
    ``data_frames``, :func:`data_frame_rows` on ``stats_samples`` of the model's own samples, written next to
    ``save`` when given) and the installed peers' at each budget of ``nfes`` on ``n`` samples of the model
    file ``model`` of ``kind``, scored by ``path`` (see the module's docstring).  ``tune``: per budget, the
    grids of that many lowest-path rows of ours are tuned on other noise (:func:`tuned_rows`; needs ``save``);
    ``bespoke``: a bespoke solver fitted per budget on that noise (:func:`bespoke_rows`; needs ``save``).
    ``pilot``: the JSON of an earlier bench of the model on other noise (fewer samples): its recommended sampler
    at each budget is run here and checked against this bench's best (:func:`pilot_check`)."""
    from ..core.progress import progress_bar
    from ..core.sampler import resolve_device

    _refuse_bad_options(reference_steps, batch_size, tune or bespoke, save)
    device = resolve_device(device)
    options = dict(options or {})
    found, loaded = load_bench_model(model, kind, n, options=options, label_seed=label_seed, device=device)
    keys = stats_keys(loaded, stats_samples) if data_frames and methods is None else []
    methods = (model_bench_methods(full) if methods is None else list(methods)) + data_frame_rows(keys, full)
    if loaded.prediction in SILENT_AT_SNR_0:   # undefined at snr = 0: every run starts on the open grid
        methods = open_start(methods)
    if not methods:
        raise LazyflowError("no deterministic sampler of ours to run (a stochastic schedule has no pathwise target)")
    flags = _kind_flags(found.name, options, loaded) + (["--device", str(device)] if device.type != "cpu" else [])

    def args_for(method: OurMethod, steps: int, stats: str | None) -> list[str]:
        return [*sample_args(model, method, steps, n, seed, data_stats=stats), *flags]
    spent = [0]   # every network evaluation the bench makes (reference, statistics, rows, tuning, peers)
    total = _evaluations(loaded, n, len(methods), nfes, include_peers, reference_cache, reference_steps) + \
        (stats_samples * STATS_STEPS if keys else 0)
    with progress_bar(total, enabled=progress, desc="model evaluations", unit="eval") as bar:
        def update(evaluations: int) -> None:
            spent[0] += evaluations
            if bar is not None:
                bar(evaluations)
        metered = replace(loaded, model=CallCounter(loaded.model, update))
        run = BenchRunner(BenchModel(model, found, metered, PathOnlyScorer()), (n, *loaded.data_shape), seed,
                          args_for, None, batch_size=batch_size, device=device, halves=True)
        settings = _settings(model, found, options, loaded, n, seed, reference_steps)
        with torch.no_grad():
            reused = _path_solved(run, reference_cache, settings, reference_steps, log)
            if keys:
                run.stats = _own_stats(model, found, options, label_seed, device, batch_size, tuple(keys),
                                       stats_samples, save, update, log)
            rows, tuned, picked = _all_rows(run, methods, nfes, metered, tune=tune, bespoke=bespoke, pilot=pilot,
                                            peers=include_peers, save=save, log=log)
    result = _document(run, rows, nfes, kind=found, conditioning=_conditioning(loaded, options, label_seed),
                       reference=_path_reference(run, reference_cache, reused, settings), peers=include_peers,
                       evaluations=spent[0])
    return _finished(result, run, tuned, picked, pilot)


def _evaluations(loaded: LoadedModel, n: int, methods: int, nfes: list[int], include_peers: bool,
                 cache: str | Path | None, reference_steps: int) -> int:
    """The progress bar's total: network evaluations of the rows, the reference (unless cached) and the references
    of the peers that start at t0 > 0 (never cached); tuning and statistics not included."""
    from .peers import bench_peers, peer_start

    usable = bench_peers(loaded)[0] if include_peers else {}
    peers = sum(not stochastic for stochastic, _ in usable.values())
    starts = len({peer_start(fn) for stochastic, fn in usable.values() if not stochastic} - {(0.0, 1.0)})
    cached = cache is not None and Path(cache).exists()
    return n * ((methods + peers) * sum(nfes) + (0 if cached else reference_steps * 3 // 2) +
                starts * (reference_steps * 3 // 2))


def _path_solved(run: BenchRunner, cache: str | Path | None, settings: dict, steps: int, log: Callable) -> bool:
    """Sets the run's x*: read from ``cache`` where it holds one of these ``settings``, else solved at ``steps``
    (and written there); returns whether it was read."""
    run.references.main, reused = cached_reference(cache, settings, lambda: run.references.solve(steps))
    log(f"  path reference {run.path.method}, {run.path.steps} steps in float64 "
        f"{'read from ' + str(cache) if reused else f'({run.path.seconds:.1f} s)'}: halving "
        f"its steps moves it by {run.path.check:.2e}")
    return reused


def _document(run: BenchRunner, rows: list[BenchRow], nfes: list[int], *, kind: ModelKind,
              conditioning: dict[str, Any], reference: dict[str, Any], peers: bool, evaluations: int) -> dict:
    """The model bench's JSON document but for its statistics, tuned rows and recommendation (:func:`_finished`)."""
    from .peers import bench_peers

    skipped = bench_peers(run.bench.loaded)[1] if peers else []
    return {"rows": [row.to_json() for row in rows], "model": run.bench.name, "model_kind": kind.name,
            "n": run.shape[0], "seed": run.seed, "nfe_budgets": nfes, "metrics": [PATH_METRIC],
            "data_shape": list(run.shape[1:]), "batch_size": run.options["batch_size"], "conditioning": conditioning,
            "references": [], "path_reference": reference,
            "skipped": [s for s in skipped if "needs" in s] + ["stochastic samplers (no pathwise target)"],
            "machine": machine(), "device": str(run.options["device"]), "date": datetime.date.today().isoformat(),
            "network_evaluations": evaluations, "command": "lazyflow " + " ".join(sys.argv[1:])}


def _all_rows(run: BenchRunner, methods: list[OurMethod], nfes: list[int], metered: LoadedModel, *, tune: int,
              bespoke: bool, pilot: str | Path | None, peers: bool, save: str | Path | None,
              log: Callable) -> tuple[list[BenchRow], list[BenchRow], list[BenchRow]]:
    """(rows: ours then the peers', tuned rows: grids and bespoke solvers, the pilot's picks run here)."""
    by_name = {m.name: m for m in methods}
    rows = [row.with_details(choice=_choice(by_name[row.method])) for row in run.ours(methods, nfes, log)]
    tuned = tuned_rows(run, rows, methods, tune, metered, save, log) if tune else []
    tuned += bespoke_rows(run, nfes, metered, save, log) if bespoke else []
    picked = _pilot_rows(run, pilot, nfes, log) if pilot is not None else []
    network = metered.model if metered.diffusion is None else CallCounter(metered.diffusion.net, metered.model.on_call)
    rows += run.peers(network, nfes, log, stochastic_too=False) if peers else []
    return rows, tuned, picked


def _refuse_bad_options(reference_steps: int, batch_size: int | None, writes_files: bool,
                        save: str | Path | None) -> None:
    """The model bench's options checked before any model is loaded."""
    if reference_steps < 4:
        raise LazyflowError(f"--reference-steps must be at least 4, got {reference_steps}")
    if batch_size is not None and batch_size < 1:
        raise LazyflowError(f"--batch-size must be positive, got {batch_size}")
    if writes_files and save is None:
        raise LazyflowError("--tune and --bespoke write their files next to the result: give --save FILE.json")


def _path_reference(run: BenchRunner, cache: str | Path | None, reused: bool, settings: dict) -> dict[str, Any]:
    """The reference's record: how it was made, whether it was read from ``cache``, and the samples' mean norm
    (the scale a path is read against)."""
    size = float(run.path.samples.reshape(run.shape[0], -1).norm(dim=1).mean())
    return {**run.path.fields(), "cache": None if cache is None else str(cache), "read_from_cache": reused,
            "mean_norm": size, "settings": settings}


def _finished(result: dict, run: BenchRunner, tuned: list[BenchRow], picked: list[BenchRow],
              pilot: str | Path | None) -> dict:
    """``result`` with the statistics' records, the tuned rows, the recommendation and the pilot's check."""
    if run.stats:
        result["data_stats"] = {key: s.info for key, s in run.stats.items()}
    if tuned:
        result["tuned_rows"] = [row.to_json() for row in tuned]
    result["recommendation"] = recommendations(result)
    if pilot is not None:
        result["pilot"] = pilot_check(result, picked, str(pilot))
    return result


def _pilot_rows(run: BenchRunner, pilot: str | Path, nfes: list[int], log: Callable) -> list[BenchRow]:
    """The pilot's pick at each budget of ``nfes``, run here (on this bench's noise)."""
    rows = []
    for budget, method in sorted(pilot_methods(pilot).items()):
        if budget not in nfes:
            continue
        row = run.one(method, run.steps_for(method, budget), budget).with_details(choice=_choice(method))
        log(f"  the pilot's pick at {budget} NFE, {row.method}: {_sig(row.score(PATH_METRIC))}")
        rows.append(row)
    return rows


def pilot_check(result: dict, picked: list[BenchRow], pilot: str) -> dict[str, Any]:
    """Per budget, the pilot's pick scored on this bench's noise beside the best of ours and the best peer."""
    out = {"from": pilot, "budgets": {}}
    for row in picked:
        budget, path = row.budget, row.score(PATH_METRIC)
        ours = best_row(result, PATH_METRIC, budget, False, False, tuned=True)
        peer = best_row(result, PATH_METRIC, budget, True, False)
        out["budgets"][str(budget)] = {
            "method": row.method, "path": path, "sample_args": None if row.sample_args is None else list(row.sample_args),
            "best_of_ours": ours[PATH_METRIC] if ours else None, "best_peer": peer["method"] if peer else None,
            "best_peer_path": peer[PATH_METRIC] if peer else None,
            "ratio_to_peer": path / peer[PATH_METRIC] if peer and path else None,
            "ratio_to_best_of_ours": path / ours[PATH_METRIC] if ours and path else None}
    return out


def _choice(method: OurMethod) -> dict[str, Any]:
    """What a row of ours is, as the fields of its :class:`.bench_methods.OurMethod` (a pilot's pick, rerun by another
    bench with ``pilot``)."""
    return {"schedule": method.schedule, "integrator": method.integrator, "grid": method.grid,
            "final_step": method.final_step, "diffusion": method.diffusion, "stats": method.stats}


def pilot_methods(pilot: str | Path) -> dict[int, OurMethod]:
    """Per budget, the sampler an earlier bench of the model (a pilot: other noise, fewer samples) recommends;
    a tuned grid's file is found beside that bench's JSON when its path does not resolve from here."""
    path = Path(pilot)
    try:
        found = json.loads(path.read_text())["recommendation"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LazyflowError(f"--pilot {pilot}: not the JSON of a lazyflow bench --model-kind run "
                            f"({type(err).__name__}: {err})") from None
    out = {}
    for budget, entry in found.items():
        choice = dict(entry.get("choice") or {})
        if not choice:
            continue
        grid = choice["grid"]
        if grid.endswith(".json") and not Path(grid).exists() and (path.parent / Path(grid).name).exists():
            choice["grid"] = str(path.parent / Path(grid).name)
        out[int(budget)] = OurMethod(**choice)
    return out


#: the tuning of the model bench's best rows: samples, Nelder-Mead evaluations, the reference's Heun steps
TUNE_SAMPLES, TUNE_EVALS, TUNE_REFERENCE_STEPS = 128, 200, 200


def tuned_rows(run: BenchRunner, rows: list[BenchRow], methods: list[OurMethod], top: int, loaded: LoadedModel,
               save: str | Path, log: Callable) -> list[BenchRow]:
    """Per budget, the ``top`` lowest-path rows of ours, each of another integrator (on a model whose velocity
    oscillates in t the best untuned row need not be the best tuned one), with their grid tuned
    (:func:`.tune.tune_grid`: path loss on :data:`TUNE_SAMPLES` samples of the noise of seed + 1, the bench's
    samples held out), each grid written next to ``save`` and scored here as a row marked ``tuned`` beside
    its untuned path."""
    from .tune import tune_grid

    by_name = {m.name: m for m in methods}
    count, kwargs = _tuning_kwargs(run, loaded)
    out = []
    for budget in sorted({r.budget for r in rows}):
        ranked, integrators = [], set()
        for row in sorted((r for r in rows if r.budget == budget and r.score(PATH_METRIC) is not None),
                          key=lambda r: r.score(PATH_METRIC)):
            if len(ranked) < top and by_name[row.method].integrator not in integrators:
                ranked.append(row)
                integrators.add(by_name[row.method].integrator)
        for row in ranked:
            method, untuned = by_name[row.method], row.score(PATH_METRIC)
            stats = run.stats[method.stats].stats if method.stats else None
            grid = tune_grid(loaded.model, model_name=run.bench.name, schedule=method.schedule, source=loaded.source,
                             integrator=method.integrator, nfe=budget, init=method.grid, samples=count,
                             seed=run.seed + 1, reference_steps=TUNE_REFERENCE_STEPS, max_evals=TUNE_EVALS,
                             model_kwargs=kwargs or None, data_stats=stats, data_shape=loaded.data_shape)
            scored = _scored_fit(run, method, grid, Path(save).with_name(f"{Path(save).stem}.grid-{len(out)}.json"),
                                 budget, count, {"grid": method.grid, PATH_METRIC: untuned})
            log(f"  tuned {row.method} at {budget} NFE: {_sig(scored.score(PATH_METRIC))} (untuned "
                f"{_sig(untuned)}; {grid.tuning['seconds']:.1f} s, {grid.tuning['model_calls']} calls)")
            out.append(scored)
    return out


def _scored_fit(run: BenchRunner, method: OurMethod, fitted: TunedGrid, file: Path, budget: int, count: int,
                untuned: dict[str, Any]) -> BenchRow:
    """A grid or solver fitted on the noise of seed + 1 (``count`` samples), written to ``file`` and scored here
    as ``method`` on that file: a row marked ``tuned``, with its fit's cost and ``untuned`` beside it."""
    from ..core.gridfile import save_grid_file

    save_grid_file(fitted, file)
    method = replace(method, grid=str(file))
    return run.one(method, fitted.steps, budget).with_details(
        tuned=True, choice=_choice(method), held_out=True, tuning_seed=run.seed + 1, tuning_samples=count,
        tuning_seconds=fitted.tuning["seconds"], tuning_model_calls=fitted.tuning["model_calls"],
        grid_file=str(file), untuned=untuned)


def _tuning_kwargs(run: BenchRunner, loaded: LoadedModel) -> tuple[int, dict[str, Any]]:
    """The tuning samples' count and conditioning: the first :data:`TUNE_SAMPLES` of the bench's."""
    count = min(TUNE_SAMPLES, run.shape[0])
    return count, per_sample_kwargs(loaded.model_kwargs, run.shape[0], range(count))


def bespoke_rows(run: BenchRunner, nfes: list[int], loaded: LoadedModel, save: str | Path,
                 log: Callable) -> list[BenchRow]:
    """Per budget, a bespoke solver (:func:`.bespoke_fit.fit_bespoke`) fitted on :data:`TUNE_SAMPLES` samples of
    the noise of seed + 1 (the bench's samples held out), written next to ``save`` and scored here as a row
    marked ``tuned``."""
    from .bespoke_fit import fit_bespoke

    count, kwargs = _tuning_kwargs(run, loaded)
    out = []
    for budget in sorted(nfes):
        solver = fit_bespoke(loaded.model, model_name=run.bench.name, source=loaded.source,
                             prediction=loaded.prediction, nfe=budget, samples=count, seed=run.seed + 1,
                             reference_steps=TUNE_REFERENCE_STEPS, model_kwargs=kwargs or None,
                             data_shape=loaded.data_shape)
        own = None if isinstance(loaded.source, str) else loaded.source   # a table has no name to load it by
        method = OurMethod(solver.schedule if own is not None else loaded.source, "bespoke", "", own=own)
        scored = _scored_fit(run, method, solver, Path(save).with_name(f"{Path(save).stem}.bespoke-{budget}.json"),
                             budget, count, {"grid": f"its start ({solver.tuning['init']}; fitted path "
                                                     f"{_sig(solver.tuning['loss_before'])} -> "
                                                     f"{_sig(solver.tuning['loss_after'])} on seed {run.seed + 1})",
                                             PATH_METRIC: None})
        log(f"  bespoke solver at {budget} NFE: {_sig(scored.score(PATH_METRIC))} (fitted on seed {run.seed + 1}: "
            f"{_sig(solver.tuning['loss_before'])} -> {_sig(solver.tuning['loss_after'])}; "
            f"{solver.tuning['seconds']:.1f} s)")
        out.append(scored)
    return out


def _own_stats(model: str, kind: ModelKind, options: dict[str, Any], label_seed: int, device: torch.device,
               batch_size: int | None, keys: tuple[str, ...], samples: int, save: str | Path | None,
               update: Callable[[int], None] | None, log: Callable) -> dict[str, BenchStats]:
    """The data frames' statistics ``keys`` of ``samples`` of the model's own samples, one draw for all; a
    labelled model's draw has every class label in turn (i mod num_classes)."""
    _, loaded = load_bench_model(model, kind.name, samples, options=options, label_seed=label_seed, device=device)
    kwargs = dict(loaded.model_kwargs)
    classes = int(loaded.metadata.get("num_classes", 0))
    if "y" in kwargs and classes > 0:
        kwargs["y"] = (torch.arange(samples) % classes).to(kwargs["y"].device)
    found, _ = bench_stats(CallCounter(loaded.model, update), loaded.data_shape, keys, save,
                           samples=samples, source=loaded.source, prediction=loaded.prediction,
                           model_kwargs=kwargs or None, batch_size=batch_size, device=device)
    info = next(iter(found.values())).info
    log(f"  data statistics {', '.join(found)}: {info['from']}, {samples} samples, {info['model_calls']} calls "
        f"({info['seconds']:.1f} s)" + (f", written next to {save}" if save else ""))
    return found



def recommendations(result: dict) -> dict[str, dict]:
    """Per budget (keys are the budgets as text, as in JSON): the sampler of ours with the lowest path, its
    ``lazyflow sample`` flags, the best peer and their ratio; and ``pilot``, the same choice made on the first
    half of the samples and scored on the second (the second half's best of ours and of the peers beside it):
    how well a pilot of n/2 samples picks."""
    out = {}
    for budget in result["nfe_budgets"]:
        ours = best_row(result, PATH_METRIC, budget, False, False, tuned=True)
        if ours is None:
            continue
        peer = best_row(result, PATH_METRIC, budget, True, False)
        entry = {"method": ours["method"], "path": ours[PATH_METRIC], "nfe": ours["nfe"],
                 "sample_args": ours.get("sample_args"), "choice": ours.get("choice"),
                 "best_peer": peer["method"] if peer else None, "best_peer_path": peer[PATH_METRIC] if peer else None,
                 "ratio_to_peer": ours[PATH_METRIC] / peer[PATH_METRIC] if peer else None}
        halves = [r for r in [*result["rows"], *result.get("tuned_rows", [])]
                  if r["budget"] == budget and r.get("path_halves") and not r["stochastic"]]
        mine = [r for r in halves if not r["peer"]]
        if mine:
            pick = min(mine, key=lambda r: r["path_halves"][0])
            second = pick["path_halves"][1]
            best_mine = min(r["path_halves"][1] for r in mine)
            best_peer = min((r["path_halves"][1] for r in halves if r["peer"]), default=None)
            entry["pilot"] = {"method": pick["method"], "second_half": second, "best_second_half": best_mine,
                              "ratio_to_best": second / best_mine,
                              "ratio_to_peer": None if best_peer is None else second / best_peer}
        out[str(budget)] = entry
    return out


def _conditioning(loaded: LoadedModel, options: dict[str, Any], label_seed: int) -> dict[str, Any]:
    if "y" in loaded.model_kwargs:
        labels = [int(v) for v in loaded.model_kwargs["y"].tolist()]
        how = "given" if options.get("class_labels") else f"drawn uniformly with --label-seed {label_seed}"
        return {"class_labels": labels, "labels": how}
    if "prompt" in loaded.model_kwargs:
        return {"prompt_embeds": str(options.get("prompt_embeds")), "prompts": loaded.metadata.get("prompts"),
                "rule": "sample i gets prompt i mod P"}
    return {}


def _sig(value: float | None) -> str:
    """Three significant digits ('-' for None): path errors span decades between 4 and 8 NFE."""
    return "  -  " if value is None else f"{value:.3g}"


def _converged(result: dict) -> str:
    """The reference's convergence verdict against the best 4-NFE (else smallest-budget) path."""
    reference, check = result["path_reference"], path_check(result)
    if not check or check["ratio"] is None:
        return f"reference check: halving its steps moves x* by {reference['check']:.2e}"
    ok = check["ratio"] <= CONVERGED
    text = (f"reference {'converged' if ok else 'NOT converged'}: {reference['steps']} -> {reference['check_steps']} "
            f"steps moves x* by {reference['check']:.2e}, {check['ratio']:.2%} of the best {check['budget']}-NFE "
            f"path {check['best']:.4g} (bound {CONVERGED:.0%})")
    return text if ok else text + f"; rerun with --reference-steps {2 * reference['steps']}"


def format_model_report(result: dict) -> str:
    """The path table (:func:`.bench_report.format_table`), the convergence verdict, and per budget the lowest path
    of ours beside the lowest of the peers: which sampler to use at that budget on this model."""
    scale = f"the samples x* have mean norm {result['path_reference']['mean_norm']:.4g} (path is in the same units)"
    lines = [format_table(result, PATH_METRIC, _sig), _converged(result), scale]
    if result.get("data_stats"):
        info = next(iter(result["data_stats"].values()))
        lines.append(f"data frames [KIND|CONDITION]: statistics of {info['samples']} of the model's own samples "
                     f"({info['model_calls']} calls on each, {info['sample_evaluations']:,} network evaluations in "
                     f"all, {info['seconds']:.1f} s), [full|label] one set per class label, [full|first-call] the mean "
                     "read from each run's first call")
    lines += ["", "which sampler at each budget (lowest path; deterministic):"]
    recommended = result.get("recommendation") or recommendations(result)
    for budget in result["nfe_budgets"]:
        rec = recommended.get(str(budget))
        peer = best_row(result, PATH_METRIC, budget, True, False)
        text = f"  nfe {budget:>3}: " + (f"ours {rec['method']} {_sig(rec['path'])}" if rec else "-")
        if peer:
            text += f" | best peer {peer['method']} {_sig(peer[PATH_METRIC])}"
            if rec:
                text += f" (ours {versus(PATH_METRIC, rec['path'], peer[PATH_METRIC])[1]})"
        lines.append(text)
        if rec and rec.get("pilot"):
            pilot = rec["pilot"]
            lines.append(f"           pilot check: chosen on samples 0-{result['n'] // 2 - 1}, {pilot['method']} "
                         f"scores {_sig(pilot['second_half'])} on the others, {pilot['ratio_to_best']:.2f}x their "
                         f"best of ours" + (f", {pilot['ratio_to_peer']:.2f}x their best peer"
                                            if pilot["ratio_to_peer"] is not None else ""))
    for budget, check in (result.get("pilot") or {}).get("budgets", {}).items():
        lines.append(f"  the pilot's pick ({result['pilot']['from']}) at {budget} NFE: {check['method']} "
                     f"{_sig(check['path'])} here, {check['ratio_to_best_of_ours']:.2f}x the best of ours"
                     + (f", {check['ratio_to_peer']:.2f}x the best peer ({check['best_peer']} {_sig(check['best_peer_path'])})"
                        if check["ratio_to_peer"] is not None else ""))
    for budget in result["nfe_budgets"]:
        rec = recommended.get(str(budget))
        if rec and rec.get("sample_args"):
            lines.append(f"  lazyflow sample {' '.join(rec['sample_args'])} --out samples.pt   # ours at {budget} NFE")
    return "\n".join(lines)
