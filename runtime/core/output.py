"""Samples into files as their batches finish: ``.npy`` (raw samples), ``.pt`` (a torch tensor) or ``.png``
(an image grid).  Under torchrun, one file written by rank 0 after gathering every rank's samples, or one
shard per rank (``OUT.rank00002-of-00008.npy``) and an index (``OUT.index.json``) that rank 0 writes."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ...errors import LazyflowError
from .distributed import Ranks, gather_batches, share

__all__ = ["tile_images", "save_image_grid", "OUTPUT_SUFFIXES", "Written", "output_path", "shard_path",
           "write_shard_index", "write_as_they_finish", "write_batches", "read_samples"]

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
    index.write_text(json.dumps({"num_samples": n, "shards": shards}, indent=1) + "\n")
    return index


def _save(x: torch.Tensor, out: Path) -> None:
    """Write ``x`` to ``out`` atomically (a hidden partial file, then a rename)."""
    import numpy as np

    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    if out.suffix == ".npy":
        np.save(partial, x.numpy())
    elif out.suffix == ".pt":
        torch.save(x, partial)
    else:
        save_image_grid(x, partial)
    partial.replace(out)


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


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def write_as_they_finish(batches: Batches, out: Path, *, note: Callable[[str], None] = _stderr) -> int:
    """Write the samples to ``out`` after every finished batch (atomically), so that a run interrupted or
    failing in batch k keeps batches 1..k-1; returns the number of samples written.  A failure names the
    samples kept; an interrupt is told to ``note`` and raised again."""
    finished: list[torch.Tensor] = []
    count = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for _, x in batches:
            finished.append(x)
            count += len(x)
            _save(torch.cat(finished).float().cpu(), out)
    except (LazyflowError, KeyboardInterrupt) as err:
        if count:
            kept = f"kept the {count} samples of the finished batches in {out}"
            if isinstance(err, KeyboardInterrupt):
                note(f"interrupted; {kept}")
            else:
                raise type(err)(f"{err} ({kept})") from err
        raise
    return count


def write_batches(batches: Batches, out: Path, *, num_samples: int, data_shape: tuple[int, ...], ranks: Ranks,
                  shards: bool, device: torch.device, note: Callable[[str], None] = _stderr) -> Written:
    """One process: ``out`` as the batches finish.  Several with ``shards``: each rank its own shard as its
    batches finish, rank 0 the index.  Several without: every rank's samples gathered, rank 0 writes ``out``."""
    if ranks.single:
        return Written(path=out, index=None, count=write_as_they_finish(batches, out, note=note), processes=1)
    if shards:
        write_as_they_finish(batches, shard_path(out, ranks.rank, ranks.world), note=note)
        index = write_shard_index(out, num_samples, ranks.world) if ranks.rank == 0 else None
        return Written(path=None, index=index, count=num_samples, processes=ranks.world, shards=ranks.world)
    x = gather_batches([x for _, x in batches], num_samples, data_shape, ranks, device=device, dtype=torch.float32)
    if ranks.rank == 0:
        write_as_they_finish([(range(num_samples), x)], out, note=note)
    return Written(path=out if ranks.rank == 0 else None, index=None, count=num_samples, processes=ranks.world)


def read_samples(path: Path) -> torch.Tensor:
    """The samples of a ``.npy`` or ``.pt`` file written here."""
    import numpy as np

    return torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
