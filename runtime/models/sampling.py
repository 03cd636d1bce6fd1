"""A registered model sampled into a file: what ``lazyflow sample`` runs.  The model comes from the
registry (:mod:`lazyflow.runtime.models.registry`), every check is made before sampling, each batch is
kept in ``OUT.partial/`` as it finishes (:mod:`lazyflow.runtime.core.resume`: ``resume`` continues a
killed run), the output is written from the batches at the end (:mod:`lazyflow.runtime.core.output`,
also under torchrun), and a model that decodes its samples into images (a SiT with a VAE) writes them
beside the file as ``.png``."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ...errors import LazyflowError, SamplingError
from ..core import defaults
from ..core.gridfile import is_grid_file, load_grid_file
from ..core.limits import check_disk
from ..core.output import (Written, assemble, check_format, keep_batches, kept, output_files, output_path,
                           read_samples)
from ..core.resume import WorkDir, check_outputs, clear_leftovers, discard, file_hash
from .kind import LoadedModel
from .registry import load_model, model_kind_for

__all__ = ["SampleRun", "sample_to_file", "DEFAULT_STEPS"]

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


def _tuned(grid: Any, target: Any, steps: int | None, integrator: str, scale_given: bool,
           note: Callable[[str], None]) -> tuple[Any, Any, int | None]:
    """A tuned grid file brings its steps (unless ``steps`` is given) and the diffusion scale it was tuned
    at (unless ``scale_given``; :meth:`TunedGrid.schedule_for`); other grids pass through."""
    if not is_grid_file(grid):
        return grid, target, steps
    tuned = load_grid_file(grid)
    target = tuned.schedule_for(target, scale_given=scale_given)
    if tuned.integrator and tuned.integrator != integrator:
        note(f"note: {tuned.describe()} was tuned for {tuned.integrator}, not {integrator}")
    return tuned, target, tuned.steps if steps is None else steps


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
    """What makes a schedule's numbers: its kernel file's hash, parameters and diffusion scale."""
    kernel = Path(getattr(schedule.kernel, "__file__", "") or "")
    return {"name": schedule.describe(), "kernel": file_hash(kernel) if kernel.is_file() else schedule.kernel.__name__,
            "params": [list(p) for p in schedule.params], "diffusion_scale": schedule.diffusion_scale}


def _settings(model: str, found: Any, model_options: Mapping[str, Any] | None, loaded: LoadedModel, target: Any,
              run: Any, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that changes the samples, for the manifest of ``OUT.partial/`` (:mod:`..core.resume`)."""
    from ... import __version__

    options = json.loads(json.dumps(dict(model_options or {}), sort_keys=True, default=str))
    stats = knobs["data_stats"]
    return {"lazyflow": __version__, "model": str(model), "model file": file_hash(model) if Path(model).is_file()
            else None, "model kind": found.name, "model options": options, "source": _schedule_id(loaded.source),
            "prediction": loaded.prediction, "schedule": _schedule_id(target), "integrator": knobs["integrator"],
            "final step": knobs["final_step"], "steps": run.plan.steps,
            "grid times": [float(t) for t in run.plan.times.tolist()],
            "data stats": None if stats is None else file_hash(stats), "data shape": list(knobs["data_shape"]),
            "seed": int(knobs["seed"]), "num samples": knobs["num_samples"], "batch size": knobs["batch_size"],
            "dtype": str(run.dtype).replace("torch.", ""), "device": run.device.type, "compile": knobs["compile"],
            "capture": knobs["capture"], "processes": run.ranks.world, "shards": knobs["shards"]}


def _finish(run: Any, work: WorkDir, out: Path, *, num_samples: int, data_shape: tuple[int, ...], shards: bool,
            note: Callable[[str], None]) -> Written:
    """Run the batches not finished yet (each kept as it finishes), write the output from all of them,
    then remove the work folder (rank 0, once every rank is done)."""
    from dataclasses import replace

    from ..core.distributed import Watchdog, barrier

    pending = [indices for indices in run.chunks if not work.done(indices)]
    if len(pending) < len(run.chunks):
        note(f"resuming: {len(run.chunks) - len(pending)} of {len(run.chunks)} batches were finished"
             + (f" on rank {run.ranks.rank}" if not run.ranks.single else ""))
    watchdog = Watchdog(run.ranks)
    try:
        with watchdog:
            keep_batches(replace(run, chunks=pending).batches(), work, note=note, why=lambda: watchdog.failure)
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


def _prepared(loaded: LoadedModel, target: Any, grid: Any, steps: int, device: Any, ranks: Any,
              knobs: Mapping[str, Any]) -> Any:
    """The sampler's checked run (its plan and this rank's batches), before anything runs."""
    from ..core.data_stats import DataStats
    from ..core.sampler import SamplingRun

    stats = None if knobs["data_stats"] is None else DataStats.load(knobs["data_stats"])
    n = knobs["num_samples"]
    return SamplingRun.prepare(loaded.model, (n, *knobs["data_shape"]), schedule=target, source=loaded.source, steps=steps,
                        integrator=knobs["integrator"], final_step=knobs["final_step"], grid=grid,
                        prediction=loaded.prediction, data_stats=stats, seed=knobs["seed"],
                        batch_size=knobs["batch_size"], device=device, dtype=torch.float32, model_dtype=None,
                        compile=knobs["compile"], model_kwargs=loaded.model_kwargs or None, initial=None,
                        callback=None, progress=ranks.rank == 0 and n * steps > 2000, noise=None,
                        distributed=not ranks.single, capture=knobs["capture"])


def _open_work(out: Path, outputs: list[Path], settings: dict[str, Any], ranks: Any, *, force: bool,
               resume: bool) -> WorkDir:
    """Every rank's verdict on the outputs and the work folder made one (all start or all refuse), then
    this rank's part of ``OUT.partial/`` (cleared first with ``force``)."""
    from ..core.distributed import agree, barrier

    agree(ranks, check_outputs(out, outputs, settings, force=force, resume=resume))
    if ranks.rank == 0:
        clear_leftovers(out, force=force)
    barrier(ranks)
    return WorkDir.open(out, settings, rank=ranks.rank, world=ranks.world)


def sample_to_file(model: str, out: str | Path, *, kind: str | None = None,
                   model_options: Mapping[str, Any] | None = None, num_samples: int = 64,
                   schedule: Any = defaults.SCHEDULE, diffusion_scale: float | None = None, source: Any = None,
                   source_params: dict[str, float] | None = None, prediction: str | None = None,
                   shape: tuple[int, ...] | None = None, data_stats: str | Path | None = None,
                   steps: int | None = None, integrator: str = defaults.INTEGRATOR, final_step: str | None = None,
                   grid: Any = defaults.GRID, seed: int = 0, batch_size: int | None = None,
                   device: Any = None, compile: bool = False, capture: bool = False, shards: bool = False,
                   force: bool = False, resume: bool = False, note: Callable[[str], None] = _silent) -> SampleRun:
    """Sample ``num_samples`` of ``model`` (a name or a file of ``kind``; ``model_options`` go to its
    loader) in ``schedule`` (at ``diffusion_scale``) and write them to ``out``; under torchrun every rank
    samples its share (``shards``: each writes its own file).  ``source`` and ``prediction`` default to the
    model's own, ``shape`` to its data shape, ``steps`` to a tuned grid file's or 8; ``data_stats``: a
    statistics file (:class:`~lazyflow.runtime.core.data_stats.DataStats`) for the data-frame integrators.
    Every check (the output's format and folder, existing files) is made before sampling.  Finished
    batches are kept in ``OUT.partial/`` (:mod:`~lazyflow.runtime.core.resume`): ``resume`` continues an
    unfinished run of the same settings, ``force`` overwrites existing output (without either, existing
    output is refused).  ``note`` hears what the run remarks on (an interrupt, a resumed run, a grid tuned
    for another integrator)."""
    from ..core.distributed import launched_by_torchrun, ranks_of
    from ..core.sampler import resolve_device
    from ..core.schedule import load_schedule

    out = output_path(out)
    if num_samples < 1:
        raise LazyflowError(f"--num-samples must be >= 1, got {num_samples}")
    if force and resume:
        raise LazyflowError("--force starts over and --resume continues: give one of them")
    device = resolve_device(device)
    found = model_kind_for(model, kind)
    if found.latents and out.suffix == ".png":
        raise LazyflowError(f"a {found.name} run writes latents: --out must end in .pt or .npy (with a decoder, "
                            "e.g. --vae, the images go to the same name with .png)")
    target = load_schedule(schedule)
    if diffusion_scale is not None:
        target = target.with_diffusion_scale(diffusion_scale)
    loaded = load_model(model, kind=kind, device=device, num_samples=num_samples, source=source,
                        source_params=source_params, prediction=prediction, **(model_options or {}))
    data_shape = _data_shape(shape, loaded)
    check_format(out, data_shape)
    grid, target, steps = _tuned(grid, target, steps, integrator, diffusion_scale is not None, note)
    steps = DEFAULT_STEPS if steps is None else steps
    ranks = ranks_of(launched_by_torchrun(), device)
    if shards and ranks.single:
        raise LazyflowError("--shards is for runs under torchrun (several processes); one process writes --out")
    if shards and num_samples < ranks.world:
        raise LazyflowError(f"--shards: {num_samples} samples on {ranks.world} processes leave a rank without a "
                            f"shard; ask for at least {ranks.world} samples")
    knobs = dict(integrator=integrator, final_step=final_step, data_stats=data_stats, data_shape=data_shape, seed=seed,
                 num_samples=num_samples, batch_size=batch_size, compile=compile, capture=capture, shards=shards)
    run = _prepared(loaded, target, grid, steps, device, ranks, knobs)
    run.check_memory(kept=num_samples if ranks.rank == 0 else sum(map(len, run.chunks)))   # rank 0 gathers all
    check_disk(out.parent, 2 * num_samples * math.prod(data_shape) * run.dtype.itemsize)
    settings = _settings(model, found, model_options, loaded, target, run, knobs)
    outputs = output_files(out, ranks=ranks, shards=shards, images=loaded.decode_images is not None)
    work = _open_work(out, outputs, settings, ranks, force=force, resume=resume)
    written = _finish(run, work, out, num_samples=num_samples, data_shape=data_shape, shards=shards, note=note)
    if not ranks.single:
        import torch.distributed as dist

        dist.destroy_process_group()
    return SampleRun(written=written, data_shape=data_shape, schedule=target.describe(), steps=steps,
                     integrator=integrator, note=loaded.note, images=_decoded(loaded, written), decoder=loaded.decoder)
