"""The peers of a network trained on a discrete diffusion schedule (diffusers' convention: ``net(x, timestep)`` on
the N training steps of its scheduler config, :class:`~lazyflow.runtime.models.diffusion_net.DiffusionNetwork`),
each on its own grid, at equal NFE, from the bench's start noise z:

* diffusers' DDIM (eta 0), DPM-Solver++ 2M (data prediction) and UniPC, built from the network's own scheduler
  config (``from_config``) with one spacing option each, run as a pipeline runs them: x = z *
  ``init_noise_sigma`` at ``timesteps[0]``, one call per step at ``scale_model_input(x)``;
* iPNDM and DEIS-tAB3 (:mod:`.peer_solvers`) and k-diffusion's samplers on Karras sigmas, through the VE form of the
  VP diffusion: sigma = sqrt((1 - abar) / abar), x_ve = x / sqrt(abar), the denoiser D(x_ve, sigma) = the
  network's x prediction at x = x_ve / sqrt(1 + sigma^2) and the (continuous) timestep of that sigma, between the
  schedule's own sigma_min = sigma(0) and sigma_max = sigma(N - 1) (k-diffusion's ``CompVisDenoiser`` range).

Each peer starts where its scheduler starts: at the source time of its first timestep (or of sigma_max) from the
state ``scale`` * z (1 for diffusers' schedulers, sqrt(1 - abar) for a VE sampler from x_ve = sigma_max z); the
bench measures its path against the model's ODE solved from that state (:meth:`DiscretePeer.start_at`).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from ..models.diffusion_net import DiffusionNetwork
from .peer_solvers import edm_sigmas, sample_deis_tab, sample_ipndm, sample_k_diffusion

__all__ = ["DiscretePeer", "discrete_peers", "DDIM_SPACINGS", "DPM_OPTIONS", "UNIPC_OPTIONS", "SKIPPED_DISCRETE"]

#: DDIM's timestep spacings (diffusers' ``timestep_spacing``)
DDIM_SPACINGS = ("leading", "trailing", "linspace")
#: DPM-Solver++ 2M's options: each spacing, then each sigma option (which sets the timesteps itself)
DPM_OPTIONS = (("timestep_spacing", "linspace"), ("timestep_spacing", "leading"), ("timestep_spacing", "trailing"),
               ("use_karras_sigmas", True), ("use_exponential_sigmas", True), ("use_beta_sigmas", True))
#: UniPC's options, as DPM-Solver++'s
UNIPC_OPTIONS = DPM_OPTIONS
#: what is left out, and why
SKIPPED_DISCRETE = "DDIM with eta > 0 and the stochastic diffusers schedulers on discrete networks (no pathwise target)"


@dataclass(frozen=True)
class DiscretePeer:
    """A peer of a discrete diffusion network: ``fn(net, z, nfe, seed)`` -> samples, on ``grid`` (what its name does
    not say), starting at the source time and state scale that ``start(nfe)`` gives ((t0, scale): the state
    scale * z at t0)."""

    fn: Callable
    grid: str
    start: Callable[[int], tuple[float, float]]

    def start_at(self, nfe: int | None) -> tuple[float, float]:
        """(t0, scale) of a run at ``nfe`` evaluations."""
        return self.start(4 if nfe is None else nfe)

    def __call__(self, net: Callable, z: torch.Tensor, nfe: int, seed: int) -> torch.Tensor:
        return self.fn(net, z, nfe, seed)


def _scheduler(problem: DiffusionNetwork, solver: str, options: dict, nfe: int):
    """diffusers' ``solver`` from the network's scheduler config with ``options``, set to ``nfe`` steps."""
    import diffusers

    scheduler = getattr(diffusers, solver).from_config(dict(problem.config), **options)
    scheduler.set_timesteps(num_inference_steps=nfe)
    return scheduler


def _diffusers_run(net: Callable, z: torch.Tensor, nfe: int, seed: int, *, problem: DiffusionNetwork, solver: str,
                   options: dict) -> torch.Tensor:
    """A pipeline's loop: x = z * init_noise_sigma; per timestep k, out = net(scale_model_input(x, k), k),
    x = step(out, k, x)."""
    scheduler = _scheduler(problem, solver, options, nfe)
    x = z * scheduler.init_noise_sigma
    extra = {"generator": torch.Generator().manual_seed(seed)} \
        if "generator" in inspect.signature(scheduler.step).parameters else {}
    for timestep in scheduler.timesteps:
        k = torch.full((x.shape[0],), float(timestep), dtype=x.dtype, device=x.device)
        out = net(scheduler.scale_model_input(x, timestep), k)
        x = scheduler.step(out, timestep, x, return_dict=False, **extra)[0]
    return x


def _diffusers_start(nfe: int, *, problem: DiffusionNetwork, solver: str, options: dict) -> tuple[float, float]:
    """(source time of timesteps[0], init_noise_sigma)."""
    scheduler = _scheduler(problem, solver, options, nfe)
    return problem.time_of_timestep(float(scheduler.timesteps[0])), float(scheduler.init_noise_sigma)


def _ve_denoiser(net: Callable, problem: DiffusionNetwork) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """D(x_ve, sigma): the network's x prediction at x = x_ve / sqrt(1 + sigma^2) (abar = 1 / (1 + sigma^2)) and the
    timestep of sigma (k-diffusion's ``CompVisDenoiser`` and ``CompVisVDenoiser``)."""
    def denoiser(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
        abar = 1 / (1 + float(sigma) ** 2)
        x = x_ve * math.sqrt(abar)
        k = problem.timestep_of_sigma(float(sigma))
        out = net(x, torch.full((x.shape[0],), k, dtype=x.dtype, device=x.device))
        return problem.denoised(out, x, abar)
    return denoiser


def _ve_start(nfe: int, *, problem: DiffusionNetwork) -> tuple[float, float]:
    """A VE run from x_ve = sigma_max z: at the last training step, the state sqrt(1 - abar) z."""
    sigma_max = problem.sigma_range()[1]
    return problem.time_of_timestep(problem.num_train_timesteps - 1.0), sigma_max / math.sqrt(1 + sigma_max ** 2)


def _ve_solver(net: Callable, z: torch.Tensor, nfe: int, seed: int, *, problem: DiffusionNetwork, solver: Callable,
               uniform: bool) -> torch.Tensor:
    """iPNDM or DEIS-tAB3 on nfe sigmas from sigma_max (EDM rho=7 down to sigma_min, or uniform in the training
    timestep down to 0), then 0."""
    lo, hi = problem.sigma_range()
    if uniform:
        last = problem.num_train_timesteps - 1
        sigmas = [problem.sigma_of_timestep(last * (1 - i / nfe)) for i in range(nfe)] + [0.0]
    else:
        sigmas = edm_sigmas(nfe, sigma_min=lo, sigma_max=hi)
    return solver(_ve_denoiser(net, problem), z * hi, sigmas)


def _k_diffusion(net: Callable, z: torch.Tensor, nfe: int, seed: int, *, problem: DiffusionNetwork,
                 sampler: str) -> torch.Tensor:
    """k-diffusion's ``sample_<sampler>`` on Karras sigmas (rho 7) of the schedule's own range from x_ve = sigma_max z
    (:func:`.peer_solvers.sample_k_diffusion`)."""
    lo, hi = problem.sigma_range()
    return sample_k_diffusion(_ve_denoiser(net, problem), z, nfe, seed, sampler=sampler, sigma_min=lo, sigma_max=hi)


def _option_text(key: str, value) -> str:
    return f"{value} spacing" if key == "timestep_spacing" else key.removeprefix("use_")


def _diffusers_peers(problem: DiffusionNetwork) -> dict[str, tuple[bool, str, DiscretePeer]]:
    """diffusers' DDIM (eta 0: ``step``'s default), DPM-Solver++ 2M and UniPC with each option, from the network's
    scheduler config."""
    peers = {}
    runs = [("DDIMScheduler", "DDIM", {"timestep_spacing": s}) for s in DDIM_SPACINGS]
    runs += [("DPMSolverMultistepScheduler", "DPM-Solver++ 2M", {key: value, "algorithm_type": "dpmsolver++",
                                                                   "solver_order": 2}) for key, value in DPM_OPTIONS]
    runs += [("UniPCMultistepScheduler", "UniPC", {key: value}) for key, value in UNIPC_OPTIONS]
    for solver, label, options in runs:
        key = next(k for k in options if k.startswith(("timestep_spacing", "use_")))
        name = f"diffusers {label} ({_option_text(key, options[key])})"
        grid = f"{solver}.set_timesteps of the model's scheduler config, {_option_text(key, options[key])}"
        peers[name] = (False, "diffusers", DiscretePeer(
            partial(_diffusers_run, problem=problem, solver=solver, options=options), grid,
            partial(_diffusers_start, problem=problem, solver=solver, options=options)))
    return peers


def discrete_peers(problem: DiffusionNetwork) -> dict[str, tuple[bool, str, DiscretePeer]]:
    """name -> (stochastic, needs, peer) for the discrete network ``problem``."""
    peers = _diffusers_peers(problem)
    lo, hi = problem.sigma_range()
    start = partial(_ve_start, problem=problem)
    for label, solver in (("iPNDM", sample_ipndm), ("DEIS-tAB3", sample_deis_tab)):
        for grid, uniform in ((f"EDM rho=7 sigmas from {hi:.3g} to {lo:.3g}, then 0", False),
                              ("uniform training timesteps from the last, then sigma 0", True)):
            peers[f"{label} ({'uniform timestep' if uniform else 'EDM rho=7'}, VE form)"] = (False, "", DiscretePeer(
                partial(_ve_solver, problem=problem, solver=solver, uniform=uniform), grid, start))
    for sampler in ("dpmpp_2m", "heun", "lms", "dpmpp_2m_sde"):
        peers[f"k-diffusion {sampler} (Karras rho=7, VE form)"] = (sampler.endswith("sde"), "k_diffusion", DiscretePeer(
            partial(_k_diffusion, problem=problem, sampler=sampler),
            f"Karras rho=7 sigmas from {hi:.3g} to {lo:.3g}, then 0", start))
    return peers
