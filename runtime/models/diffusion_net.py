"""A network trained on a discrete diffusion schedule, as diffusers calls it: ``net(x, timestep)`` with a training
timestep k in [0, N - 1] (float: between two steps for a network that embeds float timesteps) on the schedule of
its scheduler ``config`` (:func:`~lazyflow.runtime.core.discrete_schedule.schedule_of_config`), returning the
config's ``prediction_type``.  With abar(k) the schedule's noise level at k (its interpolant between the table's
values) and x = sqrt(abar) X + sqrt(1 - abar) Z:

    epsilon:       out = E[Z | x]          x0 = (x - sqrt(1 - abar) out) / sqrt(abar)
    v_prediction:  out = sqrt(abar) E[Z | x] - sqrt(1 - abar) E[X | x]      x0 = sqrt(abar) x - sqrt(1 - abar) out
    sample:        out = E[X | x]          x0 = out

and its VE form sigma(k) = sqrt((1 - abar) / abar), x_ve = x / sqrt(abar): what the peers of
:mod:`lazyflow.runtime.evaluation.discrete_peers` read."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..core.discrete_schedule import schedule_of_config, time_of_timestep, timestep_of_time
from ..core.schedule import Schedule

__all__ = ["DiffusionNetwork", "RuntimeModel", "TensorOutput", "EXACT_ATTRIBUTES"]

#: what a :class:`RuntimeModel` reads through from its network (an exact mixture's, for the bench's scores)
EXACT_ATTRIBUTES = ("mixture", "exact_samples", "data_shape", "name")


@dataclass(frozen=True)
class DiffusionNetwork:
    """``net(x, timestep)`` on the discrete schedule of the diffusers scheduler ``config`` (a mapping)."""

    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    config: Mapping[str, Any]
    schedule: Schedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from ..integrations.diffusion_convention import prediction_of   # the one convention (a leaf module)

        prediction_of(self.prediction_type)   # an unknown one refused in one line
        object.__setattr__(self, "schedule", schedule_of_config(self.config))

    @property
    def prediction_type(self) -> str:
        return self.config.get("prediction_type", "epsilon")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

    def time_of_timestep(self, timestep: float) -> float:
        """The schedule's time t of training timestep k."""
        return float(time_of_timestep(self.schedule, torch.tensor([float(timestep)], dtype=torch.float64))[0])

    def alphas_cumprod(self, timestep: float) -> float:
        """abar(k) = beta(t(k))^2, the schedule's interpolant (the table's value at an integer k)."""
        t = torch.tensor([self.time_of_timestep(timestep)], dtype=torch.float64)
        return float(self.schedule.values(t).beta[0] ** 2)

    def sigma_of_timestep(self, timestep: float) -> float:
        """sigma(k) = sqrt((1 - abar) / abar)."""
        abar = self.alphas_cumprod(timestep)
        return math.sqrt((1 - abar) / abar)

    def sigma_range(self) -> tuple[float, float]:
        """(sigma(0), sigma(N - 1)): the VE range of the training timesteps."""
        return self.sigma_of_timestep(0.0), self.sigma_of_timestep(self.num_train_timesteps - 1.0)

    def timestep_of_sigma(self, sigma: float) -> float:
        """The (continuous) timestep k of sigma: log snr = -log sigma inverted on the schedule, clamped to
        [0, N - 1] (as k-diffusion's ``CompVisDenoiser`` clamps)."""
        t = self.schedule.kernel.time_of_log_snr(torch.tensor([-math.log(sigma)], dtype=torch.float64))
        k = float(timestep_of_time(self.schedule, t)[0])
        return min(max(k, 0.0), self.num_train_timesteps - 1.0)

    def denoised(self, out: torch.Tensor, x: torch.Tensor, abar: float) -> torch.Tensor:
        """x0 from the network's output at the state x of noise level ``abar`` (the module docstring's table)."""
        if self.prediction_type == "epsilon":
            return (x - math.sqrt(1 - abar) * out) / math.sqrt(abar)
        if self.prediction_type == "v_prediction":
            return math.sqrt(abar) * x - math.sqrt(1 - abar) * out
        return out


class RuntimeModel(torch.nn.Module):
    """``model(x, t, **kwargs)``: a :class:`DiffusionNetwork` converted to the runtime's time t on its discrete
    schedule by :func:`~lazyflow.runtime.integrations.diffusion_convention.from_diffusers_unet` (timestep k(t),
    continuous; ``prediction``: what it returns to the runtime); :data:`EXACT_ATTRIBUTES` read through from the
    network where it has them."""

    def __init__(self, diffusion: DiffusionNetwork):
        from ..integrations.diffusion_convention import from_diffusers_unet   # the one adapter (a leaf module)

        super().__init__()
        self.network = diffusion.net
        self.call, self.prediction = from_diffusers_unet(diffusion.net, diffusion.schedule, diffusion.prediction_type)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.call(x, t, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in EXACT_ATTRIBUTES:
            return getattr(self.network, name)
        return super().__getattr__(name)


class TensorOutput(torch.nn.Module):
    """``unet(x, timestep)`` returning a tensor: the first item of a diffusers output (``UNet2DOutput.sample``)."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = self.unet(x, timestep, **kwargs)
        return out if isinstance(out, torch.Tensor) else out[0]
