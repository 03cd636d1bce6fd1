"""Peer samplers run on the same model for comparison (optional: ``pip install -e .[peers]``).

Each peer is a function (model, x0, nfe, seed) -> samples, written against the peer's public API.
A model here is ours: velocity on the linear schedule, t in [0, 1] from noise to data.
diffusers' flow convention (t = 1 - sigma, output minus our velocity) converts through
:mod:`lazyflow.runtime.integrations.flow_convention`.  The VE peers (iPNDM and DEIS-tAB3 of :mod:`.peer_solvers`,
k-diffusion's samplers) see the model as the denoiser D(x_ve, sigma) = x_t + (1 - t) v(x_t, t), sigma = (1 - t) / t,
x_ve = x_t / t (:func:`.peer_solvers.ve_denoiser`); diffusers' VP mode sees it as the noise prediction
eps = x_t - t v at the time t = 1 / (1 + sigma) of equal log snr, x_vp = x_t / (t sqrt(1 + sigma^2)).
A peer that starts at t0 > 0 (from sigma_max) is a :class:`StartedPeer`: its path is measured against the
model's ODE solved from where it starts.  Rows name their grid: in the name, else in :data:`PEER_GRIDS`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import LazyflowError
from ..integrations.flow_convention import time_of_timestep, velocity_of_output
from .peer_solvers import edm_sigmas, sample_deis_tab, sample_ipndm, sample_k_diffusion, uniform_t_sigmas, ve_denoiser

__all__ = ["PEERS", "available_peers", "bench_peers", "SKIPPED_SIGMA_OPTIONS", "PEER_GRIDS", "StartedPeer", "peer_start",
           "DDPM_SIGMA_MAX"]

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


@dataclass(frozen=True)
class StartedPeer:
    """A peer that starts at the flow time ``t0`` > 0 from the state ``scale`` * x0 (not from x0 at t = 0): a VE
    sampler from sigma_max starts at x_ve = sigma_max z, the flow state (1 - t0) z at t0 = 1 / (1 + sigma_max)."""

    fn: Callable
    t0: float
    scale: float

    @classmethod
    def ve(cls, fn: Callable, sigma_max: float) -> "StartedPeer":
        """A VE sampler from x_ve = sigma_max z: t0 = 1 / (1 + sigma_max), the state (1 - t0) z."""
        return cls(fn, 1 / (1 + sigma_max), sigma_max / (1 + sigma_max))

    def __call__(self, model: Model, x0: torch.Tensor, nfe: int, seed: int) -> torch.Tensor:
        return self.fn(model, x0, nfe, seed)


def peer_start(fn: Callable, nfe: int | None = None) -> tuple[float, float]:
    """(t0, scale): the peer starts at the source time t0 from scale * x0; (0, 1) for one that starts from x0 at 0.
    A peer whose start depends on its budget (a discrete network's scheduler: its first timestep) has
    ``start_at(nfe)``."""
    if callable(getattr(fn, "start_at", None)):
        return fn.start_at(nfe)
    return (fn.t0, fn.scale) if isinstance(fn, StartedPeer) else (0.0, 1.0)


def _ve_solver(model: Model, x: torch.Tensor, nfe: int, seed: int, *, solver: Callable, grid: Callable,
               sigma_max: float) -> torch.Tensor:
    """iPNDM or DEIS-tAB3 on ``grid``'s nfe sigmas from sigma_max then 0 (nfe steps, nfe calls: none at sigma = 0)."""
    return solver(ve_denoiser(model), x * sigma_max, grid(nfe, sigma_max=sigma_max))


def _k_diffusion(model: Model, x: torch.Tensor, nfe: int, seed: int, *, sampler: str,
                 sigma_max: float) -> torch.Tensor:
    """k-diffusion's ``sample_<sampler>`` on get_sigmas_karras(n, 0.002, sigma_max, rho=7) from x_ve = sigma_max z
    (:func:`.peer_solvers.sample_k_diffusion`) on the VE form of the velocity ``model``."""
    return sample_k_diffusion(ve_denoiser(model), x, nfe, seed, sampler=sampler, sigma_min=0.002, sigma_max=sigma_max)


def _ddpm_sigma_max() -> float:
    """sigma = sqrt((1 - abar) / abar) at diffusers' last DDPM timestep (linear betas 1e-4 .. 0.02, 1000 steps)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0)[-1]
    return float(((1 - abar) / abar).sqrt())


#: the first sigma of diffusers' VP schedulers (about 157.4): their runs start at x_vp = z there
DDPM_SIGMA_MAX = _ddpm_sigma_max()


def _vp(model: Model, z: torch.Tensor, nfe: int, seed: int, *, solver: str, option: str | None) -> torch.Tensor:
    """diffusers' ``solver`` in its VP (DDPM) mode with ``prediction_type="epsilon"`` (``option``: a sigma spacing,
    ``use_<option>_sigmas``): at its sigma_i the model is called at t = 1 / (1 + sigma_i) on x_t = x_vp t
    sqrt(1 + sigma_i^2) and gives eps = x_t - t v."""
    import diffusers

    options = {f"use_{option}_sigmas": True} if option else {}
    scheduler = getattr(diffusers, solver)(prediction_type="epsilon", **options)
    scheduler.set_timesteps(num_inference_steps=nfe)
    x = z * scheduler.init_noise_sigma
    for i, timestep in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        t = 1 / (1 + sigma)
        x_t = x * (t * math.sqrt(1 + sigma ** 2))
        eps = x_t - t * model(x_t, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        x = scheduler.step(eps, timestep, x, return_dict=False)[0]
    return x


def _vp_start() -> tuple[float, float]:
    """(t0, scale) of a diffusers VP run: x_vp = z at sigma_max is the flow state t0 sqrt(1 + sigma_max^2) z."""
    t0 = 1 / (1 + DDPM_SIGMA_MAX)
    return t0, t0 * math.sqrt(1 + DDPM_SIGMA_MAX ** 2)


#: the sigma spacings diffusers' UniPC and DPM-Solver++ run with in VP mode (None: the DDPM timesteps, linspace)
VP_SIGMA_OPTIONS = (None, "karras", "exponential", "beta")


def _new_peers() -> dict[str, tuple[bool, str, Callable]]:
    """The VE peers (iPNDM, DEIS-tAB3, k-diffusion's) and diffusers' multistep solvers in VP mode, by name."""
    from functools import partial

    peers: dict[str, tuple[bool, str, Callable]] = {}
    for label, solver in (("iPNDM", sample_ipndm), ("DEIS-tAB3", sample_deis_tab)):
        for grid_name, grid in (("EDM rho=7", edm_sigmas), ("uniform t", uniform_t_sigmas)):
            peers[f"{label} ({grid_name}, sigma_max 80)"] = (False, "", StartedPeer.ve(
                partial(_ve_solver, solver=solver, grid=grid, sigma_max=80.0), 80.0))
    for sigma_max in (80.0, 14.6):
        for sampler in ("dpmpp_2m", "heun", "lms", "dpmpp_2m_sde"):
            peers[f"k-diffusion {sampler} (Karras rho=7, sigma_max {sigma_max:g})"] = (
                sampler.endswith("sde"), "k_diffusion", StartedPeer.ve(
                    partial(_k_diffusion, sampler=sampler, sigma_max=sigma_max), sigma_max))
    for solver, label in (("UniPCMultistepScheduler", "UniPC"), ("DPMSolverMultistepScheduler", "DPM-Solver++ 2M")):
        for option in VP_SIGMA_OPTIONS:
            peers[f"diffusers {label} (VP epsilon, {option or 'DDPM timestep'} sigmas, sigma_max "
                  f"{DDPM_SIGMA_MAX:.1f})"] = (False, "diffusers", StartedPeer(
                      partial(_vp, solver=solver, option=option), *_vp_start()))
    return peers


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
    **_new_peers(),
}

#: the grids of the peers whose names do not say it (diffusers 0.42.1, read from its set_timesteps)
PEER_GRIDS = {
    "diffusers FlowMatchEuler": "flow sigmas: t uniform on [0, 0.999], then t = 1",
    "diffusers DPM-Solver++ 2M": "flow sigmas: t uniform from 0.001",
    "diffusers UniPC": "flow sigmas: t uniform from 1e-6",
    "diffusers FlowMatchEuler stochastic": "flow sigmas: t uniform on [0, 0.999], then t = 1",
    "diffusers SDE-DPM-Solver++ 2M": "flow sigmas: t uniform from 0.001",
    "flow_matching midpoint": "uniform t",
    "diffusers UniPC (karras sigmas)": "Karras sigmas of the DDPM range as flow sigmas sigma / (1 + sigma)",
    "flow_matching heun": "uniform t",
    "flow_matching rk4": "uniform t",
    "flow_matching cosine (ScheduleTransformedModel) midpoint": "uniform in the cosine frame's time, to 1 - 1e-4",
    "SiT-style Euler-Maruyama (SBDM, Mean last step)": "uniform t on [0.001, 0.96], then the mean",
}


#: the diffusers sigma options left out with flow sigmas, with why (diffusers 0.42.1, read in its set_timesteps and
#: measured on gmm64 at 4 and 8 NFE): none raises, but only UniPC's Karras branch converts its sigmas to flow sigmas
#: (sigma / (1 + sigma)); the others keep the DDPM schedule's sigmas (0.01 to 157), which the flow step reads
#: as alpha = 1 - sigma < 0, and every sample comes back non-finite.  Each runs instead in VP mode (the
#: "VP epsilon" rows, :data:`VP_SIGMA_OPTIONS`)
SKIPPED_SIGMA_OPTIONS = ("diffusers UniPC with use_exponential_sigmas or use_beta_sigmas, DPM-Solver++ 2M with "
                         "use_karras_sigmas, use_exponential_sigmas or use_beta_sigmas, on flow sigmas (with "
                         "use_flow_sigmas, diffusers 0.42 keeps these sigmas in DDPM units, 0.01 to 157, which its "
                         "flow step reads as alpha = 1 - sigma < 0: every sample is non-finite); each runs in VP "
                         "mode instead (the 'VP epsilon' rows)")


def bench_peers(loaded) -> tuple[dict[str, tuple[bool, Callable]], list[str]]:
    """:func:`available_peers` of a loaded model: a discrete diffusion network's (``loaded.diffusion``: the peers of
    :mod:`.discrete_peers`, called on that network) or the flow peers (called on the velocity)."""
    if getattr(loaded, "diffusion", None) is None:
        return available_peers()
    from .discrete_peers import SKIPPED_DISCRETE, discrete_peers

    return available_peers(discrete_peers(loaded.diffusion), SKIPPED_DISCRETE)


def _import(needs: str) -> None:
    """Import the package a peer needs (k-diffusion's samplers without its package's heavy imports)."""
    if needs == "k_diffusion":
        from ..integrations.k_diffusion_samplers import load_k_diffusion_sampling

        load_k_diffusion_sampling()
    else:
        __import__(needs)


def available_peers(peers: dict[str, tuple[bool, str, Callable]] | None = None,
                    note: str = SKIPPED_SIGMA_OPTIONS) -> tuple[dict[str, tuple[bool, Callable]], list[str]]:
    """(the ``peers`` (default :data:`PEERS`) whose package imports, names skipped with the reason after ``note``,
    by default :data:`SKIPPED_SIGMA_OPTIONS`)."""
    usable, skipped = {}, [note]
    for name, (stochastic, needs, fn) in (PEERS if peers is None else peers).items():
        if needs:
            try:
                _import(needs)
            except (ImportError, LazyflowError):
                how = "pip install --no-deps k-diffusion==0.1.1.post1" if needs == "k_diffusion" else \
                    "pip install -e .[peers]"
                skipped.append(f"{name} (needs {needs}: {how})")
                continue
        usable[name] = (stochastic, fn)
    return usable, skipped
