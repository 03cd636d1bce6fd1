"""The one adapter boundary: turn a network of another convention into ``model(x, t, **kwargs)``.

lazyflow's convention: t in [0, 1] from noise (0) to data (1), I_t = alpha_t Z + beta_t X, and the
network output is the named ``prediction`` in that time.  SiT and flow_matching models already use
this direction (they call the data coefficient alpha and the noise one sigma): pass them as they are,
except that a SiT with ``learn_sigma`` returns twice the channels: :func:`from_sit` keeps the velocity.
Classifier-free guidance wraps any of these models: :func:`lazyflow.runtime.models.guidance.guided`.
diffusers flow transformers (t = 1 - sigma, output minus the velocity) are adapted where that convention
is written, :func:`lazyflow.runtime.integrations.flow_convention.from_diffusers_flow`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ...errors import LazyflowError

__all__ = ["from_sit"]


def from_sit(model: Callable[..., torch.Tensor], *, channels: int | None = None) -> Callable[..., torch.Tensor]:
    """A SiT (or DiT-architecture flow model) as a lazyflow velocity model ``model(x, t, y=labels)``.

    SiT already uses lazyflow's time (noise 0, data 1) and outputs the velocity; with ``learn_sigma``
    its network returns 2 C channels (the velocity, then DiT's unused variance), so this keeps the first
    ``channels`` (default: the model's ``in_channels``, else the input's channel count).  Class labels go
    in ``model_kwargs={"y": labels}``; SiT's null class (for guidance) is ``num_classes``."""
    keep = channels if channels is not None else getattr(model, "in_channels", None)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise LazyflowError(f"channels must be a positive integer, got {keep!r}")

    class _Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            if hasattr(model, "data_shape"):
                self.data_shape = tuple(model.data_shape)
            self.in_channels = keep

        def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            out = self.net(x, t, **kwargs)
            return out[:, :(keep if keep is not None else x.shape[1])]

    return _Velocity()
