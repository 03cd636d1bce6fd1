"""A registered model sampled into a file: what ``lazyflow sample`` runs.  The model comes from the
registry (:mod:`lazyflow.runtime.models.registry`), every check is made before sampling, each batch is
kept in ``OUT.partial/`` as it finishes (:mod:`lazyflow.runtime.core.resume`: ``resume`` continues a
killed run), the output is written from the batches at the end (:mod:`lazyflow.runtime.core.output`,
also under torchrun), and a model that decodes its samples into images (a SiT with a VAE) writes them
beside the file as ``.png``."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping


from ...errors import LazyflowError, SamplingError
from ..core import defaults
from ..core.limits import check_disk
from ..core.options import SampleOptions
from ..core.output import (Written, assemble, check_format, keep_batches, kept, output_files, output_path,
                           read_samples)
from ..core.resume import WorkDir, check_outputs, clear_leftovers, discard, file_hash
from .kind import LoadedModel
from .registry import load_model, model_kind_for

__all__ = ["SampleRun", "sample_to_file", "DEFAULT_STEPS", "SET_BY_THE_RUN"]

#: steps of a run that neither asks for a number nor uses a tuned grid
DEFAULT_STEPS = defaults.STEPS


@dataclass(frozen=True, kw_only=True)
class SampleRun:
    """What a :func:`sample_to_file` run wrote (``written``; ``images``: the decoded ``.png`` with its image
    count, height and width, None without a decoder) and how (``schedule``, ``steps``, ``integrator``, the
    model's ``note``)."""

    written: Written
    data_shape: tuple[int, ...]
    schedule: str
    steps: int
    integrator: str
    note: str = ""
    images: tuple[Path, int, int, int] | None = None
    decoder: str = ""

    def report(self, grid: str) -> list[str]:
        """The lines that say what this process wrote (none on a rank that wrote nothing); ``grid`` as given."""
        w, shape = self.written, self.data_shape
        how = f"schedule {self.schedule}, {self.steps} steps, {self.integrator}, grid {grid}" + \
            (f", {self.note}" if self.note else "")
        lines = []
        if w.index is not None:
            lines.append(f"wrote {w.index} and {w.shards} shards ({w.count} samples of shape {shape}, {how})")
        elif w.path is not None:
            where = f" from {w.processes} processes" if w.processes > 1 else ""
            lines.append(f"wrote {w.path} ({w.count} samples of shape {shape}{where}, {how})")
        if self.images is not None:
            path, count, height, width = self.images
            lines.append(f"wrote {path} ({count} images of {height}x{width}, {self.decoder})")
        return lines


def _silent(line: str) -> None:
    """The notes of a quiet run: dropped."""


def _data_shape(shape: tuple[int, ...] | None, loaded: LoadedModel) -> tuple[int, ...]:
    if shape is not None:
        return tuple(shape)
    if loaded.data_shape is None:
        raise LazyflowError("--shape is needed for this model (its data shape is not recorded)")
    return tuple(loaded.data_shape)


def _decoded(loaded: LoadedModel, written: Written) -> tuple[Path, int, int, int] | None:
    """The model's images of the samples this process wrote, as OUT.png (path, count, height, width)."""
    if loaded.decode_images is None or written.path is None:
        return None
    from .sit import save_image_grid

    images = loaded.decode_images(read_samples(written.path))
    path = save_image_grid(images, written.path.with_suffix(".png"))
    return path, len(images), images.shape[1], images.shape[2]


def _schedule_id(schedule: Any) -> dict[str, Any]:
    """What makes a schedule's numbers: its kernel file's hash (a table-backed kernel: its table's, in its SPEC),
    parameters and diffusion scale."""
    kernel = Path(getattr(schedule.kernel, "__file__", "") or "")
    named = getattr(schedule.kernel, "__name__", None) or schedule.kernel.SPEC["alpha"]
    return {"name": schedule.describe(), "kernel": file_hash(kernel) if kernel.is_file() else named,
            "params": [list(p) for p in schedule.params], "diffusion_scale": schedule.diffusion_scale}


def _settings(model: str, found: Any, model_options: Mapping[str, Any] | None, loaded: LoadedModel, run: Any,
              options: SampleOptions, *, num_samples: int, shards: bool) -> dict[str, Any]:
    """Every setting that changes the samples, for the manifest of ``OUT.partial/`` (:mod:`..core.resume`)."""
    from ... import __version__

    given = json.loads(json.dumps(dict(model_options or {}), sort_keys=True, default=str))
    o, stats = options, options.data_stats
    return {"lazyflow": __version__, "model": str(model), "model file": file_hash(model) if Path(model).is_file()
            else None, "model kind": found.name, "model options": given, "source": _schedule_id(loaded.source),
            "prediction": loaded.prediction, "schedule": _schedule_id(run.target), "integrator": o.integrator,
            "final step": o.final_step, "steps": run.plan.steps,
            "grid times": [float(t) for t in run.plan.times.tolist()],
            "data stats": None if stats is None else file_hash(stats), "data shape": list(run.shape[1:]),
            "seed": int(o.seed), "num samples": num_samples, "batch size": o.batch_size,
            "dtype": str(run.dtype).replace("torch.", ""), "device": run.device.type, "compile": o.compile,
            "capture": o.capture, "processes": run.ranks.world, "shards": shards}


def _finish(run: Any, work: WorkDir, out: Path, *, num_samples: int, data_shape: tuple[int, ...], shards: bool,
            note: Callable[[str], None]) -> Written:
    """Run the batches not finished yet (each kept as it finishes), write the output from all of them,
    then remove the work folder (rank 0, once every rank is done)."""
    from ..core.distributed import Watchdog, barrier

    pending = [indices for indices in run.chunks if not work.done(indices)]
    if len(pending) < len(run.chunks):
        note(f"resuming: {len(run.chunks) - len(pending)} of {len(run.chunks)} batches were finished"
             + (f" on rank {run.ranks.rank}" if not run.ranks.single else ""))
    watchdog = Watchdog(run.ranks)
    try:
        with watchdog:
            keep_batches(replace(run, chunks=pending).batches(), work, why=lambda: watchdog.failure)
            try:
                watchdog.finished()
            except SamplingError as err:
                raise SamplingError(f"{err}; {kept(work)}") from None
    except KeyboardInterrupt:   # the watchdog's interrupt, landing between the batches and the wait
        if watchdog.failure is None:
            raise
        raise SamplingError(f"{watchdog.failure}; {kept(work)}") from None
    try:
        written = assemble(work, run.chunks, out, num_samples=num_samples, data_shape=data_shape, ranks=run.ranks,
                           shards=shards, device=run.device)
        barrier(run.ranks)
    except RuntimeError as err:   # a collective failed: a rank died while the finished samples were exchanged
        if run.ranks.single or isinstance(err, LazyflowError):
            raise
        raise SamplingError(f"rank {run.ranks.rank}: exchanging the finished samples failed, another rank died? "
                            f"({str(err).splitlines()[0][:200]}); {kept(work)}") from None
    if run.ranks.rank == 0:
        discard(out)
    return written


#: the options of :func:`sample` that a file run sets itself (from the model, the processes, the output)
SET_BY_THE_RUN = ("dtype", "model_dtype", "model_kwargs", "initial", "callback", "progress", "noise", "distributed")


def _file_options(given: Mapping[str, Any]) -> SampleOptions:
    """The run's :class:`SampleOptions` from :func:`sample_to_file`'s keywords (those it sets itself refused)."""
    taken = sorted(set(given) & set(SET_BY_THE_RUN))
    if taken:
        raise LazyflowError(f"sample_to_file sets {', '.join(taken)} itself (options of lazyflow.sample, not of a file "
                            "run)")
    return SampleOptions.of(**given)


def _prepared(loaded: LoadedModel, options: SampleOptions, choice: Any, num_samples: int, data_shape: tuple[int, ...],
              device: Any, ranks: Any) -> Any:
    """The sampler's checked run (its plan and this rank's batches), before anything runs: ``options`` with the
    grid ``choice`` and what the model, the processes and the device set."""
    from ..core.data_stats import DataStats
    from ..core.sampler import SamplingRun

    stats = None if options.data_stats is None else DataStats.load(options.data_stats)
    run_options = replace(options, schedule=choice.target, grid=choice.grid, steps=choice.steps, device=device,
                          source=loaded.source, prediction=loaded.prediction, data_stats=stats,
                          model_kwargs=loaded.model_kwargs or None, distributed=not ranks.single,
                          progress=ranks.rank == 0 and num_samples * choice.steps > 2000)
    return SamplingRun.prepare(loaded.model, (num_samples, *data_shape), run_options)


def _check_run(num_samples: int, force: bool, resume: bool, shards: bool, ranks: Any) -> None:
    """The counts and flags of a file run that cannot go together, refused before the model is loaded."""
    if num_samples < 1:
        raise LazyflowError(f"--num-samples must be >= 1, got {num_samples}")
    if force and resume:
        raise LazyflowError("--force starts over and --resume continues: give one of them")
    if shards and ranks.single:
        raise LazyflowError("--shards is for runs under torchrun (several processes); one process writes --out")
    if shards and num_samples < ranks.world:
        raise LazyflowError(f"--shards: {num_samples} samples on {ranks.world} processes leave a rank without a "
                            f"shard; ask for at least {ranks.world} samples")


def _target(found: Any, out: Path, schedule: Any, diffusion_scale: float | None) -> Any:
    """The schedule asked for (at ``diffusion_scale``; None: the model's own, read once it is loaded, where a
    bespoke solver runs); a latent model's run refused into a ``.png``."""
    from ..core.schedule import load_schedule

    if found.latents and out.suffix == ".png":
        raise LazyflowError(f"a {found.name} run writes latents: --out must end in .pt or .npy (with a decoder, "
                            "e.g. --vae, the images go to the same name with .png)")
    if schedule is None:
        return None
    target = load_schedule(schedule)
    return target if diffusion_scale is None else target.with_diffusion_scale(diffusion_scale)


def _open_work(out: Path, outputs: list[Path], settings: dict[str, Any], ranks: Any, *, force: bool,
               resume: bool) -> WorkDir:
    """Every rank's verdict on the outputs and the work folder made one (all start or all refuse), then
    this rank's part of ``OUT.partial/`` (cleared first with ``force``)."""
    from ..core.distributed import agree, barrier

    agree(ranks, check_outputs(out, outputs, settings, force=force, resume=resume))
    if ranks.rank == 0:
        clear_leftovers(out, force=force, outputs=outputs)
    barrier(ranks)
    return WorkDir.open(out, settings, rank=ranks.rank, world=ranks.world)


def sample_to_file(model: str, out: str | Path, *, kind: str | None = None,
                   model_options: Mapping[str, Any] | None = None, num_samples: int = 64,
                   diffusion_scale: float | None = None, source: Any = None,
                   source_params: dict[str, float] | None = None, prediction: str | None = None, shape: tuple[int, ...] | None = None, shards: bool = False,
                   force: bool = False, resume: bool = False, note: Callable[[str], None] = _silent,
                   **options: Any) -> SampleRun:
    """Sample ``num_samples`` of ``model`` (a name or a file of ``kind``; ``model_options`` go to its
    loader) in ``schedule`` (at ``diffusion_scale``) and write them to ``out``; under torchrun every rank
    samples its share (``shards``: each writes its own file).  ``options`` are those of :func:`lazyflow.sample`
    (:class:`~lazyflow.runtime.core.options.SampleOptions`: schedule, steps, integrator, grid, seed, batch_size,
    device, ...) but for those the run sets itself (:data:`SET_BY_THE_RUN`); ``data_stats`` is a statistics
    file.  ``source`` and ``prediction`` default to the model's own, ``shape`` to its data shape, the grid and
    steps as :func:`~lazyflow.runtime.core.grid_choice.choose_grid` decides.  Every check is made before
    sampling.  Finished batches are kept in ``OUT.partial/`` (:mod:`~lazyflow.runtime.core.resume`): ``resume``
    continues an unfinished run of the same settings, ``force`` overwrites existing output (without either,
    existing output is refused).  ``note`` hears what the run remarks on (an interrupt, a resumed run, a grid
    tuned for another integrator)."""
    from ..core.distributed import launched_by_torchrun, ranks_of
    from ..core.grid_choice import choose_grid
    from ..core.sampler import resolve_device

    out, opts = output_path(out), _file_options(options)
    device = resolve_device(opts.device)
    ranks = ranks_of(launched_by_torchrun(), device)
    _check_run(num_samples, force, resume, shards, ranks)
    found = model_kind_for(model, kind)
    target = _target(found, out, opts.schedule, diffusion_scale)
    loaded = load_model(model, kind=kind, device=device, num_samples=num_samples, source=source,
                        source_params=source_params, prediction=prediction, **(model_options or {}))
    target = loaded.source if target is None else target
    data_shape = _data_shape(shape, loaded)
    check_format(out, data_shape)
    choice = choose_grid(opts.grid, opts.steps, target=target, integrator=opts.integrator,
                         scale_given=diffusion_scale is not None)
    for line in choice.notes:
        note(line)
    run = _prepared(loaded, opts, choice, num_samples, data_shape, device, ranks)
    run.check_memory(kept=num_samples if ranks.rank == 0 else sum(map(len, run.chunks)))   # rank 0 gathers all
    check_disk(out.parent, 2 * num_samples * math.prod(data_shape) * run.dtype.itemsize)
    settings = _settings(model, found, model_options, loaded, run, opts, num_samples=num_samples, shards=shards)
    outputs = output_files(out, ranks=ranks, shards=shards, images=loaded.decode_images is not None)
    work = _open_work(out, outputs, settings, ranks, force=force, resume=resume)
    written = _finish(run, work, out, num_samples=num_samples, data_shape=data_shape, shards=shards, note=note)
    if not ranks.single:
        import torch.distributed as dist

        dist.destroy_process_group()
    return SampleRun(written=written, data_shape=data_shape, schedule=run.target.describe(), steps=choice.steps,
                     integrator=str(opts.integrator), note=loaded.note, images=_decoded(loaded, written),
                     decoder=loaded.decoder)
