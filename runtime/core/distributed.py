"""Many processes through torch.distributed: each rank samples a contiguous share of the sample
indices; since sample i depends only on (seed, i), the gathered result is the single-process one.

``torchrun --nproc-per-node N -m lazyflow sample ...`` sets the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``); :func:`ranks_of` then joins the default process group (``nccl`` for
CUDA devices, ``gloo`` for the CPU) if nobody has yet.  From Python, ``sample(..., distributed=True)``
uses the default group and ``distributed=group`` a given one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import LazyflowError

__all__ = ["Ranks", "ranks_of", "share", "gather", "gather_batches", "launched_by_torchrun", "local_device", "barrier",
           "agree"]


@dataclass(frozen=True)
class Ranks:
    """This process's place: ``rank`` of ``world`` in ``group`` (None: the default group, or no group)."""
    rank: int = 0
    world: int = 1
    group: Any = None

    @property
    def single(self) -> bool:
        return self.world == 1


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (or any launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """Under a launcher, an index-free CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def ranks_of(distributed: Any, device: torch.device) -> Ranks:
    """``False``: one process.  ``True``: the default group (joined from the launcher's environment if
    needed).  A ``ProcessGroup``: that group."""
    if distributed is False or distributed is None:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_available():
        raise LazyflowError("distributed sampling needs a torch build with torch.distributed")
    if distributed is True:
        if not dist.is_initialized():
            if "MASTER_ADDR" not in os.environ or "RANK" not in os.environ:
                raise LazyflowError("distributed=True needs an initialised process group or a launcher's "
                                    "environment (run under torchrun, or call torch.distributed.init_process_group)")
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        group = None
    else:
        group = distributed
    return Ranks(dist.get_rank(group), dist.get_world_size(group), group)


def share(n: int, ranks: Ranks) -> range:
    """Rank r's contiguous share of range(n): sizes differ by at most one, lower ranks first."""
    base, extra = divmod(n, ranks.world)
    start = ranks.rank * base + min(ranks.rank, extra)
    return range(start, start + base + (ranks.rank < extra))


def gather(x: torch.Tensor, n: int, ranks: Ranks) -> torch.Tensor:
    """Every rank's share concatenated in index order, on every rank (all_gather of equal-size,
    padded pieces; NCCL needs the pieces on the rank's GPU, gloo on the CPU)."""
    if ranks.single:
        return x
    import torch.distributed as dist

    sizes = [len(share(n, Ranks(r, ranks.world))) for r in range(ranks.world)]
    longest = max(sizes)
    backend = dist.get_backend(ranks.group)
    piece = x if backend == "nccl" else x.cpu()
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=piece.device)
    padded[: len(x)] = piece
    pieces = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(pieces, padded, group=ranks.group)
    return torch.cat([p[:size] for p, size in zip(pieces, sizes)]).to(x.device)


def gather_batches(pieces: list[torch.Tensor], n: int, data_shape: tuple[int, ...], ranks: Ranks, *,
                   device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """This rank's finished batches, concatenated (an empty tensor for a rank whose share is empty: more
    ranks than samples), then :func:`gather`ed into all n samples."""
    local = torch.cat(pieces) if pieces else torch.empty((0, *data_shape), device=device, dtype=dtype)
    return gather(local, n, ranks)


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (nothing for one process)."""
    if not ranks.single:
        import torch.distributed as dist

        dist.barrier(group=ranks.group)


def agree(ranks: Ranks, refusal: str | None) -> None:
    """Every rank's verdict on starting, made one: if any rank refuses, all raise its reason (so that no
    rank waits for one that stopped)."""
    if ranks.single:
        if refusal:
            raise LazyflowError(refusal)
        return
    import torch.distributed as dist

    verdicts: list[Any] = [None] * ranks.world
    dist.all_gather_object(verdicts, refusal, group=ranks.group)
    for rank, verdict in enumerate(verdicts):
        if verdict:
            raise LazyflowError(verdict if rank == ranks.rank else f"rank {rank}: {verdict}")
