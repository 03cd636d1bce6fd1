"""Data statistics of a file of samples or of a registered model's own samples: what ``lazyflow stats`` runs (the
command keeps its flags and the line it prints).  The statistics are :mod:`lazyflow.runtime.core.data_stats`'s,
a model's own samples :mod:`lazyflow.runtime.core.model_stats`'s."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ...errors import LazyflowError
from ..core.data_stats import KINDS, ConditionalStats, DataStats
from ..core.model_stats import stats_from_model
from ..core.call_counter import CallCounter
from ..core.sampler import resolve_device
from .registry import load_model

__all__ = ["check_request", "read_sample_file", "stats_of_samples", "stats_of_model"]


def check_request(out: str | Path, *, force: bool, kind: str, rank: int | None, packed: bool,
                  grid: str | None) -> tuple[Path, tuple[int, int] | None]:
    """The statistics file ``out`` and the token grid (``--grid H,W``), refused in one line before any work: an
    output that is not ``.safetensors`` or exists (without ``force``), an unknown kind, a rank or token grid
    that does not fit the kind."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise LazyflowError(f"--out must end in .safetensors, got {out.name!r}")
    if out.exists() and not force:
        raise LazyflowError(f"--out {out} exists; pass --force to overwrite it")
    if kind not in (*KINDS, "auto"):
        raise LazyflowError(f"unknown --kind {kind!r}; choose one of {', '.join(KINDS)} or auto")
    if (kind == "lowrank") != (rank is not None):
        raise LazyflowError("--kind lowrank needs --rank" if rank is None else "--rank is for --kind lowrank")
    if (packed or grid is not None) and kind not in ("dct", "auto"):
        raise LazyflowError(f"--packed and --grid are for --kind dct or auto, not {kind}")
    if grid is not None and not packed:
        raise LazyflowError("--grid is the token grid of --packed latents")
    return out, _token_grid(grid)


def _token_grid(text: str | None) -> tuple[int, int] | None:
    """--grid H,W as (H, W); anything else is refused in one line."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise LazyflowError(f"--grid must be two positive integers H,W, got {text!r}")
    return int(parts[0]), int(parts[1])


def read_sample_file(path: str | Path) -> torch.Tensor:
    """The samples (n, *data_shape) of a .npy file or a .pt file holding one tensor (loaded weights-only)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".npy", ".pt"):
        raise LazyflowError(f"--from {path}: need a .npy or .pt file of samples (n, *data_shape)")
    if not Path(path).is_file():
        raise LazyflowError(f"--from {path}: no such file")
    try:
        x = np.load(path, allow_pickle=False) if suffix == ".npy" else torch.load(path, weights_only=True,
                                                                                 map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise LazyflowError(f"--from {path}: cannot read it ({str(err).splitlines()[0] if str(err) else err!r})") from None
    x = torch.from_numpy(x) if isinstance(x, np.ndarray) and x.dtype.kind in "biuf" else x
    if not isinstance(x, torch.Tensor) or x.is_complex():
        raise LazyflowError(f"--from {path}: holds {type(x).__name__}, not an array of real numbers")
    return x


def stats_of_samples(path: str | Path, **kind: Any) -> tuple[DataStats, str]:
    """The statistics of the samples in ``path`` (``kind``: :meth:`DataStats.from_samples`' kind, rank, floor,
    packed, grid), and where they come from."""
    return DataStats.from_samples(read_sample_file(path), **kind), f"of {path}"


def stats_of_model(model: str, *, model_kind: str | None, model_options: Mapping[str, Any], n: int, steps: int,
                   integrator: str, device: Any, condition: str, shape: tuple[int, ...] | None = None,
                   **stats: Any) -> tuple[DataStats | ConditionalStats, str]:
    """The statistics of ``n`` of ``model``'s own samples (``steps`` of ``integrator`` in float64, of the data
    shape ``shape`` or the model's own; ``stats``: :func:`~lazyflow.runtime.core.model_stats.stats_from_model`'s
    kind, rank, floor, packed, grid, schedule, seed), and what they cost (network evaluations, calls, seconds)."""
    device = resolve_device(device)
    loaded = load_model(model, kind=model_kind, device=device, num_samples=n, **model_options)
    data_shape = shape or loaded.data_shape
    if data_shape is None:
        raise LazyflowError(f"--from-model {model}: the model does not record its data shape: give --shape")
    if condition == "label" and "y" not in loaded.model_kwargs:
        raise LazyflowError(f"--condition label: {model} has no class labels (a conditional or SiT model "
                            "with --class-labels has)")
    counted, start = CallCounter(loaded.model), time.perf_counter()   # called in the model's own dtype
    found = stats_from_model(counted, (n, *data_shape), steps=steps, integrator=integrator, condition=condition,
                             source=loaded.source, prediction=loaded.prediction, device=device,
                             model_kwargs=loaded.model_kwargs or None, **stats)
    return found, (f"of {model}: {steps} steps of {integrator}, {counted.evaluations} network "
                   f"evaluations in {counted.calls} calls, {time.perf_counter() - start:.1f} s")
