"""The one adapter boundary: turn a network of another convention into ``model(x, t, **kwargs)``.

lazyflow's convention: t in [0, 1] from noise (0) to data (1), I_t = alpha_t Z + beta_t X, and the
network output is the named ``prediction`` in that time.  SiT and flow_matching models already use
this direction (they call the data coefficient alpha and the noise one sigma): pass them as they are,
except that a SiT with ``learn_sigma`` returns twice the channels: :func:`from_sit` keeps the velocity.
Classifier-free guidance wraps any of these models: :func:`lazyflow.runtime.models.guidance.guided`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ...errors import LazyflowError

__all__ = ["from_diffusers_flow", "from_sit"]


def from_diffusers_flow(transformer: Callable[..., Any], *, timestep_scale: float = 1000.0) -> Callable[..., torch.Tensor]:
    """A diffusers flow-matching transformer (SD3, FLUX, ...) as a lazyflow velocity model.

    diffusers uses x_sigma = (1 - sigma) X + sigma Z with sigma from 1 to 0, so t = 1 - sigma, and its
    network predicts Z - X, the negative of our velocity.  SD3's transformer takes
    timestep = 1000 sigma (the default ``timestep_scale``); FLUX's takes sigma and scales it inside,
    so pass ``timestep_scale=1``.  Conditioning (``encoder_hidden_states``, ``pooled_projections``,
    ...) goes through ``sample(..., model_kwargs=...)``; use with ``source="linear"``.
    """
    if timestep_scale <= 0:
        raise LazyflowError(f"timestep_scale must be positive, got {timestep_scale}")

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        sigma = (1 - t).to(x.dtype)
        out = transformer(hidden_states=x, timestep=sigma * timestep_scale, return_dict=False, **kwargs)[0]
        return -out

    return model


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
