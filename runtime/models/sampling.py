"""A registered model sampled into a file: what ``lazyflow sample`` runs.  The model comes from the
registry (:mod:`lazyflow.runtime.models.registry`), the samples go to the file as their batches finish
(:mod:`lazyflow.runtime.core.output`, also under torchrun), and a model that decodes its samples into
images (a SiT with a VAE) writes them beside the file as ``.png``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ...errors import LazyflowError
from ..core.gridfile import TunedGrid, load_grid_file
from ..core.output import Written, output_path, read_samples, write_batches
from .kind import LoadedModel
from .registry import load_model, model_kind_for

__all__ = ["SampleRun", "sample_to_file", "DEFAULT_STEPS"]

#: steps of a run that neither asks for a number nor uses a tuned grid
DEFAULT_STEPS = 8


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
    if not (isinstance(grid, TunedGrid) or (isinstance(grid, str) and grid.endswith(".json"))):
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


def sample_to_file(model: str, out: str | Path, *, kind: str | None = None,
                   model_options: Mapping[str, Any] | None = None, num_samples: int = 64, schedule: Any = "pointmass",
                   diffusion_scale: float | None = None, source: Any = None,
                   source_params: dict[str, float] | None = None, prediction: str | None = None,
                   shape: tuple[int, ...] | None = None, data_stats: str | Path | None = None,
                   steps: int | None = None, integrator: str = "euler",
                   final_step: str | None = None, grid: Any = "uniform", seed: int = 0, batch_size: int | None = None,
                   device: Any = None, compile: bool = False, capture: bool = False, shards: bool = False,
                   note: Callable[[str], None] = _silent) -> SampleRun:
    """Sample ``num_samples`` of ``model`` (a name or a file of ``kind``; ``model_options`` go to its
    loader) in ``schedule`` (at ``diffusion_scale``) and write them to ``out`` as they finish; under
    torchrun every rank samples its share (``shards``: each writes its own file).  ``source`` and
    ``prediction`` default to the model's own, ``shape`` to its data shape, ``steps`` to a tuned grid
    file's or 8; ``data_stats``: a statistics file (:class:`~lazyflow.runtime.core.data_stats.DataStats`) for
    the data-frame integrators; ``note`` hears what the run remarks on (an interrupt, a grid tuned for another integrator)."""
    from ..core.data_stats import DataStats
    from ..core.distributed import launched_by_torchrun, ranks_of
    from ..core.sampler import resolve_device, sample_batches
    from ..core.schedule import load_schedule

    out = output_path(out)
    if num_samples < 1:
        raise LazyflowError(f"--num-samples must be >= 1, got {num_samples}")
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
    grid, target, steps = _tuned(grid, target, steps, integrator, diffusion_scale is not None, note)
    steps = DEFAULT_STEPS if steps is None else steps
    ranks = ranks_of(launched_by_torchrun(), device)
    if shards and ranks.single:
        raise LazyflowError("--shards is for runs under torchrun (several processes); one process writes --out")
    stats = None if data_stats is None else DataStats.load(data_stats)
    batches = sample_batches(loaded.model, (num_samples, *data_shape), schedule=target, source=loaded.source,
                             steps=steps, integrator=integrator, final_step=final_step, grid=grid, data_stats=stats,
                             prediction=loaded.prediction, seed=seed, batch_size=batch_size, device=device,
                             compile=compile, capture=capture, model_kwargs=loaded.model_kwargs or None,
                             distributed=not ranks.single, progress=ranks.rank == 0 and num_samples * steps > 2000)
    written = write_batches(batches, out, num_samples=num_samples, data_shape=data_shape, ranks=ranks, shards=shards,
                            device=device, note=note)
    if not ranks.single:
        import torch.distributed as dist

        dist.destroy_process_group()
    return SampleRun(written=written, data_shape=data_shape, schedule=target.describe(), steps=steps,
                     integrator=integrator, note=loaded.note, images=_decoded(loaded, written), decoder=loaded.decoder)
