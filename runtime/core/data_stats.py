"""The data's own Gaussian: mean and covariance in five forms, for the frames exact on it.

``DataStats.from_samples(x, kind=...)`` estimates them from samples (n, *data_shape):

- ``scalar``:  a per-element mean and one variance (the mean of the per-element variances);
- ``diag``:    a per-element mean and variance;
- ``channel``: a per-channel mean and variance (dimension 1 of an image latent);
- ``lowrank``: a per-element mean, the top ``rank`` eigenpairs of the covariance, and per element the
  variance left outside them (the diagonal of Sigma - U diag(l) U^T);
- ``full``:    a per-element mean and the whole covariance as its eigenpairs (small d);
- ``dct``:     a per-element mean and the variance of each coefficient of the orthonormal 2-D DCT-II
  (:mod:`.dct`) over the last two axes (images, latents (C, H, W)) or over the token grid of packed
  latents (S, K) (``grid`` (h, w), FLUX): exact for stationary data, whose covariance the DCT diagonalises
  nearly, at O(d) numbers and O(d (H + W)) work per transform.

``kind="auto"`` picks one from the shape and n (:func:`.stats_kind.choose_kind`).

Eigenvalues and variances are floored at ``floor`` (default 1e-3): pixels that never vary would give
directions that never move.  ``save``/``load`` use safetensors.

Conditional models (class labels, prompts, guidance) have a Gaussian per condition.  Two ways to give it:

- :class:`ConditionalStats`: one ``DataStats`` per value of a conditioning keyword (``y``: class labels),
  estimated from labelled samples; each sample is integrated in its own label's frame.
- ``first_call_mean`` (:meth:`DataStats.with_first_call_mean`): the mean is read from the model itself, per
  sample, at the run's first call.  At snr = 0 the state carries no information on the data, so
  eta_X(0, x) = E[X | c] exactly, whatever the condition c (a prompt, a guided model); the covariance stays
  the file's (or an isotropic one, :meth:`DataStats.isotropic`: no data at all).

A sampler uses the statistics through *directions*: coordinates in which the covariance is diagonal
with variances ``lam`` (:meth:`DataStats.directions`): the elements themselves (scalar, diag, channel),
the eigenvector coordinates (full), the top eigenvectors' coordinates beside the remainder (lowrank), or
the DCT coefficients (dct).
Statistics of a model's own samples, where no data is at hand: :func:`lazyflow.runtime.core.model_stats.stats_from_model`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ...atomic_write import atomic_path
from ...errors import LazyflowError
from .dct import DctLayout, square_grid
from .stats_kind import FULL_LIMIT, choose_kind

__all__ = ["DataStats", "ConditionalStats", "KINDS", "Directions", "as_data_stats", "checked_data_stats", "label_rows"]

KINDS = ("scalar", "diag", "channel", "lowrank", "full", "dct")
FORMAT = 1


@dataclass(frozen=True, eq=False)
class DataStats:
    """Mean and covariance of data of shape ``mean.shape``.  ``var``: () scalar, the data shape (diag,
    channel broadcasts as (C, 1, ...)), the eigenvalues (full: (d,), lowrank: (rank,)); ``basis``: the
    eigenvectors as columns (full: (d, d), lowrank: (d, rank)); ``rest``: lowrank's per-element
    remainder variance.  dct: ``var`` the variance of each DCT coefficient (the data shape), ``grid`` the token
    grid (h, w) of packed latents (S, K) (None: the planes are the last two axes)."""

    kind: str
    mean: torch.Tensor
    var: torch.Tensor
    basis: torch.Tensor | None = None
    rest: torch.Tensor | None = None
    samples: int = 0
    floor: float = 1e-3
    #: the sampler takes each sample's mean from its call at snr = 0 (E[X | c]) instead of ``mean``
    first_call_mean: bool = False
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LazyflowError(f"unknown statistics kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind in ("full", "lowrank") and self.basis is None:
            raise LazyflowError(f"{self.kind} statistics need their basis (eigenvectors)")
        if self.kind == "dct":
            object.__setattr__(self, "grid", DctLayout(tuple(self.mean.shape), self.grid).grid)
            if tuple(self.var.shape) != tuple(self.mean.shape):
                raise LazyflowError(f"dct statistics need one variance per coefficient (shape {tuple(self.mean.shape)}),"
                                    f" got {tuple(self.var.shape)}")
        elif self.grid is not None:
            raise LazyflowError(f"a token grid is for dct statistics of packed latents, not {self.kind}")
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
        extra += f", packed on a {self.grid[0]} x {self.grid[1]} token grid" if self.grid is not None else ""
        mean = ", the mean from the first call" if self.first_call_mean else ""
        return f"{self.kind} statistics of shape {self.data_shape}{extra} from {self.samples} samples{mean}"

    def with_first_call_mean(self, on: bool = True) -> "DataStats":
        """The same covariance, the mean read per sample from the model's call at snr = 0 (``on``)."""
        return replace(self, first_call_mean=bool(on))

    @classmethod
    def isotropic(cls, data_shape: tuple[int, ...], var: float = 1.0) -> "DataStats":
        """N(E[X | c], var I) with the mean from the first call: a data frame that needs no data."""
        if isinstance(var, bool) or not isinstance(var, (int, float)) or not var > 0:
            raise LazyflowError(f"the variance must be a positive number, got {var!r}")
        return cls("scalar", torch.zeros(tuple(data_shape), dtype=torch.float64),
                   torch.tensor(float(var), dtype=torch.float64), first_call_mean=True)

    # --- estimating ----------------------------------------------------------------------------
    @classmethod
    def from_samples(cls, x: Any, *, kind: str = "diag", rank: int | None = None, floor: float = 1e-3,
                     packed: bool = False, grid: tuple[int, int] | None = None) -> "DataStats":
        """Estimate from samples ``x`` of shape (n, *data_shape) (a tensor or array), in float64.  ``kind="auto"``:
        :func:`.stats_kind.choose_kind` picks it (and lowrank's rank).  ``packed``: the samples are packed latents
        (n, S, K) on a square token grid, or on ``grid`` (h, w) where given (the dct kind's packed layout)."""
        x = torch.as_tensor(x).to(torch.float64)
        if x.dim() < 2 or x.shape[0] < 2:
            raise LazyflowError(f"statistics need samples of shape (n, *data_shape) with n >= 2, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise LazyflowError("statistics: the samples are not all finite")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
            raise LazyflowError(f"the variance floor must be a positive number, got {floor!r}")
        n, shape, d = x.shape[0], tuple(x.shape[1:]), math.prod(x.shape[1:])
        kind, rank, grid = _chosen_kind(kind, rank, shape, n, _token_grid(shape, packed, grid))
        if grid is not None and kind != "dct":
            raise LazyflowError(f"packed latents (a token grid) are a layout of dct statistics, not of {kind}")
        if kind == "dct":
            return cls._dct(x, grid, floor)
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
    def _dct(cls, x: torch.Tensor, grid: tuple[int, int] | None, floor: float) -> "DataStats":
        """The mean and the variance of each DCT coefficient of the centred samples, sum_i c_i^2 / (n - 1)
        (a few hundred samples at a time: O(d) memory beyond the samples)."""
        layout = DctLayout(tuple(x.shape[1:]), grid)
        mean = x.mean(0)
        squares = torch.zeros_like(mean)
        for part in x.split(256):
            squares += layout.forward(part - mean).pow(2).sum(0)
        var = (squares / (x.shape[0] - 1)).clamp(min=floor)
        return cls("dct", mean, var, samples=x.shape[0], floor=float(floor), grid=layout.grid)

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
        tensors = {name: getattr(self, name) for name in ("mean", "var", "basis", "rest")
                   if getattr(self, name) is not None}
        return _write(path, tensors, {"format": str(FORMAT), "kind": self.kind, "samples": str(self.samples),
                                      "floor": repr(self.floor), "first_call_mean": self.first_call_mean,
                                      **_grid_meta(self.grid)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DataStats | ConditionalStats":
        """Read a file written by :meth:`save` (or :meth:`ConditionalStats.save`: then that); anything else is
        refused with the reason."""
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
        if "conditional" in meta:
            return ConditionalStats._from_file(path, meta, tensors)
        return cls(meta["kind"], tensors["mean"], tensors["var"], tensors.get("basis"), tensors.get("rest"),
                   samples=int(meta.get("samples", 0)), floor=float(meta.get("floor", 1e-3)),
                   first_call_mean=bool(meta.get("first_call_mean", False)), grid=_grid_of(path, meta))

    # --- what a sampler needs ------------------------------------------------------------------
    def directions(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> "Directions":
        """The coordinates in which this covariance is diagonal, on ``device`` in ``dtype``."""
        def put(v):
            return None if v is None else v.to(device=device, dtype=dtype)

        return Directions(self.kind, self.data_shape, put(self.mean), put(self.var), put(self.basis), put(self.rest),
                          grid=self.grid)


def _token_grid(shape: tuple[int, ...], packed: bool, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    """The token grid of packed latents of ``shape`` (S, K): ``grid`` where given, else the square one where
    ``packed``; None for any other layout."""
    if grid is None and not packed:
        return None
    if len(shape) != 2:
        raise LazyflowError(f"packed latents have shape (S, K) (S tokens of K channels), got {shape}")
    return square_grid(shape[0]) if grid is None else tuple(grid)


def _chosen_kind(kind: str, rank: int | None, shape: tuple[int, ...], n: int,
                 grid: tuple[int, int] | None) -> tuple[str, int | None, tuple[int, int] | None]:
    """(kind, rank, token grid) with ``auto`` resolved by :func:`.stats_kind.choose_kind` for ``n`` samples of
    ``shape`` (the grid kept only where it picks dct, the one kind with that layout); others as given."""
    if kind != "auto":
        return kind, rank, grid
    if rank is not None:
        raise LazyflowError("kind auto chooses the rank itself; give a rank with kind lowrank")
    kind, rank = choose_kind(shape, n, packed=grid is not None)
    return kind, rank, grid if kind == "dct" else None


def _grid_meta(grid: tuple[int, int] | None) -> dict[str, Any]:
    """The metadata entry of a packed layout's token grid (none for the others: older files read alike)."""
    return {} if grid is None else {"grid": list(grid)}


def _grid_of(path: Path, meta: dict[str, Any]) -> tuple[int, int] | None:
    """The token grid of a file's metadata (None where it has none)."""
    grid = meta.get("grid")
    if grid is None:
        return None
    if not isinstance(grid, list) or len(grid) != 2 or not all(isinstance(v, int) for v in grid):
        raise LazyflowError(f"{path}: the token grid in the metadata is damaged ({grid!r})")
    return int(grid[0]), int(grid[1])


def _write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """``tensors`` and ``meta`` (under ``lazyflow_data_stats``) to ``path`` as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial),
                  metadata={"lazyflow_data_stats": json.dumps(meta)})
    return path


@dataclass(frozen=True, eq=False)
class ConditionalStats:
    """One :class:`DataStats` per label: ``stats[j]`` for the samples whose conditioning keyword ``key`` (a
    per-sample integer tensor of ``model_kwargs``, e.g. SiT's and the test beds' ``y``) equals ``labels[j]``.
    All of one kind and shape; the sampler integrates each sample in its own label's frame."""

    key: str
    labels: tuple[int, ...]
    stats: tuple[DataStats, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise LazyflowError(f"conditional statistics need the name of the conditioning keyword, got {self.key!r}")
        labels = tuple(self.labels)
        if not labels or len(set(labels)) != len(labels) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                     for v in labels):
            raise LazyflowError(f"conditional statistics need distinct integer labels, got {labels!r}")
        if len(self.stats) != len(labels) or not all(isinstance(s, DataStats) for s in self.stats):
            raise LazyflowError(f"conditional statistics need one DataStats per label ({len(labels)} labels, "
                                f"{len(self.stats)} statistics)")
        first = self.stats[0]
        for s in self.stats:
            if (s.kind, s.data_shape, s.var.shape, s.grid) != (first.kind, first.data_shape, first.var.shape, first.grid):
                raise LazyflowError("conditional statistics: every label's statistics must have one kind, shape "
                                    f"and rank ({s.describe()} vs {first.describe()})")
            if s.first_call_mean:
                raise LazyflowError("conditional statistics carry each label's own mean (no first_call_mean)")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "stats", tuple(self.stats))

    @property
    def kind(self) -> str:
        return self.stats[0].kind

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.stats[0].data_shape

    @property
    def first_call_mean(self) -> bool:
        return False

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.stats)

    def describe(self) -> str:
        return (f"{self.kind} statistics of shape {self.data_shape} per {self.key} ({len(self.labels)} labels, "
                f"{min(s.samples for s in self.stats)}-{max(s.samples for s in self.stats)} samples each)")

    @classmethod
    def from_samples(cls, x: Any, labels: Any, *, key: str = "y", kind: str = "diag", rank: int | None = None,
                     floor: float = 1e-3, packed: bool = False, grid: tuple[int, int] | None = None) -> "ConditionalStats":
        """Per label, :meth:`DataStats.from_samples` of the samples ``x`` (n, *data_shape) with that label
        (``labels``: n integers); a label needs at least 2 samples.  ``kind="auto"`` chooses one kind for all
        labels from the fewest samples of any label."""
        x = torch.as_tensor(x)
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.numel() != x.shape[0]:
            raise LazyflowError(f"conditional statistics need one integer label per sample ({x.shape[0]} samples, "
                                f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype})")
        values = sorted(int(v) for v in labels.unique())
        counts = {v: int((labels == v).sum()) for v in values}
        few = [v for v, c in counts.items() if c < 2]
        if few:
            raise LazyflowError(f"conditional statistics need at least 2 samples per label; label(s) "
                                f"{', '.join(map(str, few))} have 1")
        shape = tuple(x.shape[1:])   # one kind for all labels, from the fewest samples of any
        kind, rank, grid = _chosen_kind(kind, rank, shape, min(counts.values()), _token_grid(shape, packed, grid))
        return cls(key, tuple(values), tuple(DataStats.from_samples(x[labels == v], kind=kind, rank=rank, floor=floor,
                                                                    grid=grid) for v in values))

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file: each tensor stacked over the labels, the labels and key in the metadata."""
        tensors = {name: torch.stack([getattr(s, name) for s in self.stats]) for name in ("mean", "var", "basis", "rest")
                   if getattr(self.stats[0], name) is not None}
        first = self.stats[0]
        return _write(path, tensors, {"format": str(FORMAT), "kind": first.kind, "floor": repr(first.floor),
                                      "conditional": {"key": self.key, "labels": list(self.labels),
                                                      "samples": [s.samples for s in self.stats]},
                                      **_grid_meta(first.grid)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ConditionalStats":
        """Read a file written by :meth:`save` (:meth:`DataStats.load` reads either kind of file)."""
        found = DataStats.load(path)
        if not isinstance(found, cls):
            raise LazyflowError(f"{path}: statistics for all samples alike, not per label")
        return found

    @classmethod
    def _from_file(cls, path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "ConditionalStats":
        info = meta["conditional"]
        try:
            labels, samples = [int(v) for v in info["labels"]], [int(v) for v in info["samples"]]
            per = [DataStats(meta["kind"], *(tensors[name][j] if name in tensors else None
                                              for name in ("mean", "var", "basis", "rest")),
                             samples=samples[j], floor=float(meta.get("floor", 1e-3)), grid=_grid_of(path, meta))
                   for j in range(len(labels))]
            return cls(str(info["key"]), tuple(labels), tuple(per))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise LazyflowError(f"{path}: conditional statistics file is damaged ({type(err).__name__}: {err})") from None

    def directions(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> "Directions":
        """The per-label directions stacked on a leading axis (``conditions``: the labels)."""
        per = [s.directions(device, dtype) for s in self.stats]
        stack = lambda name: None if getattr(per[0], name) is None else torch.stack([getattr(d, name) for d in per])  # noqa: E731
        return Directions(self.kind, self.data_shape, stack("mean"), stack("var"), stack("basis"), stack("rest"),
                          conditions=self.labels, key=self.key, grid=self.stats[0].grid)


def label_rows(labels: tuple[int, ...], key: str, values: torch.Tensor) -> torch.Tensor:
    """The index in ``labels`` of each of ``values`` (the samples' labels of keyword ``key``); a label that is
    not among them is refused in one line."""
    known = torch.as_tensor(labels, device=values.device)
    match = values.reshape(-1, 1).long() == known.reshape(1, -1)
    if not bool(match.any(1).all()):
        missing = sorted({int(v) for v, ok in zip(values.reshape(-1).tolist(), match.any(1).tolist()) if not ok})
        raise LazyflowError(f"the statistics have no {key} = {', '.join(map(str, missing))} (they cover "
                            f"{', '.join(map(str, labels))})")
    return match.long().argmax(1)


def as_data_stats(value: Any) -> "DataStats | ConditionalStats | None":
    """Statistics as given (a :class:`DataStats` or :class:`ConditionalStats`), read from a file path (str or
    path-like: :meth:`DataStats.load`), or None; anything else is refused in one line."""
    if value is None or isinstance(value, (DataStats, ConditionalStats)):
        return value
    if isinstance(value, (str, os.PathLike)):
        return DataStats.load(value)
    raise LazyflowError(f"data_stats must be a DataStats, a ConditionalStats or the path of a file written by "
                        f"lazyflow stats, got {type(value).__name__}")


def checked_data_stats(value: Any, shape: tuple[int, ...], model_kwargs: dict[str, Any] | None, *,
                       where: str = "model_kwargs") -> "DataStats | ConditionalStats | None":
    """The statistics of a run of samples of ``shape`` (n, *data_shape): :func:`as_data_stats` of ``value``,
    refused in one line unless of the samples' data shape; per-label statistics also need one integer label per
    sample, each among theirs, in the conditioning ``model_kwargs`` (named ``where`` in the refusal).  The one
    check of ``sample`` and of the k-diffusion sampler (and through it the ComfyUI node)."""
    stats = as_data_stats(value)
    if stats is None:
        return None
    if stats.data_shape != tuple(shape[1:]):
        raise LazyflowError(f"data_stats are of shape {stats.data_shape}, the samples of shape {tuple(shape[1:])}")
    if isinstance(stats, ConditionalStats):
        labels = (model_kwargs or {}).get(stats.key)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != shape[0] \
                or labels.is_floating_point():
            raise LazyflowError(f"the statistics are per {stats.key}: give {where}={{{stats.key!r}: one integer label "
                                f"per sample ({shape[0]})}}")
        label_rows(stats.labels, stats.key, labels.cpu())   # every label known (no tables built)
    return stats


@dataclass(frozen=True, eq=False)
class Directions:
    """Coordinates y = R(w) of a centred state w (batch, *data_shape) with per-coordinate variances
    ``lam`` (broadcasting against y without its batch dimension).  ``to`` and ``back`` are inverse maps.

    Per label (``conditions``: the labels of conditioning keyword ``key``), every tensor has a leading axis
    over the labels, and so has ``lam``; :meth:`select` picks each sample's row for one batch (``groups``:
    which rows of the batch have which label, for the rotations of ``full`` and ``lowrank``)."""

    kind: str
    data_shape: tuple[int, ...]
    mean: torch.Tensor
    var: torch.Tensor
    basis: torch.Tensor | None
    rest: torch.Tensor | None
    conditions: tuple[int, ...] | None = None
    key: str = ""
    groups: tuple[tuple[int, torch.Tensor], ...] | None = None
    #: dct: the token grid of packed latents (None: the planes are the last two axes)
    grid: tuple[int, int] | None = None
    #: dct: where the planes lie (from ``data_shape`` and ``grid``); None for the other kinds
    layout: DctLayout | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", DctLayout(self.data_shape, self.grid) if self.kind == "dct" else None)

    def map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Directions":
        """The same directions with ``fn`` applied to every tensor (a plan's cast)."""
        return replace(self, **{name: fn(v) for name in ("mean", "var", "basis", "rest")
                                if (v := getattr(self, name)) is not None})

    @property
    def lam(self) -> torch.Tensor:
        """The variance of each coordinate (shape of one y without the batch; per label: a leading label axis)."""
        lead = 0 if self.conditions is None else 1
        if self.kind == "full":
            return self.var
        if self.kind == "lowrank":
            return torch.cat([self.var, self.rest.flatten(lead)], dim=lead)
        if self.kind == "scalar":
            return self.var.reshape(*self.var.shape, *[1] * len(self.data_shape))
        return self.var

    def label_rows(self, values: torch.Tensor) -> torch.Tensor:
        """The row of each sample's label (``values``: the batch's labels); an unknown label is refused."""
        if self.conditions is None:
            raise LazyflowError("these statistics are not per label")
        return label_rows(self.conditions, self.key, values)

    def select(self, rows: torch.Tensor) -> "Directions":
        """The directions of one batch whose sample i has label row ``rows[i]``: the mean per sample, the
        rotations grouped by label (one host synchronisation, before the loop)."""
        groups = tuple((int(j), (rows == j).nonzero().reshape(-1)) for j in rows.unique().tolist())
        return replace(self, mean=self.mean[rows], groups=groups)

    def _rotate(self, flat: torch.Tensor, transpose: bool) -> torch.Tensor:
        """flat @ U (or U^T), with each sample's own label's U."""
        if self.groups is None:
            return flat @ (self.basis.T if transpose else self.basis)
        out = flat.new_empty(flat.shape[0], self.basis.shape[-2] if transpose else self.basis.shape[-1])
        for j, rows in self.groups:
            basis = self.basis[j]
            out[rows] = flat[rows] @ (basis.T if transpose else basis)
        return out

    def to(self, w: torch.Tensor) -> torch.Tensor:
        """y = R w: U^T w (full), [U^T w, w] (lowrank: the top directions, then all elements), the 2-D DCT of
        each plane (dct), else w."""
        if self.kind == "dct":
            return self.layout.forward(w)
        if self.kind == "full":
            return self._rotate(w.reshape(w.shape[0], -1), False)
        if self.kind == "lowrank":
            flat = w.reshape(w.shape[0], -1)
            top = self._rotate(flat, False)
            return torch.cat([top, flat - self._rotate(top, True)], dim=1)
        return w

    def back(self, y: torch.Tensor) -> torch.Tensor:
        """w = R^-1 y (dct: the inverse DCT, its transpose)."""
        if self.kind == "dct":
            return self.layout.inverse(y)
        if self.kind == "full":
            return self._rotate(y, True).reshape(y.shape[0], *self.data_shape)
        if self.kind == "lowrank":
            rank = self.var.shape[-1]
            return (self._rotate(y[:, :rank], True) + y[:, rank:]).reshape(y.shape[0], *self.data_shape)
        return y
