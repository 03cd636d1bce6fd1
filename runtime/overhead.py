"""Sampler overhead: time per step beyond the model's own forward pass, as a ratio."""
from __future__ import annotations

import resource
import time

import torch
from torch import nn

from .models import VelocityMLP
from .sampler import sample

__all__ = ["ConvNet", "overhead_table"]


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_pair(first, second, device: torch.device, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` wall times of two functions, measured alternately (so drift hits both)."""
    first(), second()  # warm-up (and compilation)
    _sync(device)
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for index, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            _sync(device)
            best[index] = min(best[index], time.perf_counter() - start)
    return best[0], best[1]


def overhead_table(device: str | None = None, steps: int = 16, batch: int = 64, repeats: int = 5,
                   compile: bool = True) -> str:
    """A table: per model and mode, model time per step, sampler time per step, overhead ratio, peak memory."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    models = {"digits MLP (1x8x8)": VelocityMLP(), "ConvNet (3x32x32)": ConvNet()}
    modes = [False, True] if compile else [False]
    lines = [f"device {dev}; {steps} steps, batch {batch}; best of {repeats}, model and sampler timed alternately",
             f"{'model':<22}{'schedule':<11}{'mode':<10}{'model ms/step':>14}{'sampler ms/step':>16}"
             f"{'extra ms/step':>14}{'overhead':>10}{'peak MB':>9}"]
    for label, model in models.items():
        model = model.to(dev).eval()
        shape = (batch, *model.data_shape)
        x = torch.randn(shape, device=dev)
        t = torch.rand(batch, device=dev)

        def model_only():
            with torch.no_grad():
                for _ in range(steps):
                    model(x, t)

        for schedule in ("linear", "pointmass"):
            for compiled in modes:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)

                def run():
                    sample(model, shape, schedule=schedule, steps=steps, integrator="euler", device=dev, compile=compiled)

                model_time, total = (v / steps for v in _time_pair(model_only, run, dev, repeats))
                peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
                lines.append(f"{label:<22}{schedule:<11}{'compiled' if compiled else 'eager':<10}{model_time * 1e3:>14.3f}"
                             f"{total * 1e3:>16.3f}{(total - model_time) * 1e3:>14.3f}"
                             f"{(total - model_time) / model_time:>10.1%}{peak:>9.0f}")
    lines.append("overhead = (sampler - model) / model, per step, including per-sample noise drawing and table set-up; "
                 "differences below ~3% are timing noise; peak MB: CUDA allocator peak, or process peak RSS on CPU")
    return "\n".join(lines)
