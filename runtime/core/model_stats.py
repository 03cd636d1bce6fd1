"""Data statistics from a model's own samples, where no data is at hand (``lazyflow stats --from-model``).

A conditional model has a Gaussian per condition c (a class label, a prompt, a guidance scale), so its
statistics say how they treat the condition (``condition``):

- ``none``: one :class:`DataStats` of all the samples (the mixture over the conditions);
- ``label``: a :class:`ConditionalStats`, one per value of the per-sample label ``model_kwargs[key]``;
- ``first-call``: the covariance of x_i - E[X | c_i] (within the conditions, pooled), with the mean read
  from each run's first call (``first_call_mean``).  E[X | c_i] is eta_X at t = 0, which the sampler that
  draws the samples already computes at its first call (no extra network call): any conditioning works,
  prompts and guidance included.

:func:`own_samples` draws the samples once; :meth:`OwnSamples.stats` estimates any kind and condition
from them (the bench estimates several from one draw).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ...errors import LazyflowError
from ...predictions import SILENT_AT_SNR_0
from .data_stats import ConditionalStats, DataStats
from .plan import Integrator, StepInfo
from .sampler import sample

__all__ = ["stats_from_model", "own_samples", "OwnSamples", "CONDITIONS", "OPEN_STATS_GRID"]

#: how :func:`stats_from_model` treats a conditional model's condition
CONDITIONS = ("none", "label", "first-call")


@dataclass(frozen=True)
class OwnSamples:
    """The model's own samples ``x`` (n, *data_shape) in float64, each sample's E[X | c_i] (``means``: eta_X at
    the sampler's call at t = 0) and its label (``labels``, None where the model call had no ``key``)."""

    x: torch.Tensor
    means: torch.Tensor
    labels: torch.Tensor | None
    key: str = "y"

    def stats(self, kind: str = "diag", condition: str = "none", *, rank: int | None = None,
              floor: float = 1e-3, packed: bool = False, grid: tuple[int, int] | None = None) -> DataStats | ConditionalStats:
        """The statistics of ``kind`` (``auto``: chosen from the shape and n) treating the condition as
        ``condition`` (:data:`CONDITIONS`); ``packed``, ``grid``: :meth:`DataStats.from_samples`'s."""
        layout = {"kind": kind, "rank": rank, "floor": floor, "packed": packed, "grid": grid}
        if condition == "none":
            return DataStats.from_samples(self.x, **layout)
        if condition == "first-call":
            return DataStats.from_samples(self.x - self.means, **layout).with_first_call_mean()
        if condition == "label":
            if self.labels is None:
                raise LazyflowError(f"statistics per label need one label per sample in model_kwargs[{self.key!r}]")
            return ConditionalStats.from_samples(self.x, self.labels, key=self.key, **layout)
        raise LazyflowError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITIONS)}")


def own_samples(model: Callable[..., torch.Tensor], shape: Sequence[int], *, steps: int = 32,
                integrator: str | Integrator = "multistep-pc", schedule: Any = "linear", seed: int = 0, key: str = "y",
                **options: Any) -> OwnSamples:
    """``shape[0]`` of the model's own samples, drawn in float64 with a deterministic sampler (``integrator`` on
    ``schedule``, ``steps`` steps from t = 0; cost: ``shape[0]`` times its NFE network calls; ``options`` are
    :func:`sample`'s, ``model_kwargs`` among them), with each sample's E[X | c_i] read at the first call.  A noise-
    or score-prediction model (undefined at snr = 0) runs on :data:`OPEN_STATS_GRID` unless ``options`` give a
    grid, its mean read at the first call there (E[X | x] = E[X] + O(snr), snr = e^-6)."""
    if options.get("callback") is not None:
        raise LazyflowError("the model's own samples read the run's callback themselves")
    labels = (options.get("model_kwargs") or {}).get(key)
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.dim() != 1
                               or labels.shape[0] != shape[0] or labels.is_floating_point()):
        labels = None   # not one integer label per sample: no per-label statistics
    means: list[torch.Tensor] = []
    first = 0.0
    if options.get("prediction") in SILENT_AT_SNR_0 and options.get("grid") is None:
        options["grid"], first = OPEN_STATS_GRID, None
    x = sample(model, shape, schedule=schedule, steps=steps, integrator=integrator, seed=seed,
               dtype=options.pop("dtype", torch.float64), callback=lambda info: _first_mean(info, means, first),
               **options)
    if sum(len(m) for m in means) != len(x):
        raise LazyflowError(f"the sampler {getattr(integrator, 'name', integrator)!r} made no call at t = 0, "
                            "where each sample's mean is read; use one that does (multistep-pc)")
    return OwnSamples(x, torch.cat(means).to(x), None if labels is None else labels.cpu(), key)


def stats_from_model(model: Callable[..., torch.Tensor], shape: Sequence[int], *, kind: str = "diag",
                     rank: int | None = None, floor: float = 1e-3, condition: str = "none", packed: bool = False,
                     grid: tuple[int, int] | None = None, **options: Any) -> DataStats | ConditionalStats:
    """Statistics of ``kind`` (``auto``: chosen from the shape and n, :func:`.stats_kind.choose_kind`) of
    ``shape[0]`` of the model's own samples (:func:`own_samples`, which takes the other ``options``), treating
    the condition as ``condition`` (:data:`CONDITIONS`); ``packed``/``grid``: packed latents' token grid (dct)."""
    if condition not in CONDITIONS:
        raise LazyflowError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITIONS)}")
    found = own_samples(model, shape, **options)
    if condition == "label" and found.labels is None:
        raise LazyflowError(f"statistics per label need one integer label per sample in "
                            f"model_kwargs[{found.key!r}] ({shape[0]} samples)")
    return found.stats(kind, condition, rank=rank, floor=floor, packed=packed, grid=grid)


#: where a noise- or score-prediction model's own samples start (log snr -6 to 8; their grid for any schedule)
OPEN_STATS_GRID = "logsnr-open:-6,8"


def _first_mean(info: StepInfo, means: list[torch.Tensor], at: float | None = 0.0) -> None:
    """Keep eta_X at the first step, at t = ``at`` (None: wherever the grid starts): E[X | c] of each sample."""
    if info.step == 0 and (at is None or info.t == at):
        means.append(info.eta_x.detach().to(torch.float64).cpu())
