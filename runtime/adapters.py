"""The one adapter boundary: turn a network of another convention into ``model(x, t, **kwargs)``.

lazyflow's convention: t in [0, 1] from noise (0) to data (1), I_t = alpha_t Z + beta_t X, and the
network output is the named ``prediction`` in that time.  SiT and flow_matching models already use
this direction (they call the data coefficient alpha and the noise one sigma): pass them as they are.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .errors import LazyflowError

__all__ = ["from_diffusers_flow"]


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
