"""Sampler overhead, measured: the time of a whole run beyond the same number of bare model calls, as a
ratio, for every integrator family and beside a plain hand-written Euler loop and diffusers'
FlowMatchEuler loop on the same model, in one process.

Every runner of one (model, batch) cell is warmed up once (compilation and capture excluded), then all
of them run in turn ``repeats`` times (alternating, so that drift hits all alike); each reports the
median.  overhead = median(run) / median(bare calls) - 1, where the bare loop makes the run's number
of network calls on a fixed input.  The module returns data; :func:`format_overhead` makes the table.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...errors import LazyflowError
from ..core.integrators import INTEGRATORS
from ..integrations.flow_convention import time_of_timestep, velocity_of_output
from ..models.embedded import VelocityMLP

__all__ = ["ConvNet", "FAMILIES", "DATA_FAMILIES", "MODELS", "overhead_bench", "measure_overhead", "format_overhead"]


class ConvNet(nn.Module):
    """A small convolutional velocity network on (3, 32, 32) with a time embedding (for timing only)."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.inp = nn.Conv2d(3, channels, 3, padding=1)
        self.time = nn.Linear(1, channels)
        self.blocks = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in range(4)])
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        self.data_shape = (3, 32, 32)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.time(t.reshape(-1, 1).to(x.dtype))[:, :, None, None]
        for block in self.blocks:
            h = h + torch.nn.functional.silu(block(h))
        return self.out(h)


#: the integrator families measured: label -> (schedule, integrator)
FAMILIES = {
    "one-stage ODE": ("vp", "euler"),
    "one-stage SDE": ("pointmass", "euler"),
    "two-stage": ("pointmass", "exp-midpoint"),
    "multistep": ("vp", "multistep"),
    "multistep-pc": ("pointmass", "multistep-pc"),
}
#: the data frames measured: label -> (schedule, integrator, statistics kind); the statistics are a
#: zero mean and unit variances of the model's shape (the work per step does not depend on their values)
DATA_FAMILIES = {
    "data frame per channel": ("linear", "data-multistep-pc", "channel"),
    "data frame per element": ("linear", "data-multistep-pc", "diag"),
}


def _transformer(device: torch.device) -> tuple[nn.Module, str]:
    """SiT-XL/2 (28 blocks, width 1152, 16 heads, 256 tokens of 4x32x32 latents) in bf16 on a GPU; on the
    CPU the same architecture at width 128, 2 blocks, 2 heads (so that a batch finishes in a minute)."""
    from ..models.adapters import from_sit
    from ..models.sit import build_sit

    if device.type == "cuda":
        net, label = build_sit("sit-xl/2", learn_sigma=False).to(device, torch.bfloat16), "SiT-XL/2 bf16"
    else:
        net, label = build_sit("sit-xl/2", learn_sigma=False, hidden_size=128, depth=2, num_heads=2), \
            "SiT/2 w128 d2"
    model = from_sit(net.eval())
    model.data_shape = (4, 32, 32)
    return model, label


MODELS = ("mlp", "convnet", "sit")


def _models(device: torch.device, names: list[str]) -> dict[str, tuple[nn.Module, str]]:
    """name -> (model, label); the transformer takes class labels ``y``."""
    from ...errors import LazyflowError

    out = {}
    for name in names:
        if name == "mlp":
            out[name] = (VelocityMLP().to(device).eval(), "digits MLP (1x8x8)")
        elif name == "convnet":
            out[name] = (ConvNet().to(device).eval(), "ConvNet (3x32x32)")
        elif name == "sit":
            out[name] = _transformer(device)
        else:
            raise LazyflowError(f"unknown model {name!r} for bench-overhead; use {', '.join(MODELS)}")
    return out


@dataclass
class _Runner:
    label: str
    fn: Callable[[], object]
    calls: int          # network calls per run
    times: list


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_euler(model, shape, steps, device, dtype, kwargs) -> Callable[[], torch.Tensor]:
    """The floor of a sampler: x += h v(x, t) from x_0 ~ N(0, I) on the linear schedule."""
    def run():
        x = torch.randn(shape, device=device, dtype=dtype)
        h = 1.0 / steps
        for k in range(steps):
            t = torch.full((shape[0],), k * h, device=device, dtype=dtype)
            x = x + h * model(x, t, **kwargs)
        return x
    return run


def _diffusers_euler(model, shape, steps, device, dtype, kwargs) -> Callable[[], torch.Tensor] | None:
    """diffusers' FlowMatchEulerDiscreteScheduler loop on the same model (in diffusers' convention)."""
    try:
        from diffusers import FlowMatchEulerDiscreteScheduler
    except ImportError:
        return None
    scheduler = FlowMatchEulerDiscreteScheduler()

    def run():
        scheduler.set_timesteps(num_inference_steps=steps, device=device)
        x = torch.randn(shape, device=device, dtype=dtype)
        for timestep in scheduler.timesteps:
            t = time_of_timestep(timestep, scheduler.config.num_train_timesteps).to(dtype).expand(shape[0])
            x = scheduler.step(velocity_of_output(model(x, t, **kwargs)), timestep, x, return_dict=False)[0]
        return x
    return run


def overhead_bench(device: str | None = None, models: tuple[str, ...] = ("mlp", "convnet", "sit"),
                   batches: tuple[int, ...] = (8, 64, 256), steps: int = 16, repeats: int = 5,
                   modes: tuple[str, ...] = ("eager", "capture"), log: Callable[[str], None] = print) -> dict:
    """Rows (model, batch, runner) with median seconds per run and overhead against bare calls.
    The transformer runs at batches 8 and 64 only; ``capture`` rows need CUDA, ``compile`` rows cost
    the compilation once (not timed)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for name, (model, label) in _models(dev, list(models)).items():
        for batch in batches:
            if name == "sit" and batch > 64:
                continue
            runners = _cell_runners(model, name, batch, steps, modes, dev)
            _time_in_turn(runners, repeats, dev)
            cell = _cell_rows(label, batch, runners)
            rows.extend(cell)
            log(f"  {label} batch {batch}: " + ", ".join(f"{r['runner'].split(' (')[0]} {r['overhead']:+.1%}"
                                                          for r in cell[1:]))
    return {"device": _device_name(dev), "steps": steps, "repeats": repeats, "rows": rows,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def measure_overhead(device: str | None = None, *, models: tuple[str, ...], batches: tuple[int, ...], steps: int,
                     repeats: int, modes: tuple[str, ...], log: Callable[[str], None] = print) -> dict:
    """:func:`overhead_bench` after checking its settings as ``lazyflow bench-overhead`` takes them (the
    device, default cuda when available; modes; at least 5 repeats, so that the median is a measurement)."""
    from ..core.sampler import resolve_device

    dev = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unknown = set(modes) - {"eager", "compile", "capture"}
    if unknown:
        raise LazyflowError(f"--modes: unknown {sorted(unknown)}; use eager, compile, capture")
    if repeats < 5:
        raise LazyflowError(f"--repeats must be at least 5 (the median of fewer runs is not a measurement), got {repeats}")
    return overhead_bench(str(dev), models=models, batches=batches, steps=steps, repeats=repeats, modes=modes, log=log)


def _cell_runners(model: nn.Module, name: str, batch: int, steps: int, modes: tuple[str, ...],
                  dev: torch.device) -> list[_Runner]:
    """The runners of one (model, batch) cell, each making ``steps`` network calls: the bare calls first
    (the base of every overhead), the plain Euler loop, diffusers' loop when installed, then lazyflow's
    families in each mode."""
    dtype = next(model.parameters()).dtype
    shape = (batch, *model.data_shape)
    kwargs = {"y": torch.arange(batch, device=dev) % 1000} if name == "sit" else {}
    x = torch.randn(shape, device=dev, dtype=dtype)
    t = torch.full((batch,), 0.5, device=dev, dtype=dtype)
    runners = [_Runner("bare model calls", _bare_calls(model, x, t, kwargs, steps), steps, []),
               _Runner("plain Euler loop", _plain_euler(model, shape, steps, dev, dtype, kwargs), steps, [])]
    diffusers_run = _diffusers_euler(model, shape, steps, dev, dtype, kwargs)
    if diffusers_run is not None:
        runners.append(_Runner("diffusers FlowMatchEuler", diffusers_run, steps, []))
    return runners + _lazyflow_runners(model, shape, steps, modes, dev, kwargs)


def _bare_calls(model: nn.Module, x: torch.Tensor, t: torch.Tensor, kwargs: dict, calls: int) -> Callable[[], None]:
    """The floor of any run: ``calls`` model calls v(x, t) on a fixed input, nothing else."""
    def run():
        for _ in range(calls):
            model(x, t, **kwargs)
    return run


def _lazyflow_runners(model: nn.Module, shape: tuple[int, ...], steps: int, modes: tuple[str, ...],
                      dev: torch.device, kwargs: dict) -> list[_Runner]:
    """One :func:`sample` runner per (family of :data:`FAMILIES`, mode) at ``steps`` network calls (its
    step count from the integrator's steps_for_nfe); ``capture`` only on CUDA."""
    from ..core.sampler import sample

    runners = []
    for family, (schedule, integrator) in FAMILIES.items():
        for mode in modes:
            if mode == "capture" and dev.type != "cuda":
                continue
            options = {"compile": mode == "compile", "capture": mode == "capture"}

            def run(schedule=schedule, integrator=integrator, options=options):
                return sample(model, shape, schedule=schedule, integrator=integrator,
                              steps=INTEGRATORS[integrator].steps_for_nfe(steps), device=dev,
                              model_kwargs=kwargs, **options)
            runners.append(_Runner(f"lazyflow {family} ({schedule}/{integrator}) {mode}", run, steps, []))
    return runners + _data_frame_runners(model, shape, steps, dev, kwargs)


def _data_frame_runners(model: nn.Module, shape: tuple[int, ...], steps: int, dev: torch.device,
                        kwargs: dict) -> list[_Runner]:
    """One eager :func:`sample` runner per data frame of :data:`DATA_FAMILIES` at ``steps`` network calls."""
    from ..core.data_stats import DataStats
    from ..core.sampler import sample

    runners = []
    for family, (schedule, integrator, kind) in DATA_FAMILIES.items():
        data = tuple(shape[1:])
        var = torch.ones((data[0], *[1] * (len(data) - 1)) if kind == "channel" else data, dtype=torch.float64)
        stats = DataStats(kind, torch.zeros(data, dtype=torch.float64), var)

        def run(schedule=schedule, integrator=integrator, stats=stats):
            return sample(model, shape, schedule=schedule, integrator=integrator, data_stats=stats, device=dev,
                          steps=INTEGRATORS[integrator].steps_for_nfe(steps), model_kwargs=kwargs)
        runners.append(_Runner(f"lazyflow {family} ({schedule}/{integrator}) eager", run, steps, []))
    return runners


def _time_in_turn(runners: list[_Runner], repeats: int, dev: torch.device) -> None:
    """Warms every runner up once (compilation, capture, allocator), then times all of them in turn
    ``repeats`` times, appending each run's wall-clock seconds to its ``times``."""
    with torch.no_grad():
        for runner in runners:
            runner.fn()
        _sync(dev)
        for _ in range(repeats):
            for runner in runners:
                start = time.perf_counter()
                runner.fn()
                _sync(dev)
                runner.times.append(time.perf_counter() - start)


def _cell_rows(label: str, batch: int, runners: list[_Runner]) -> list[dict]:
    """One row per runner: overhead = median(run) / median(bare calls) - 1, the bare calls being ``runners[0]``."""
    base = statistics.median(runners[0].times)
    rows = []
    for runner in runners:
        median = statistics.median(runner.times)
        rows.append({"model": label, "batch": batch, "runner": runner.label, "calls": runner.calls,
                     "median_s": median, "overhead": median / base - 1, "spread": _spread(runner.times)})
    return rows


def _spread(times: list[float]) -> float:
    """(max - min) / median of the repeats: how much to trust a cell."""
    median = statistics.median(times)
    return (max(times) - min(times)) / median if median > 0 else 0.0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def format_overhead(result: dict) -> str:
    """One line per (model, batch, runner): median ms per run, ms per network call, overhead, spread."""
    lines = [f"{result['device']}, torch {result['torch']}, {result['date']}; {result['steps']} network calls per run, "
             f"median of {result['repeats']} alternating runs after a warm-up",
             f"{'model':<20}{'batch':>6}  {'runner':<58}{'ms/run':>10}{'ms/call':>9}{'overhead':>10}{'spread':>8}"]
    for row in result["rows"]:
        lines.append(f"{row['model']:<20}{row['batch']:>6}  {row['runner']:<58}{row['median_s'] * 1e3:>10.2f}"
                     f"{row['median_s'] * 1e3 / row['calls']:>9.3f}{row['overhead']:>10.1%}{row['spread']:>8.0%}")
    lines.append("overhead = median run time / median time of the same number of bare model calls - 1 (noise "
                 "drawing, coefficient tables and checks included); spread = (max - min) / median over the repeats")
    return "\n".join(lines)
