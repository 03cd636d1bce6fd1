"""The orthonormal 2-D DCT-II of image-shaped data, for statistics whose covariance is diagonal in it
(``DataStats`` kind ``dct``: stationary data, whose covariance the DCT nearly diagonalises).

The 1-D orthonormal DCT-II of length n is the matrix

    C[k, j] = s_k cos(pi (2 j + 1) k / (2 n)),   s_0 = sqrt(1/n),  s_k = sqrt(2/n) (k > 0),

orthogonal (C C^T = I), so its inverse (the DCT-III) is C^T.  The 2-D transform of a (H, W) plane X is
C_H X C_W^T, per plane:

- the image layout (``grid`` None): data (..., H, W), planes over the last two axes (every leading axis
  a channel);
- the packed layout (``grid`` = (h, w)): FLUX's packed latents (S, K), S = h * w tokens in row-major order of
  K packed channels; the planes run over the token grid, one per packed channel.  It is the image layout
  under the packing permutation (token s = i * w + j, channel k: plane k, pixel (i, j)).

Cost: two matmuls, O(d (H + W)) multiply-adds for d elements (2 * 128 = 256 per element at 128 x 128),
memory O(d) for the result plus the two cached matrices (H^2 + W^2 numbers per dtype and device).  An FFT
version (Makhoul's reordering, torch.fft.fft per axis) is O(d log d) but was slower on this project's 2-core
CPU at every shape measured (fastest of 30, machine shared): at 16 x 128 x 128, batch 1, 1.2 ms by matmul
against 21 ms by FFT in float32 and 2.3 against 2.8 ms in float64; batch 4 float32 17.7 against 18.8 ms; at
4 x 32 x 32 0.04 against 0.39 ms (docs/data-frames.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ...errors import LazyflowError

__all__ = ["dct_matrix", "DctLayout", "square_grid"]


@lru_cache(maxsize=32)
def _cached(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] = c[0] / math.sqrt(2.0)
    return c.to(device=device, dtype=dtype)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix C (n, n), C[k, j] = s_k cos(pi (2j+1) k / (2n)); built in float64 and cast,
    cached per size, dtype and device."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LazyflowError(f"a DCT needs a positive length, got {n!r}")
    return _cached(n, dtype, torch.device(device if device is not None else "cpu"))


def square_grid(tokens: int) -> tuple[int, int]:
    """The square token grid (h, h) of ``tokens`` = h^2 packed tokens; another count is refused in one line."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise LazyflowError(f"packed latents of {tokens} tokens are not a square grid; give the grid (h, w) "
                            "explicitly")
    return side, side


@dataclass(frozen=True)
class DctLayout:
    """Where the 2-D planes of data of shape ``data_shape`` lie: the last two axes (``grid`` None), or the
    token grid (h, w) of packed latents (S, K) with S = h * w (``grid``)."""

    data_shape: tuple[int, ...]
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.data_shape)
        object.__setattr__(self, "data_shape", shape)
        if self.grid is None:
            if len(shape) < 2:
                raise LazyflowError(f"dct statistics need data of shape (..., H, W), got {shape}")
            return
        grid = tuple(self.grid)
        if len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid):
            raise LazyflowError(f"a packed token grid is two positive integers (h, w), got {self.grid!r}")
        if len(shape) != 2 or grid[0] * grid[1] != shape[0]:
            raise LazyflowError(f"packed latents of grid {grid[0]} x {grid[1]} have shape ({grid[0] * grid[1]}, K), "
                                f"got {shape}")
        object.__setattr__(self, "grid", grid)

    @property
    def plane(self) -> tuple[int, int]:
        """(H, W) of one plane."""
        return self.grid if self.grid is not None else self.data_shape[-2:]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """The DCT coefficients of ``w`` (batch, *data_shape), in the same shape: C_H X C_W^T per plane."""
        return self._apply(w, transpose=False)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`forward` (C^T in place of C: the transform is orthonormal)."""
        return self._apply(y, transpose=True)

    def _apply(self, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        h, w = self.plane
        ch, cw = dct_matrix(h, v.dtype, v.device), dct_matrix(w, v.dtype, v.device)
        if transpose:
            ch, cw = ch.T, cw.T
        if self.grid is None:   # (..., H, W): C_H X C_W^T
            return torch.matmul(torch.matmul(ch, v), cw.T)
        batch, k = v.shape[0], self.data_shape[1]
        rows = torch.matmul(ch, v.reshape(batch, h, w * k))          # over the grid's rows, every column and channel
        out = torch.matmul(cw, rows.reshape(batch * h, w, k))         # over its columns, per row and channel
        return out.reshape(batch, h * w, k)
