"""Peer samplers run on the same model for comparison (optional: ``pip install -e .[peers]``).

Each peer is a function (model, x0, nfe, seed) -> samples, written against the peer's public API.
A model here is ours: velocity on the linear schedule, t in [0, 1] from noise to data.
diffusers' flow convention (t = 1 - sigma, output minus our velocity) converts through
:mod:`lazyflow.runtime.integrations.flow_convention`.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

from ..integrations.flow_convention import time_of_timestep, velocity_of_output

__all__ = ["PEERS", "available_peers", "SKIPPED_SIGMA_OPTIONS"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _diffusers_loop(scheduler, model: Model, x: torch.Tensor, nfe: int, seed: int) -> torch.Tensor:
    scheduler.set_timesteps(num_inference_steps=nfe)
    generator = torch.Generator().manual_seed(seed)
    for timestep in scheduler.timesteps:
        t = torch.full((x.shape[0],), time_of_timestep(float(timestep), scheduler.config.num_train_timesteps),
                       dtype=x.dtype)
        output = velocity_of_output(model(x, t))
        options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        x = scheduler.step(output, timestep, x, return_dict=False, **options)[0]
    return x


def _fm_euler(model, x, nfe, seed, stochastic=False):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _diffusers_loop(FlowMatchEulerDiscreteScheduler(stochastic_sampling=stochastic), model, x, nfe, seed)


def _dpm(model, x, nfe, seed, algorithm="dpmsolver++"):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0,
                                            algorithm_type=algorithm, solver_order=2)
    return _diffusers_loop(scheduler, model, x, nfe, seed)


def _unipc(model: Model, x: torch.Tensor, nfe: int, seed: int, sigmas: str | None = None) -> torch.Tensor:
    """diffusers' UniPC on flow sigmas; ``sigmas`` names a spacing option (``karras``: ``use_karras_sigmas``)."""
    from diffusers import UniPCMultistepScheduler

    options = {f"use_{sigmas}_sigmas": True} if sigmas else {}
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0,
                                        **options)
    return _diffusers_loop(scheduler, model, x, nfe, seed)


def _fm_ode(model, x, nfe, seed, method="midpoint", cosine=False):
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return model(x, t.reshape(-1).expand(x.shape[0]).to(x.dtype))

    velocity = Wrapped(None)
    if cosine:
        from flow_matching.path.scheduler import CondOTScheduler, CosineScheduler, ScheduleTransformedModel

        velocity = ScheduleTransformedModel(velocity, CondOTScheduler(), CosineScheduler())
    per_step = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}.get(method, 2)
    steps = max(1, nfe // per_step)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    if cosine:  # the cosine frame's first step from t = 0 is where the converted model is singular-free
        grid = grid.clamp(max=1.0 - 1e-4)
    return ODESolver(velocity_model=velocity).sample(x_init=x, step_size=None, method=method, time_grid=grid)


def _sit_em(model, x, nfe, seed, t0=1e-3, last_step=0.04):
    """SiT-style Euler-Maruyama on the linear schedule with its SBDM diffusion w(t) = (1-t)/t
    (dX = [v + w s] dt + sqrt(2 w) dW, score s = (t v - x)/(1 - t)), then its 'Mean' last step."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(t0, 1.0 - last_step, max(nfe, 2)).tolist()
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        tt = torch.full((x.shape[0],), t_cur, dtype=x.dtype)
        v = model(x, tt)
        score = (t_cur * v - x) / (1 - t_cur)
        w = (1 - t_cur) / t_cur
        h = t_next - t_cur
        x = x + (v + w * score) * h + math.sqrt(2 * w * h) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    tt = torch.full((x.shape[0],), grid[-1], dtype=x.dtype)
    return x + model(x, tt) * (1.0 - grid[-1])


#: name -> (stochastic, needs, function)
PEERS: dict[str, tuple[bool, str, Callable]] = {
    "diffusers FlowMatchEuler": (False, "diffusers", _fm_euler),
    "diffusers DPM-Solver++ 2M": (False, "diffusers", _dpm),
    "diffusers UniPC": (False, "diffusers", _unipc),
    "diffusers FlowMatchEuler stochastic": (True, "diffusers", lambda m, x, n, s: _fm_euler(m, x, n, s, True)),
    "diffusers SDE-DPM-Solver++ 2M": (True, "diffusers", lambda m, x, n, s: _dpm(m, x, n, s, "sde-dpmsolver++")),
    "flow_matching midpoint": (False, "flow_matching", _fm_ode),
    "diffusers UniPC (karras sigmas)": (False, "diffusers", lambda m, x, n, s: _unipc(m, x, n, s, "karras")),
    "flow_matching heun": (False, "flow_matching", lambda m, x, n, s: _fm_ode(m, x, n, s, "heun2")),
    "flow_matching rk4": (False, "flow_matching", lambda m, x, n, s: _fm_ode(m, x, n, s, "rk4")),
    "flow_matching cosine (ScheduleTransformedModel) midpoint": (False, "flow_matching",
                                                                 lambda m, x, n, s: _fm_ode(m, x, n, s, cosine=True)),
    "SiT-style Euler-Maruyama (SBDM, Mean last step)": (True, "", _sit_em),
}


#: the diffusers sigma options left out, with why (diffusers 0.42.1, read in its set_timesteps and measured on
#: gmm64 at 4 and 8 NFE): none raises, but only UniPC's Karras branch converts its sigmas to flow sigmas
#: (sigma / (1 + sigma)); the others keep the DDPM schedule's sigmas (0.01 to 157), which the flow step reads
#: as alpha = 1 - sigma < 0, and every sample comes back non-finite
SKIPPED_SIGMA_OPTIONS = ("diffusers UniPC with use_exponential_sigmas or use_beta_sigmas, DPM-Solver++ 2M with "
                         "use_karras_sigmas, use_exponential_sigmas or use_beta_sigmas (with use_flow_sigmas, "
                         "diffusers 0.42 keeps these sigmas in DDPM units, 0.01 to 157, which its flow step reads as "
                         "alpha = 1 - sigma < 0: every sample is non-finite)")


def available_peers() -> tuple[dict[str, tuple[bool, Callable]], list[str]]:
    """(peers whose package imports, names skipped with the reason, incl. :data:`SKIPPED_SIGMA_OPTIONS`)."""
    usable, skipped = {}, [SKIPPED_SIGMA_OPTIONS]
    for name, (stochastic, needs, fn) in PEERS.items():
        if needs:
            try:
                __import__(needs)
            except ImportError:
                skipped.append(f"{name} (needs {needs}: pip install -e .[peers])")
                continue
        usable[name] = (stochastic, fn)
    return usable, skipped
