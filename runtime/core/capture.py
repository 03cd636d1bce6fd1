"""Whole-loop capture: the whole sampling loop (noise draws, model calls, affine updates) recorded once
as a CUDA graph and replayed for every chunk, so that a small model pays no per-step launch overhead.

The loop qualifies because it has no host synchronisation and no branch on tensor values: the
coefficient tables are built before it, the noise is a pure function of device-resident keys
(:class:`~lazyflow.runtime.core.noise.CounterNormal`), and the finite checks are device flags read after
it.  A capture holds static buffers (the start state, the noise keys, the per-sample conditioning);
each chunk copies its values into them and replays.  Captures are cached per (model, plan, chunk
shape, dtype, device), so repeated ``sample(..., capture=True)`` calls with the same settings replay
without recapturing; the first call pays two warm-up runs and the capture.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch

from ...errors import LazyflowError

__all__ = ["Captured", "captured_loop", "clear_captures", "Rerun"]

_CACHE: "OrderedDict[tuple, Captured]" = OrderedDict()
_CACHE_SIZE = 8


class _CudaGraph:
    """Record ``fn`` once as a CUDA graph after warm-up runs on a side stream; replay on demand."""

    def __init__(self, fn: Callable[[], Any], device: torch.device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):      # warm-up: lazy initialisation and autotuning happen outside the graph
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn()

    def replay(self) -> Any:
        self.graph.replay()
        return self.output


class Rerun:
    """The same interface without a graph: rerun ``fn`` on the static buffers (tests the buffer logic
    on any device)."""

    def __init__(self, fn: Callable[[], Any], device: torch.device):
        self.fn = fn

    def replay(self) -> Any:
        return self.fn()


class Captured:
    """A recorded loop over static buffers; :meth:`__call__` runs one chunk through it."""

    def __init__(self, run: Callable[..., Any], x: torch.Tensor, rows: torch.Tensor, first: torch.Tensor | None,
                 kwargs: dict[str, Any], recorder: type = _CudaGraph):
        self.x, self.rows = x.clone(), rows.clone()
        self.first = None if first is None else first.clone()
        self.kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        self.recorder = recorder(lambda: run(self.x, self.rows, self.first, self.kwargs), x.device)

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, first: torch.Tensor | None,
                 kwargs: dict[str, Any]) -> Any:
        self.x.copy_(x)
        self.rows.copy_(rows)
        if first is not None:
            self.first.copy_(first)
        for key, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                self.kwargs[key].copy_(value)
        return self.recorder.replay()


def _signature(kwargs: dict[str, Any]) -> tuple:
    """Shapes and dtypes of tensor arguments, values of the others (a capture is valid for one of each)."""
    return tuple(sorted((k, (tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else repr(v))
                        for k, v in kwargs.items()))


def captured_loop(key: tuple, run: Callable[..., Any], x: torch.Tensor, rows: torch.Tensor,
                  first: torch.Tensor | None, kwargs: dict[str, Any], *, recorder: type | None = None) -> Any:
    """Run one chunk through the capture cached under ``key`` (plus the buffers' shapes), recording it
    first if needed.  ``run(x, rows, first, kwargs)`` is the loop over the static buffers."""
    if recorder is None:
        if x.device.type != "cuda":
            raise LazyflowError(f"capture records the sampling loop as a CUDA graph: it needs a CUDA device, not "
                                f"{str(x.device)!r}")
        recorder = _CudaGraph
    full = (key, tuple(x.shape), x.dtype, str(x.device), first is not None, _signature(kwargs), recorder)
    entry = _CACHE.get(full)
    if entry is None:
        entry = Captured(run, x, rows, first, kwargs, recorder)
        _CACHE[full] = entry
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(full)
    return entry(x, rows, first, kwargs)


def clear_captures() -> None:
    """Forget every recorded loop (frees their static buffers and graph memory)."""
    _CACHE.clear()
