"""What the bench's data-frame rows and its Gaussian-map baseline are made of: the data's statistics
estimated from :data:`STATS_SAMPLES` samples, never exact moments.

* An exact model (one with ``exact_samples(n, seed)``): 2,000 exact samples, seed :data:`STATS_SEED`
  (distinct from the scoring, floor and baseline seeds).
* Any other model: 2,000 of the model's own samples, ``stats_from_model`` (multistep-pc, 32 steps,
  float64, seed :data:`STATS_SEED`), whose cost in network calls is recorded.

Kinds: ``full`` and ``diag`` for d <= :data:`FULL_STATS_MAX_DIM`, ``diag`` above.  The Gaussian map
(0 NFE, no network call) is mu + Sigma^(1/2) z with the sample mean mu and covariance Sigma of the same
2,000 exact samples and z the bench's start noise: Sigma^(1/2) = V diag(s) V^T from the SVD
(X - mu) / sqrt(n - 1) = U diag(s) V^T, so the map has exactly those moments in expectation over z."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.data_stats import ConditionalStats, DataStats

__all__ = ["BenchStats", "bench_stats", "stats_kinds", "stats_key", "split_key", "stats_file", "gaussian_map", "STATS_SAMPLES", "STATS_SEED",
           "FULL_STATS_MAX_DIM", "STATS_STEPS", "STATS_INTEGRATOR"]

STATS_SAMPLES = 2000
STATS_SEED = 40_000
FULL_STATS_MAX_DIM = 1024
STATS_STEPS = 32
STATS_INTEGRATOR = "multistep-pc"


def stats_kinds(dim: int, samples: int | None = None, data_shape: tuple[int, ...] | None = None) -> tuple[str, ...]:
    """The statistics kinds the bench runs the data-frame integrators with at dimension ``dim``: ``full`` and
    ``diag`` up to :data:`FULL_STATS_MAX_DIM`, ``diag`` above; ``full`` only from at least 2 ``dim`` samples
    where ``samples`` is given (fewer leave most eigenvalues at the floor: on the 784-pixel test bed bn-mlp28,
    per-label full statistics from 200 samples each had 5 to 31 times the path of per-label diag ones); and
    ``dct`` beside them for image-shaped data (``data_shape``: planes of 16 x 16 and more; on the photo-patches
    model, 1 x 32 x 32, the data frames' path at 4 NFE fell from 5.91 with diag to 2.40 with dct)."""
    from ..core.stats_kind import image_shaped

    dct = ("dct",) if data_shape is not None and image_shaped(data_shape) else ()
    if dim > FULL_STATS_MAX_DIM or (samples is not None and samples < 2 * dim):
        return ("diag", *dct)
    return ("full", "diag", *dct)


def stats_file(save: str | Path, key: str) -> Path:
    """Where the statistics ``key`` (:func:`stats_key`) go next to the bench's JSON ``save``:
    ``NAME.stats-KIND.safetensors`` (``NAME.stats-KIND-CONDITION.safetensors`` for a conditional model's)."""
    save = Path(save)
    return save.with_name(f"{save.stem}.stats-{key.replace('|', '-')}.safetensors")


@dataclass(frozen=True)
class BenchStats:
    """One kind of statistics: ``stats``, ``info`` (how they were made and what that cost) and the ``file``
    they were written to (None when the bench had no output path)."""

    stats: DataStats | ConditionalStats
    info: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None


def _exact_stats(model: Any, kinds: tuple[str, ...]) -> tuple[dict[str, BenchStats], torch.Tensor]:
    x = model.exact_samples(STATS_SAMPLES, STATS_SEED)
    info = {"from": "exact samples", "samples": STATS_SAMPLES, "seed": STATS_SEED, "model_calls": 0}
    return {kind: BenchStats(DataStats.from_samples(x, kind=kind), {"kind": kind, **info}) for kind in kinds}, x


def stats_key(kind: str, condition: str = "none") -> str:
    """How a row names its statistics: the kind, and for a conditional model how the condition is treated
    (``full``, ``full|label``, ``diag|first-call``: :data:`~lazyflow.runtime.core.model_stats.CONDITIONS`)."""
    return kind if condition == "none" else f"{kind}|{condition}"


def split_key(key: str) -> tuple[str, str]:
    """(kind, condition) of a statistics key (:func:`stats_key`)."""
    kind, _, condition = key.partition("|")
    return kind, condition or "none"


def _model_stats(model: Callable, shape: tuple[int, ...], keys: tuple[str, ...], samples: int = STATS_SAMPLES,
                 **options: Any) -> dict[str, BenchStats]:
    """The statistics ``keys`` (:func:`stats_key`: a kind, or kind|condition) from one draw of ``samples`` of the
    model's own samples (``options``: :func:`~lazyflow.runtime.core.model_stats.own_samples`'s, ``model_kwargs``
    among them)."""
    from ..core.model_stats import own_samples
    from ..core.call_counter import CallCounter

    counter = CallCounter(model)   # a module is called in its own dtype (the counter keeps it)
    start = time.perf_counter()
    with torch.no_grad():
        own = own_samples(counter, (samples, *shape), steps=STATS_STEPS, integrator=STATS_INTEGRATOR, seed=STATS_SEED,
                          **options)
    batches = math.ceil(samples / (options.get("batch_size") or samples))
    info = {"from": f"the model's own samples ({STATS_INTEGRATOR}, {STATS_STEPS} steps, float64)", "samples": samples,
            "seed": STATS_SEED, "model_calls": counter.calls // batches, "sample_evaluations": counter.calls // batches * samples,
            "seconds": round(time.perf_counter() - start, 3)}
    return {key: BenchStats(own.stats(*split_key(key)), {"kind": split_key(key)[0], "condition": split_key(key)[1],
                                                         **info}) for key in keys}


def bench_stats(model: Any, shape: tuple[int, ...], keys: tuple[str, ...], save: str | Path | None = None,
                **options: Any) -> tuple[dict[str, BenchStats], torch.Tensor | None]:
    """({key: statistics}, the exact samples they came from or None), for a model of samples ``shape``;
    ``keys``: :func:`stats_key` (an exact model's: kinds); ``options`` go to :func:`_model_stats` (samples, source,
    prediction, model_kwargs, batch_size, device).  With ``save`` (the bench's JSON path) each is written to
    :func:`stats_file` and its path recorded."""
    exact = None
    if callable(getattr(model, "exact_samples", None)):
        found, exact = _exact_stats(model, keys)
    else:
        found = _model_stats(model, shape, keys, **options)
    if save is not None:
        found = {key: BenchStats(s.stats, {**s.info, "file": str(stats_file(save, key))},
                                 s.stats.save(stats_file(save, key))) for key, s in found.items()}
    return found, exact


def gaussian_map(samples: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mu + Sigma^(1/2) z, with mu and Sigma the mean and covariance of ``samples`` (n, *data_shape), for z of
    shape (m, *data_shape); float64 math, returned in z's dtype."""
    x = samples.reshape(len(samples), -1).to(torch.float64)
    mu = x.mean(0)
    _, s, vh = torch.linalg.svd((x - mu) / math.sqrt(len(x) - 1), full_matrices=False)
    flat = z.reshape(len(z), -1).to(torch.float64)
    return (mu + ((flat @ vh.T) * s) @ vh).to(z.dtype).reshape(z.shape)
