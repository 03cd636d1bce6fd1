"""The diffusers flow-matching convention, written once (imports no diffusers).

diffusers' flow pipelines (SD3, FLUX, ...) use x_sigma = (1 - sigma) X + sigma Z with sigma running
from 1 (noise) to 0 (data), so lazyflow's time is t = 1 - sigma; their ``timesteps`` are
sigma * num_train_timesteps; and their networks predict Z - X, the negative of lazyflow's velocity
b = X - Z on the linear schedule.  The scheduler (:mod:`lazyflow.runtime.integrations.diffusers`), the
adapter below, and the peers' loops in the benches all convert through these functions.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch

from ...errors import LazyflowError

__all__ = ["time_of_sigma", "sigma_of_time", "time_of_timestep", "timestep_of_time", "velocity_of_output",
           "from_diffusers_flow"]

Number = TypeVar("Number", float, torch.Tensor)


def time_of_sigma(sigma: Number) -> Number:
    """t = 1 - sigma."""
    return 1 - sigma


def sigma_of_time(t: Number) -> Number:
    """sigma = 1 - t."""
    return 1 - t


def time_of_timestep(timestep: Number, num_train_timesteps: int) -> Number:
    """t = 1 - timestep / num_train_timesteps (diffusers' timesteps are sigma * num_train_timesteps)."""
    return 1 - timestep / num_train_timesteps


def timestep_of_time(t: Number, num_train_timesteps: int) -> Number:
    """timestep = (1 - t) num_train_timesteps."""
    return (1 - t) * num_train_timesteps


def velocity_of_output(output: torch.Tensor) -> torch.Tensor:
    """lazyflow's velocity X - Z from a diffusers flow network's output Z - X (and back: the map is its
    own inverse)."""
    return -output


def from_diffusers_flow(transformer: Callable[..., Any], *, timestep_scale: float = 1000.0) -> Callable[..., torch.Tensor]:
    """A diffusers flow-matching transformer (SD3, FLUX, ...) as a lazyflow velocity model.

    SD3's transformer takes timestep = 1000 sigma (the default ``timestep_scale``); FLUX's takes sigma
    and scales it inside, so pass ``timestep_scale=1``.  Conditioning (``encoder_hidden_states``,
    ``pooled_projections``, ...) goes through ``sample(..., model_kwargs=...)``; use with ``source="linear"``.
    """
    if timestep_scale <= 0:
        raise LazyflowError(f"timestep_scale must be positive, got {timestep_scale}")

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        sigma = sigma_of_time(t).to(x.dtype)
        out = transformer(hidden_states=x, timestep=sigma * timestep_scale, return_dict=False, **kwargs)[0]
        return velocity_of_output(out)

    return model
