"""The data's own Gaussian: mean and covariance in five forms, for the frames exact on it.

``DataStats.from_samples(x, kind=...)`` estimates them from samples (n, *data_shape):

- ``scalar``:  a per-element mean and one variance (the mean of the per-element variances);
- ``diag``:    a per-element mean and variance;
- ``channel``: a per-channel mean and variance (dimension 1 of an image latent);
- ``lowrank``: a per-element mean, the top ``rank`` eigenpairs of the covariance, and per element the
  variance left outside them (the diagonal of Sigma - U diag(l) U^T);
- ``full``:    a per-element mean and the whole covariance as its eigenpairs (small d).

Eigenvalues and variances are floored at ``floor`` (default 1e-3): pixels that never vary would give
directions that never move.  ``save``/``load`` use safetensors.

A sampler uses the statistics through *directions*: coordinates in which the covariance is diagonal
with variances ``lam`` (:meth:`DataStats.directions`): the elements themselves (scalar, diag, channel),
the eigenvector coordinates (full), or the top eigenvectors' coordinates beside the remainder (lowrank).
Statistics of a model's own samples, where no data is at hand: :func:`lazyflow.runtime.core.sampler.stats_from_model`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import LazyflowError

__all__ = ["DataStats", "KINDS", "Directions"]

KINDS = ("scalar", "diag", "channel", "lowrank", "full")
FORMAT = 1
#: the most elements a full covariance is estimated for (d^2 entries, an eigendecomposition of d x d)
FULL_LIMIT = 8192


@dataclass(frozen=True, eq=False)
class DataStats:
    """Mean and covariance of data of shape ``mean.shape``.  ``var``: () scalar, the data shape (diag,
    channel broadcasts as (C, 1, ...)), the eigenvalues (full: (d,), lowrank: (rank,)); ``basis``: the
    eigenvectors as columns (full: (d, d), lowrank: (d, rank)); ``rest``: lowrank's per-element
    remainder variance."""

    kind: str
    mean: torch.Tensor
    var: torch.Tensor
    basis: torch.Tensor | None = None
    rest: torch.Tensor | None = None
    samples: int = 0
    floor: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LazyflowError(f"unknown statistics kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind in ("full", "lowrank") and self.basis is None:
            raise LazyflowError(f"{self.kind} statistics need their basis (eigenvectors)")
        for name in ("mean", "var", "basis", "rest"):
            value = getattr(self, name)
            if value is not None and not torch.isfinite(value).all():
                raise LazyflowError(f"data statistics: {name} is not finite")
        if (self.var <= 0).any() or (self.rest is not None and (self.rest <= 0).any()):
            raise LazyflowError("data statistics: variances must be positive (use a floor)")
        # stored contiguous (eigh returns its eigenvectors column-major): a matmul with another memory layout
        # sums in another order, so a copy saved and loaded (contiguous) would sample a few ulp apart
        for name in ("mean", "var", "basis", "rest"):
            value = getattr(self, name)
            if value is not None and not value.is_contiguous():
                object.__setattr__(self, name, value.contiguous())

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def describe(self) -> str:
        extra = f", rank {self.var.numel()}" if self.kind == "lowrank" else ""
        return f"{self.kind} statistics of shape {self.data_shape}{extra} from {self.samples} samples"

    # --- estimating ----------------------------------------------------------------------------
    @classmethod
    def from_samples(cls, x: Any, *, kind: str = "diag", rank: int | None = None, floor: float = 1e-3) -> "DataStats":
        """Estimate from samples ``x`` of shape (n, *data_shape) (a tensor or array), in float64."""
        x = torch.as_tensor(x).to(torch.float64)
        if x.dim() < 2 or x.shape[0] < 2:
            raise LazyflowError(f"statistics need samples of shape (n, *data_shape) with n >= 2, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise LazyflowError("statistics: the samples are not all finite")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
            raise LazyflowError(f"the variance floor must be a positive number, got {floor!r}")
        n, shape, d = x.shape[0], tuple(x.shape[1:]), math.prod(x.shape[1:])
        if kind == "channel":
            if len(shape) < 2:
                raise LazyflowError(f"channel statistics need data of shape (C, ...), got {shape}")
            flat = x.transpose(0, 1).reshape(shape[0], -1)
            mean = flat.mean(1).reshape(shape[0], *[1] * (len(shape) - 1)).expand(shape).clone()
            var = flat.var(1).clamp(min=floor).reshape(shape[0], *[1] * (len(shape) - 1))
            return cls("channel", mean, var, samples=n, floor=float(floor))
        mean = x.mean(0)
        if kind in ("scalar", "diag"):
            var = x.var(0).clamp(min=floor)
            return cls(kind, mean, var.mean() if kind == "scalar" else var, samples=n, floor=float(floor))
        if kind not in ("full", "lowrank"):
            raise LazyflowError(f"unknown statistics kind {kind!r}; choose one of {', '.join(KINDS)}")
        if kind == "full" and d > FULL_LIMIT:
            raise LazyflowError(f"full statistics of {d} elements would hold {d * d:,} numbers; use lowrank, diag or "
                                "channel")
        centred = (x - mean).reshape(n, d)
        if kind == "full":
            lam, basis = torch.linalg.eigh(centred.T @ centred / (n - 1))
            return cls("full", mean, lam.clamp(min=floor), basis, samples=n, floor=float(floor))
        return cls._lowrank(mean, centred, rank, floor)

    @classmethod
    def _lowrank(cls, mean: torch.Tensor, centred: torch.Tensor, rank: int | None, floor: float) -> "DataStats":
        n, d = centred.shape
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(n - 1, d):
            raise LazyflowError(f"lowrank statistics need a rank in 1..{min(n - 1, d)}, got {rank!r}")
        _, s, vh = torch.linalg.svd(centred / math.sqrt(n - 1), full_matrices=False)
        basis, lam = vh[:rank].T, s[:rank] ** 2
        rest = (centred.pow(2).sum(0) / (n - 1) - (basis.pow(2) * lam).sum(1)).clamp(min=floor)
        return cls("lowrank", mean, lam.clamp(min=floor), basis, rest.reshape(mean.shape), samples=n, floor=float(floor))

    # --- files -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as a safetensors file (tensors plus their kind in the metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {name: getattr(self, name).contiguous() for name in ("mean", "var", "basis", "rest")
                   if getattr(self, name) is not None}
        meta = {"format": str(FORMAT), "kind": self.kind, "samples": str(self.samples), "floor": repr(self.floor)}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        save_file(tensors, str(partial), metadata={"lazyflow_data_stats": json.dumps(meta)})
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DataStats":
        """Read a file written by :meth:`save`; anything else is refused with the reason."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LazyflowError(f"data statistics file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("lazyflow_data_stats", "null"))
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
            raise LazyflowError(f"{path}: not a safetensors file ({str(err).splitlines()[0] if str(err) else err})") from None
        if not isinstance(meta, dict) or meta.get("format") != str(FORMAT) or "mean" not in tensors or "var" not in tensors:
            raise LazyflowError(f"{path}: not a lazyflow data statistics file (write one with lazyflow stats)")
        return cls(meta["kind"], tensors["mean"], tensors["var"], tensors.get("basis"), tensors.get("rest"),
                   samples=int(meta.get("samples", 0)), floor=float(meta.get("floor", 1e-3)))

    # --- what a sampler needs ------------------------------------------------------------------
    def directions(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> "Directions":
        """The coordinates in which this covariance is diagonal, on ``device`` in ``dtype``."""
        def put(v):
            return None if v is None else v.to(device=device, dtype=dtype)

        return Directions(self.kind, self.data_shape, put(self.mean), put(self.var), put(self.basis), put(self.rest))


@dataclass(frozen=True, eq=False)
class Directions:
    """Coordinates y = R(w) of a centred state w (batch, *data_shape) with per-coordinate variances
    ``lam`` (broadcasting against y without its batch dimension).  ``to`` and ``back`` are inverse maps."""

    kind: str
    data_shape: tuple[int, ...]
    mean: torch.Tensor
    var: torch.Tensor
    basis: torch.Tensor | None
    rest: torch.Tensor | None

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Directions":
        """The same directions with ``fn`` applied to every tensor (a plan's cast)."""
        return Directions(self.kind, self.data_shape, *(None if v is None else fn(v)
                                                        for v in (self.mean, self.var, self.basis, self.rest)))

    @property
    def lam(self) -> torch.Tensor:
        """The variance of each coordinate (shape of one y without the batch)."""
        if self.kind == "full":
            return self.var
        if self.kind == "lowrank":
            return torch.cat([self.var, self.rest.reshape(-1)])
        if self.kind == "scalar":
            return self.var.reshape([1] * len(self.data_shape))
        return self.var

    def to(self, w: torch.Tensor) -> torch.Tensor:
        """y = R w: U^T w (full), [U^T w, w] (lowrank: the top directions, then all elements), else w."""
        if self.kind == "full":
            return w.reshape(w.shape[0], -1) @ self.basis
        if self.kind == "lowrank":
            flat = w.reshape(w.shape[0], -1)
            top = flat @ self.basis
            return torch.cat([top, flat - top @ self.basis.T], dim=1)
        return w

    def back(self, y: torch.Tensor) -> torch.Tensor:
        """w = R^-1 y."""
        if self.kind == "full":
            return (y @ self.basis.T).reshape(y.shape[0], *self.data_shape)
        if self.kind == "lowrank":
            rank = self.var.numel()
            return (y[:, :rank] @ self.basis.T + y[:, rank:]).reshape(y.shape[0], *self.data_shape)
        return y
