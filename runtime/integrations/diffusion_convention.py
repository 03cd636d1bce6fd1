"""diffusers' discrete-diffusion convention, written once (imports no diffusers).

DDPM/DDIM-family models (DDPM, DDIM, Stable Diffusion 1.x / 2.x, SDXL) are called at a training timestep k on
x_k = sqrt(abar_k) X + sqrt(1 - abar_k) Z (alpha = sqrt(1 - abar), beta = sqrt(abar) in lazyflow's
I = alpha Z + beta X) and predict, by their ``prediction_type``:

    epsilon        Z                                   lazyflow's ``noise`` prediction
    sample         X                                   lazyflow's ``x`` prediction
    v_prediction   v = beta Z - alpha X                lazyflow's ``x`` prediction X = beta x - alpha v

(the last since beta x - alpha v = (beta^2 + alpha^2) X).  The time of a call and its timestep are those of
:mod:`lazyflow.runtime.core.discrete_schedule` (k(t) = M (1 - t) - 1).  The scheduler
(:mod:`lazyflow.runtime.integrations.diffusion_scheduler`) and the adapter below convert through these functions.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ...errors import LazyflowError
from ..core.discrete_schedule import timestep_of_time
from ..core.schedule import Schedule

__all__ = ["PREDICTION_TYPES", "prediction_of", "prediction_of_output", "from_diffusers_unet"]

#: diffusers' prediction_type -> the lazyflow prediction the scheduler and adapter hand to the runtime
PREDICTION_TYPES = {"epsilon": "noise", "sample": "x", "v_prediction": "x"}


def prediction_of(prediction_type: str) -> str:
    """The lazyflow prediction of a diffusers ``prediction_type``; an unknown one refused in one line."""
    if prediction_type not in PREDICTION_TYPES:
        raise LazyflowError(f"unknown prediction_type {prediction_type!r}; lazyflow reads "
                            f"{', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[prediction_type]


def prediction_of_output(output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor | float,
                         beta: torch.Tensor | float, prediction_type: str) -> torch.Tensor:
    """The network's ``output`` on input x (where alpha, beta are the schedule's) as the lazyflow prediction
    :func:`prediction_of` names: itself, or X = beta x - alpha v for ``v_prediction``."""
    prediction_of(prediction_type)
    if prediction_type == "v_prediction":
        return beta * x - alpha * output
    return output


def from_diffusers_unet(unet: Callable[..., Any], schedule: Schedule, prediction_type: str, *,
                        rounded: bool = False) -> tuple[Callable[..., torch.Tensor], str]:
    """A diffusers diffusion network (``UNet2DModel``, ``UNet2DConditionModel``, or any ``unet(x, timestep,
    **kwargs)`` returning a tensor or a tuple/output whose first item is one) trained on the discrete
    ``schedule`` as ``(model, prediction)`` for :func:`lazyflow.sample` with ``source=schedule``: the model is
    called at timestep k(t), the nearest integer if ``rounded``; its output is converted by
    :func:`prediction_of_output`."""
    prediction = prediction_of(prediction_type)

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        timestep = timestep_of_time(schedule, t.to(torch.float64), rounded=rounded)
        out = unet(x, timestep.to(device=x.device, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype),
                   **kwargs)
        out = out if isinstance(out, torch.Tensor) else out[0]
        if prediction_type != "v_prediction":
            return out
        values = schedule.values(t.to(torch.float64))
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha, beta = (v.reshape(shape).to(device=x.device, dtype=x.dtype) for v in (values.alpha, values.beta))
        return prediction_of_output(out, x, alpha, beta, prediction_type)

    return model, prediction
