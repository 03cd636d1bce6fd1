"""Per-sample noise drawn on the sampling device: sample i's draw d is a pure function of (seed, i, d).

A run uses draw 0 for its start (x_0 = alpha_0 Z) and draw 1 + k for step k's Brownian increment, so a
sample's noise does not depend on the batch size, the chunking, the number of processes or the order
in which steps run, and nothing is drawn before it is needed (no all-steps buffer, no CPU loop).

The generator is counter based.  Each (seed, i, d) gets a 64-bit key,
``key = mix(i * G + mix(seed)) ^ mix(d * G + D)``; element pair j of that draw is the word
``mix(key + j * G)``; ``mix`` is the SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014), ``G`` the 64-bit golden-ratio increment.  Each 64-bit
word gives two normals by Box-Muller from its two 32-bit halves:
``r = sqrt(-2 log((hi + 1/2) / 2^32))``, ``(r cos(2 pi lo / 2^32), r sin(2 pi lo / 2^32))``, so the
tails reach 6.77 standard deviations.  Why this and not Philox: SplitMix64 on a counter is a
well-studied generator that needs only 64-bit add, multiply, xor and shift, which torch has on every
device with wrap-around multiplication; one step's draw is about thirty element-wise kernels and can be
captured in a CUDA graph (no host state).  Why not torch's generators: their stream for a sample
depends on the tensor it is drawn into (batch size, device), or needs one generator and one launch
per sample.

CPU and CUDA give bitwise the same 64-bit words; the normals go through float32 ``log``, ``cos`` and
``sin``, whose last bit may differ between devices, so CPU and GPU samples agree to float rounding
(about 1e-6 relative), not bitwise.  On one device the values are bitwise independent of batching.
Two draws' word sequences overlap only if their keys differ by a multiple of G below the draw's
length: with random keys, probability about (number of draws)^2 * length / 2^64.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

__all__ = ["CounterNormal", "NoiseSource", "standard_normal", "splitmix", "mix64", "signed", "GOLDEN", "DRAW_SALT"]

_MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15            # 2^64 / golden ratio, odd
DRAW_SALT = 0xD1B54A32D192ED03
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores."""
    value &= _MASK
    return value - (1 << 64) if value >= 1 << 63 else value


def splitmix(value: int) -> int:
    """The SplitMix64 finaliser on a Python integer (mod 2^64): the reference for :func:`mix64`."""
    z = value & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """:func:`splitmix` element-wise on int64 tensors (multiplication wraps mod 2^64)."""
    z = (z ^ _shr(z, 30)) * signed(_M1)
    z = (z ^ _shr(z, 27)) * signed(_M2)
    return z ^ _shr(z, 31)


_TWO_PI_2_32 = 2 * math.pi / 2**32
_LOG_2_32 = 32 * math.log(2)


def _normals(words: torch.Tensor) -> torch.Tensor:
    """Two standard normals per 64-bit word by Box-Muller (float32), interleaved along the last axis."""
    hi = _shr(words, 32).to(torch.float32)
    lo = (words & 0xFFFFFFFF).to(torch.float32)
    radius = torch.sqrt(torch.clamp_min(2 * (_LOG_2_32 - torch.log(hi + 0.5)), 0.0))
    angle = lo * _TWO_PI_2_32
    return torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1).flatten(-2)


class NoiseSource(Protocol):
    """A run's noise for one chunk of samples: ``source(d)`` is draw d, shape (len(indices), *shape).
    Built as ``factory(seed, indices, shape, device=..., dtype=...)``; :class:`CounterNormal` is the
    default factory, and ``sample(..., noise=factory)`` accepts another (to reproduce a library's noise)."""

    def __call__(self, draw: int) -> torch.Tensor: ...


class CounterNormal:
    """The default noise: standard normals for samples ``indices`` of a run seeded ``seed``, drawn on
    ``device`` when asked; ``self(d)`` is draw d for every sample in the chunk (see the module doc)."""

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int], *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.shape, self.dtype = tuple(int(s) for s in shape), dtype
        self.device = torch.device(device if device is not None else "cpu")
        size = math.prod(self.shape)
        index = torch.as_tensor(list(indices) if not isinstance(indices, range) else indices, dtype=torch.int64)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= 1 << 62):
            raise ValueError("sample indices must lie in [0, 2^62)")
        base = signed(splitmix(int(seed) & _MASK))
        self._rows = mix64(index.to(self.device) * signed(GOLDEN) + base)            # (n,) per sample
        self._pairs = torch.arange((size + 1) // 2, device=self.device, dtype=torch.int64) * signed(GOLDEN)
        self._size = size

    @property
    def rows(self) -> torch.Tensor:
        """The (n,) per-sample keys before the draw is mixed in (device-resident)."""
        return self._rows

    def with_rows(self, rows: torch.Tensor) -> "CounterNormal":
        """The same shape and device over other per-sample keys (a captured loop's static buffer)."""
        other = object.__new__(CounterNormal)
        other.__dict__.update(self.__dict__)
        other._rows = rows
        return other

    def keys(self, draw: int) -> torch.Tensor:
        """The (n,) int64 keys of draw ``draw``."""
        if draw < 0:
            raise ValueError(f"draw must be >= 0, got {draw}")
        return self._rows ^ signed(splitmix(draw * GOLDEN + DRAW_SALT))

    def words(self, draw: int) -> torch.Tensor:
        """The (n, ceil(size / 2)) 64-bit words of draw ``draw`` (bitwise the same on every device)."""
        return mix64(self.keys(draw)[:, None] + self._pairs)

    def compiled(self) -> "CounterNormal":
        """The same draws through one ``torch.compile``d kernel (fuses the ~30 element-wise operations)."""
        other = self.with_rows(self._rows)
        other._draw = _compiled_draw()
        return other

    def __call__(self, draw: int) -> torch.Tensor:
        return self._draw(self.keys(draw), self._pairs, self._size, self.shape, self.dtype)


def _draw(keys: torch.Tensor, pairs: torch.Tensor, size: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Normals from per-sample keys: words mix(key + j G), Box-Muller, cut to ``size`` and shaped."""
    z = _normals(mix64(keys[:, None] + pairs))[:, :size]
    return z.reshape(len(z), *shape).to(dtype)


CounterNormal._draw = staticmethod(_draw)


def _compiled_draw():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_draw, dynamic=False)
    return _COMPILED


_COMPILED = None


def standard_normal(seed: int, indices: Sequence[int], draw: int, shape: Sequence[int], *,
                    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Draw ``draw`` of samples ``indices`` of a run seeded ``seed``: (len(indices), *shape) normals.
    ``standard_normal(seed, range(n), 0, shape)`` is the start noise that ``sample`` uses."""
    return CounterNormal(seed, indices, shape, device=device, dtype=dtype)(draw)

