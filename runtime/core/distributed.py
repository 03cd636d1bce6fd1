"""Many processes through torch.distributed: each rank samples a contiguous share of the sample
indices; since sample i depends only on (seed, i), the gathered result is the single-process one.

``torchrun --nproc-per-node N -m lazyflow sample ...`` sets the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``); :func:`ranks_of` then joins the default process group (``nccl`` for
CUDA devices, ``gloo`` for the CPU) if nobody has yet.  From Python, ``sample(..., distributed=True)``
uses the default group and ``distributed=group`` a given one.

A rank that dies does not leave the others waiting: a group joined here keeps the launcher's store, and
during a run (:class:`Watchdog`) every rank bumps a counter in it each second and watches the others'.
A peer whose counter stands still for ``LAZYFLOW_PEER_TIMEOUT`` seconds (default 60), or a store that
stops answering (rank 0 or the launcher gone), interrupts the run with a message naming the rank, at
most that long (plus a second) after the death.  Ranks meet in collectives only once the watchdog has
seen every rank finish its batches, so the collectives' own timeout (that of the process group, 10
minutes or the peer timeout if longer) bounds only the exchange of finished samples.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import LazyflowError, SamplingError

__all__ = ["Ranks", "ranks_of", "share", "gather", "gather_batches", "launched_by_torchrun", "local_device", "barrier",
           "agree", "Watchdog", "peer_timeout"]


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
            _join(device)
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


#: the store of the default group when :func:`ranks_of` joined it (None otherwise)
_STORE: list[Any] = [None]


def peer_timeout() -> float:
    """Seconds a rank may stay silent before the others stop (``LAZYFLOW_PEER_TIMEOUT``, default 60)."""
    text = os.environ.get("LAZYFLOW_PEER_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise LazyflowError(f"LAZYFLOW_PEER_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def _join(device: torch.device) -> None:
    """Join the default group from the launcher's environment (nccl on CUDA, gloo on the CPU), keeping
    its store for the :class:`Watchdog`; collectives time out after max(10 min, the peer timeout)."""
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=max(600.0, peer_timeout()))
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world,
                            timeout=timeout, device_id=device if device.type == "cuda" else None)
    _STORE[0] = store


class Watchdog:
    """Liveness of the ranks of a run, through the default group's store: a thread bumps this rank's
    counter every ``beat`` seconds and reads the others'; a rank whose counter stands still for
    ``limit`` seconds (and that has not said it finished), or a store that fails, ends the run:
    :attr:`failure` says why, which the run looks at after every batch, and the main thread gets a
    KeyboardInterrupt at once where SIGINT is handled (not in a process started with SIGINT ignored,
    as a shell's background job is).  One process, or a group not
    joined here: does nothing."""

    def __init__(self, ranks: Ranks, *, beat: float = 1.0, limit: float | None = None) -> None:
        self.ranks, self.beat = ranks, beat
        self.limit = peer_timeout() if limit is None else limit
        self.store = _STORE[0] if not ranks.single and ranks.group is None else None
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done: set[int] = set()

    def _key(self, what: str, rank: int) -> str:
        """A key of this attempt (torchrun restarts a failed group with TORCHELASTIC_RESTART_COUNT + 1)."""
        return f"lazyflow/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{what}/{rank}"

    def __enter__(self) -> "Watchdog":
        if self.store is not None:
            self.store.set(self._key("done", self.ranks.rank), "0")
            self._thread = threading.Thread(target=self._watch, name="lazyflow-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        peers = [r for r in range(self.ranks.world) if r != self.ranks.rank]
        seen = {r: (-1, time.monotonic()) for r in peers}
        while not self._stop.wait(self.beat):
            try:
                self.store.add(self._key("beat", self.ranks.rank), 1)
                for peer in peers:
                    done = self._key("done", peer)
                    if peer in self._done or (self.store.check([done]) and self.store.get(done) == b"1"):
                        self._done.add(peer)
                        continue
                    count, now = self.store.add(self._key("beat", peer), 0), time.monotonic()
                    if count != seen[peer][0]:
                        seen[peer] = (count, now)
                    elif now - seen[peer][1] > self.limit:
                        return self._fail(f"rank {peer} of {self.ranks.world} gave no sign of life for "
                                          f"{self.limit:g} s (it died or hangs)")
                if len(self._done) == len(peers):
                    return   # nobody left to watch (the others wait for this rank through their own watchdogs)
            except Exception as err:   # the store's host (rank 0 or the launcher) is gone
                return self._fail(f"lost the launcher's store ({type(err).__name__}: {str(err).splitlines()[0]}): "
                                  "rank 0 or the launcher died")

    def _fail(self, reason: str) -> None:
        self.failure = reason
        import _thread

        _thread.interrupt_main()

    def finished(self) -> None:
        """Tell the others this rank finished its batches, then wait until every rank has (raising
        :class:`SamplingError` if one dies first)."""
        if self.store is None:
            return
        self.store.set(self._key("done", self.ranks.rank), "1")
        peers = set(range(self.ranks.world)) - {self.ranks.rank}
        try:
            while not peers <= self._done and self.failure is None and self._thread.is_alive():
                time.sleep(0.05)
        except KeyboardInterrupt:
            if self.failure is None:
                raise
        if self.failure is not None:
            raise SamplingError(self.failure)
