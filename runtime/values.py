"""Schedule values and derivatives on a time grid, read from a kernel."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

__all__ = ["ScheduleValues"]


@dataclass(frozen=True)
class ScheduleValues:
    """alpha, beta, alpha', beta', sigma of a target schedule at times ``t`` (all tensors of one shape)."""

    t: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    d_alpha: torch.Tensor
    d_beta: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def at(cls, kernel: ModuleType, t: torch.Tensor) -> "ScheduleValues":
        """Evaluate ``kernel.schedule`` at ``t``."""
        return cls(t, *kernel.schedule(t))

    @property
    def snr(self) -> torch.Tensor:
        """beta / alpha."""
        return self.beta / self.alpha

    @property
    def eps(self) -> torch.Tensor:
        """sigma^2 / 2."""
        return self.sigma**2 / 2
