"""The data frames' own work per step at the latent shapes of large image models (``lazyflow bench-overhead
--frames``), against the cost of one call of a model of that size.

A model of SD3's or FLUX's size cannot be called on a CPU in a benchmark's time, so the model here is free
(it returns a fixed tensor) and its cost is a stand-in: 2 * parameters * tokens floating-point operations per
sample (a lower bound: attention left out) at the float32 matmul rate measured in the same run.  For each
(shape, batch, statistics kind) the run of ``data-multistep-pc`` at ``nfe`` calls is timed (the fastest of
``repeats`` after a warm-up: on a shared CPU the other runs measure the neighbours; the coefficient tables are
built once and remembered, so not timed) beside the same run of plain ``multistep-pc``, and

    frame ms/call = (fastest run with the frame - fastest plain run) / nfe
    overhead      = frame ms/call / (stand-in model ms per call)

The memory column is what the frame keeps beside the state: its per-direction coefficient tables, its
statistics and (dct) the two DCT matrices, for the run's steps in the run's dtype.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..core.data_stats import DataStats
from ..core.grids import make_grid
from ..core.integrators import INTEGRATORS, build_plan
from ..core.sampler import sample
from ..core.schedule import load_schedule

__all__ = ["FRAME_SHAPES", "frame_overhead", "format_frame_overhead"]

#: label -> (data shape, token grid of packed latents or None, parameters, tokens per call) of the model whose
#: call stands in: SiT-XL/2 (675M, 256 tokens of a 256 px image), SD3-medium (2B, 4096 image tokens of a
#: 1024 px image), FLUX.1 (12B, 4096 image tokens of a 1024 px image; text tokens left out)
FRAME_SHAPES = {
    "SiT-XL/2 4x32x32": ((4, 32, 32), None, 675e6, 256),
    "SD3 16x128x128": ((16, 128, 128), None, 2.0e9, 4096),
    "FLUX packed (4096, 64)": ((4096, 64), (64, 64), 12e9, 4096),
}
KINDS = ("diag", "dct", "lowrank")


def _stats(kind: str, shape: tuple[int, ...], grid, rank: int) -> DataStats:
    """Statistics of ``kind`` with zero mean and unit variances (the work does not depend on the values);
    lowrank's basis: ``rank`` standard basis vectors (orthonormal, as costly as any)."""
    zeros, ones = torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)
    if kind == "lowrank":
        d = zeros.numel()
        basis = torch.zeros(d, rank, dtype=torch.float64)
        basis[torch.arange(rank) * (d // rank), torch.arange(rank)] = 1.0
        return DataStats("lowrank", zeros, torch.ones(rank, dtype=torch.float64), basis, ones)
    return DataStats(kind, zeros, ones, grid=grid if kind == "dct" else None)


def _table_bytes(stats: DataStats, steps: int, dtype: torch.dtype) -> int:
    """Bytes the data frame's plan holds: its tables, its statistics and (dct) the DCT matrices."""
    linear = load_schedule("linear")
    plan = build_plan(linear, linear, make_grid(linear, linear, steps), integrator="data-multistep-pc",
                      final_step="euler", prediction="velocity", device="cpu", dtype=dtype, data_stats=stats)
    c = plan.coefficients
    tensors = [c.propagator, c.gaussian_rate, *c.residual_weights, *(c.corrected_weights or ()), c.directions.mean,
               c.directions.var]
    tensors += [v for v in (c.directions.basis, c.directions.rest) if v is not None]
    extra = 0
    if stats.kind == "dct":
        h, w = c.directions.layout.plane
        extra = (h * h + w * w) * torch.empty((), dtype=dtype).element_size()
    return sum(v.numel() * v.element_size() for v in tensors) + extra


def _matmul_rate() -> float:
    """float32 multiply-add rate of this machine, FLOP/s (2 n^3 per n x n product, fastest of 5)."""
    a = torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / best


def _fastest_run(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs of ``fn`` after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def frame_overhead(batches: tuple[int, ...] = (1, 4), nfe: int = 4, repeats: int = 5, rank: int = 64,
                   kinds: tuple[str, ...] = KINDS, threads: int | None = 1, log: Callable[[str], None] = print) -> dict:
    """Rows (shape, batch, kind): frame ms per call, the stand-in model's ms per call, overhead, memory; on
    ``threads`` torch threads (default 1: on a shared CPU a parallel matmul waits for its slowest thread, and
    the stand-in's rate is measured on the same threads; None: as set)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _frame_rows(batches, nfe, repeats, rank, kinds, log)
    finally:
        torch.set_num_threads(previous)


def _frame_rows(batches: tuple[int, ...], nfe: int, repeats: int, rank: int, kinds: tuple[str, ...],
                log: Callable[[str], None]) -> dict:
    rate, rows = _matmul_rate(), []
    steps = INTEGRATORS["data-multistep-pc"].steps_for_nfe(nfe)
    for label, (shape, grid, params, tokens) in FRAME_SHAPES.items():
        for batch in batches:
            free = torch.zeros((batch, *shape))
            model = lambda x, t: free   # noqa: E731 - the model's cost is the stand-in's, not measured
            plain = _fastest_run(lambda: sample(model, (batch, *shape), integrator="multistep-pc", steps=nfe,
                                               dtype=torch.float32), repeats)
            model_ms = 2 * params * tokens * batch / rate * 1e3
            for kind in kinds:
                stats = _stats(kind, shape, grid, rank)
                run = _fastest_run(lambda: sample(model, (batch, *shape), integrator="data-multistep-pc", steps=steps,
                                                 data_stats=stats, dtype=torch.float32), repeats)
                frame_ms = (run - plain) / nfe * 1e3
                rows.append({"shape": label, "batch": batch, "kind": kind + (f" {rank}" if kind == "lowrank" else ""),
                             "frame_ms": frame_ms, "plain_ms": plain / nfe * 1e3, "model_ms": model_ms,
                             "overhead": frame_ms / model_ms, "table_mb": _table_bytes(stats, steps, torch.float32) / 2**20,
                             "state_mb": free.numel() * 4 / 2**20})
                log(f"  {label} batch {batch} {rows[-1]['kind']}: {frame_ms:.2f} ms/call, {rows[-1]['overhead']:.2%}")
    return {"rate_gflops": rate / 1e9, "nfe": nfe, "steps": steps, "repeats": repeats, "rows": rows,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def format_frame_overhead(result: dict) -> str:
    """One line per (shape, batch, kind)."""
    lines = [f"data-multistep-pc at {result['nfe']} NFE ({result['steps']} steps), float32, CPU at "
             f"{result['rate_gflops']:.0f} GFLOP/s (float32 matmul), {result['threads']} torch threads, torch "
             f"{result['torch']}, {result['date']}; fastest of {result['repeats']}",
             f"{'shape':<24}{'batch':>6}  {'kind':<12}{'frame ms/call':>14}{'plain ms/call':>14}{'model ms/call':>14}"
             f"{'overhead':>10}{'tables MB':>11}{'state MB':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['shape']:<24}{r['batch']:>6}  {r['kind']:<12}{r['frame_ms']:>14.2f}{r['plain_ms']:>14.2f}"
                     f"{r['model_ms']:>14.0f}{r['overhead']:>10.2%}{r['table_mb']:>11.1f}{r['state_mb']:>10.1f}")
    lines.append("frame ms/call: the data frame's time per call beyond plain multistep-pc's (model free); model "
                 "ms/call: 2 * parameters * tokens FLOP per sample at the measured matmul rate (a stand-in; "
                 "attention left out); overhead = frame / model; tables: what the frame keeps for the run")
    return "\n".join(lines)
