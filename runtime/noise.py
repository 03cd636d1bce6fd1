"""Per-sample noise: sample i's draws depend only on (seed, i), never on batching or device."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["sample_seed", "per_sample_normal"]

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for sample ``index`` of a run seeded ``seed``."""
    return (int(seed) * _MIX + int(index) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 63)


def per_sample_normal(seed: int, indices: Sequence[int], draws: int, shape: Sequence[int]) -> torch.Tensor:
    """(len(indices), draws, *shape) standard normals, drawn on the CPU with one generator per sample."""
    out = torch.empty((len(indices), draws, *shape), dtype=torch.float32)
    generator = torch.Generator()
    for row, index in enumerate(indices):
        generator.manual_seed(sample_seed(seed, index))
        out[row] = torch.randn((draws, *shape), generator=generator)
    return out
