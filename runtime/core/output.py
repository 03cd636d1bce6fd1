"""Samples into files: ``.npy`` (raw samples), ``.pt`` (a torch tensor) or ``.png`` (an image grid).
Each batch is kept in the work folder ``OUT.partial/`` as it finishes (:mod:`.resume`); the output is
assembled from those batches at the end and written atomically (:mod:`lazyflow.atomic_write`).  Under
torchrun, one file written by rank 0 after gathering every rank's samples, or one shard per rank
(``OUT.rank00002-of-00008.npy``) and an index (``OUT.index.json``) that rank 0 writes."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ...atomic_write import atomic_path, write_text_atomic
from ...errors import LazyflowError, SamplingError
from .distributed import Ranks, barrier, gather_batches, share
from .resume import WorkDir

__all__ = ["tile_images", "save_image_grid", "OUTPUT_SUFFIXES", "Written", "output_path", "shard_path",
           "write_shard_index", "output_files", "check_format", "kept", "keep_batches", "assemble", "read_samples"]

#: raw samples, an image grid, a torch tensor
OUTPUT_SUFFIXES = (".npy", ".png", ".pt")

Batches = Iterable[tuple[range, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class Written:
    """What this process wrote: ``path`` (the samples; None where another rank writes them), ``index``
    (the shard index, rank 0 of a sharded run), ``count`` samples in all from ``processes`` processes and
    ``shards`` files (0: one file)."""

    path: Path | None
    index: Path | None
    count: int
    processes: int
    shards: int = 0


def output_path(out: str | Path) -> Path:
    """``out`` as a path, refused unless it ends in one of :data:`OUTPUT_SUFFIXES`."""
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise LazyflowError(f"--out must end in .npy, .png or .pt, got {out.name!r}")
    return out


def shard_path(out: Path, rank: int, world: int) -> Path:
    """Rank r's shard of ``out``: OUT.rank00002-of-00008.npy (same suffix)."""
    return out.with_name(f"{out.stem}.rank{rank:05d}-of-{world:05d}{out.suffix}")


def write_shard_index(out: Path, n: int, world: int) -> Path:
    """OUT.index.json: each shard's file and the sample indices [start, stop) it holds, in order."""
    shards = []
    for rank in range(world):
        part = share(n, Ranks(rank, world))
        shards.append({"file": shard_path(out, rank, world).name, "start": part.start, "stop": part.stop})
    index = out.with_name(f"{out.stem}.index.json")
    index.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(index, json.dumps({"num_samples": n, "shards": shards}, indent=1) + "\n")


def _save(x: torch.Tensor, out: Path) -> None:
    """Write ``x`` to ``out`` atomically (:func:`.atomic_path`), in the format its suffix names."""
    import numpy as np

    try:
        with atomic_path(out) as partial:
            if out.suffix == ".png":
                save_image_grid(x, partial)
            else:   # through a handle: np.save adds .npy to a name, torch.save records the name in the archive
                with open(partial, "wb") as handle:
                    if out.suffix == ".npy":
                        np.save(handle, x.numpy())
                    else:
                        torch.save(x, handle)
    except OSError as err:
        raise LazyflowError(f"cannot write {out}: {err.strerror or err} (the finished batches stay in "
                            f"{out.name}.partial/: --resume writes it again)") from None


def tile_images(x: torch.Tensor, columns: int | None = None) -> np.ndarray:
    """Samples (n, C, H, W) in [-1, 1] (first channel) tiled into one array in [0, 1], 1-pixel grey borders."""
    import numpy as np

    if x.dim() != 4:
        raise LazyflowError(f"an image grid needs image samples (n, C, H, W), got shape {tuple(x.shape)}")
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), 0.3)
    images = ((x[:, 0].float().clamp(-1, 1) + 1) / 2).cpu().numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = images[i]
    return canvas


def save_image_grid(x: torch.Tensor, path: str | Path, columns: int | None = None, zoom: int = 4) -> None:
    """Write samples (n, C, H, W) in [-1, 1] as a PNG grid, each pixel drawn ``zoom`` x ``zoom``."""
    import numpy as np
    from matplotlib import image

    canvas = tile_images(x, columns)
    image.imsave(path, np.kron(canvas, np.ones((zoom, zoom))), cmap="gray_r", vmin=0, vmax=1, format="png")


def output_files(out: Path, *, ranks: Ranks, shards: bool, images: bool = False) -> list[Path]:
    """Every file a run writes (the same list on every rank): ``out``, or each rank's shard and the
    index; ``images``: also the decoded ``OUT.png`` beside ``out``."""
    files = [out] if not shards else [*(shard_path(out, r, ranks.world) for r in range(ranks.world)),
                                      out.with_name(f"{out.stem}.index.json")]
    return files + ([out.with_suffix(".png")] if images and out.suffix != ".png" else [])


def check_format(out: Path, data_shape: tuple[int, ...]) -> None:
    """Refuse, before sampling, an output format that cannot hold samples of ``data_shape``."""
    if out.suffix == ".png" and len(data_shape) != 3:
        raise LazyflowError(f"--out {out.name}: an image grid needs image samples (C, H, W), these have shape "
                            f"{tuple(data_shape)}: write .npy or .pt")


def kept(work: WorkDir, *, hint: bool = True) -> str:
    """What an unfinished run leaves in its work folder, in words (``hint``: and that --resume continues;
    not said after a failure that a rerun would meet again)."""
    return f"the {work.count()} samples of {len(work.finished)} finished batches are kept in {work.folder}/" + \
        (": run it again with --resume to continue" if hint else "")


def keep_batches(batches: Batches, work: WorkDir, *, why: Callable[[], str | None] = lambda: None) -> None:
    """Keep every batch in ``work`` as it finishes; a failure or an interrupt says what is kept and how
    to continue (raised again with that added: the command line prints it as its one line); ``why``, asked
    after every batch and on an interrupt, gives the reason to stop (a dead rank), raised as a
    :class:`SamplingError`."""
    try:
        for indices, x in batches:
            work.keep(indices, x)
            if why() is not None:
                raise KeyboardInterrupt
    except (LazyflowError, KeyboardInterrupt) as err:
        reason = why() if isinstance(err, KeyboardInterrupt) else None
        if reason is not None:
            raise SamplingError(f"{reason}; {kept(work)}") from None
        if work.finished:
            if isinstance(err, KeyboardInterrupt):
                raise type(err)(f"interrupted; {kept(work)}") from None
            else:
                raise type(err)(f"{err} ({kept(work, hint=False)})") from err
        raise


def _local(work: WorkDir, chunks: list[range], data_shape: tuple[int, ...]) -> torch.Tensor:
    """This process's samples, its batches in index order, from the work folder."""
    if not chunks:
        return torch.empty((0, *data_shape), dtype=torch.float32)
    return torch.cat([work.load(indices) for indices in chunks])


def assemble(work: WorkDir, chunks: list[range], out: Path, *, num_samples: int, data_shape: tuple[int, ...],
             ranks: Ranks, shards: bool, device: torch.device) -> Written:
    """The output from the finished batches ``chunks`` of this rank.  One process: ``out``.  Several with
    ``shards``: each rank its shard, rank 0 the index once every shard is written.  Several without:
    every rank's samples gathered, rank 0 writes ``out``."""
    local = _local(work, chunks, data_shape)
    if ranks.single:
        _save(local, out)
        return Written(path=out, index=None, count=len(local), processes=1)
    if shards:
        _save(local, shard_path(out, ranks.rank, ranks.world))
        barrier(ranks)
        index = write_shard_index(out, num_samples, ranks.world) if ranks.rank == 0 else None
        return Written(path=None, index=index, count=num_samples, processes=ranks.world, shards=ranks.world)
    on = device if device.type == "cuda" else torch.device("cpu")
    x = gather_batches([local.to(on)] if len(local) else [], num_samples, data_shape, ranks, device=on,
                       dtype=torch.float32)
    if ranks.rank == 0:
        _save(x.cpu(), out)
    return Written(path=out if ranks.rank == 0 else None, index=None, count=num_samples, processes=ranks.world)


def read_samples(path: Path) -> torch.Tensor:
    """The samples of a ``.npy`` or ``.pt`` file written here."""
    import numpy as np

    return torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
