"""The lazy property on the grids users sample on: every data-frame integrator is exact on Gaussian data on any
grid (uniform, logsnr, flow sigmas shifted as SD3's pipeline does, k-diffusion's Karras sigmas from 80 and from
14.6, exponential sigmas) at 1, 2, 4 and 8 steps, in float64 to 1e-10 (the scheduler: 1e-6, its timesteps are
float32), through each entry point: ``sample``,
k-diffusion's ``sample_lazyflow`` with its defaults (no statistics: the frame N(E[X | c], v I), v the default frame
variance), the ComfyUI
sampler and the diffusers scheduler.  The integrators the docs list as not lazy are checked not to be (so the
list is true).

The exact answer: for data N(mu, diag(s^2)) the probability-flow ODE of the linear schedule maps a state x at
time t0 to X = mu + s (x - t0 mu) / sqrt(r0), r0 = (1 - t0)^2 + s^2 t0^2, per coordinate (the invariant
(I_t - t mu) / sqrt(r_t) is constant along the flow); k-diffusion's x = X + sigma Z is I_t / t at t = 1/(1 + sigma).
"""
from __future__ import annotations

import math

import pytest
import torch

from lazyflow.runtime.core import defaults
from lazyflow.runtime.core.data_stats import DataStats
from lazyflow.runtime.core.sampler import sample
from lazyflow.runtime.integrations.k_diffusion_samplers import sample_lazyflow

MU = torch.tensor([0.7, -0.3, 0.1], dtype=torch.float64)
S = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)          # unit variance: sample()'s frame without statistics
S_SIGMAS = math.sqrt(defaults.SIGMAS_FRAME_VARIANCE) * S        # the frame of sample_lazyflow and the ComfyUI node
S_DIAG = torch.tensor([0.5, 1.3, 2.0], dtype=torch.float64)     # any variances: the data's own statistics
STARTS = torch.linspace(-2.5, 2.5, 5, dtype=torch.float64)[:, None] * torch.tensor([1.0, -0.6, 0.3])
DATA_FRAMES = ("data-euler", "data-multistep", "data-multistep-pc", "data-multistep3", "data-multistep3-pc", "data-2m",
               "data-2m-pc")


def _velocity(s: torch.Tensor):
    """The exact velocity of the linear schedule for data N(MU, diag(s^2))."""
    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64).reshape(-1, 1)
        r = (1 - t) ** 2 + s**2 * t**2
        eta_x = MU + s**2 * t * (x - t * MU) / r
        return (eta_x - x) / (1 - t)
    return velocity


def _denoiser(s: torch.Tensor):
    """k-diffusion's exact denoiser E[X | X + sigma Z = x] for data N(MU, diag(s^2))."""
    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(torch.float64).reshape(-1, 1)
        return MU + s**2 / (s**2 + sigma**2) * (x - MU)
    return denoiser


def _flow_of(x: torch.Tensor, t0: float, s: torch.Tensor) -> torch.Tensor:
    """The exact ODE map of the state x at t0 to t = 1."""
    r0 = (1 - t0) ** 2 + s**2 * t0**2
    return MU + s * (x - t0 * MU) / torch.sqrt(r0)


def _karras(n: int, sigma_max: float, sigma_min: float = 0.002, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def _exponential(n: int, sigma_max: float = 80.0, sigma_min: float = 0.002) -> torch.Tensor:
    sig = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def _shifted_flow_times(n: int, shift: float = 3.0) -> list[float]:
    """SD3's grid: flow sigmas linspace(1, 0) shifted by ``shift``, as times t = 1 - sigma."""
    sig = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    return (1 - shift * sig / (1 + (shift - 1) * sig)).tolist()


def _flow_times_of(sigmas: torch.Tensor) -> list[float]:
    return (1 / (1 + sigmas)).tolist()


GRIDS = {
    "uniform": lambda n: "uniform",
    "logsnr": lambda n: "logsnr",
    "shifted flow sigmas": _shifted_flow_times,
    "karras from 80": lambda n: _flow_times_of(_karras(n, 80.0)),
    "karras from 14.6": lambda n: _flow_times_of(_karras(n, 14.6)),
    "exponential": lambda n: _flow_times_of(_exponential(n)),
}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("integrator", DATA_FRAMES)
def test_sample_data_frames_are_exact_on_gaussian_data_on_every_grid(grid, integrator):
    for s, stats in ((S_DIAG, DataStats("diag", MU.clone(), S_DIAG**2)), (S, None)):   # own statistics; default
        for steps in (1, 2, 4, 8):
            spec = GRIDS[grid](steps)
            t0 = 0.0 if isinstance(spec, str) else spec[0]
            x = sample(_velocity(s), (len(STARTS), 3), steps=steps if isinstance(spec, str) else None, grid=spec,
                       integrator=integrator, data_stats=stats, dtype=torch.float64, initial=STARTS)
            want = _flow_of((1 - t0) * STARTS, t0, s)   # sample() starts from alpha(t0) * initial
            assert (x - want).abs().max() < 1e-10, (grid, integrator, steps, stats is None)


@pytest.mark.parametrize("sigmas", ["karras from 80", "karras from 14.6", "exponential"])
def test_k_diffusion_defaults_are_exact_on_gaussian_data_of_the_frame_variance(sigmas):
    for steps in (1, 2, 4, 8):
        sig = {"karras from 80": lambda n: _karras(n, 80.0), "karras from 14.6": lambda n: _karras(n, 14.6),
               "exponential": _exponential}[sigmas](steps)
        x = STARTS * sig[0]
        out = sample_lazyflow(_denoiser(S_SIGMAS), x, sig, disable=True)     # defaults: no statistics given
        t0 = float(1 / (1 + sig[0]))
        assert (out - _flow_of(t0 * x, t0, S_SIGMAS)).abs().max() < 1e-10, (sigmas, steps)
        diag = DataStats("diag", MU.clone(), S_DIAG**2)
        out = sample_lazyflow(_denoiser(S_DIAG), x, sig, disable=True, data_stats=diag)
        assert (out - _flow_of(t0 * x, t0, S_DIAG)).abs().max() < 1e-10, (sigmas, steps, "diag")


def test_the_sde_variant_keeps_the_unit_variance_frame():
    """``sample_lazyflow_sde`` without statistics integrates in N(E[X | c], I) (its frame before the ODE default's
    variance was measured): at diffusion scale 0 it is that frame's ODE, exact on unit-variance Gaussian data on
    Karras sigmas (1e-10) and not on data of the ODE default's variance; at scale 1 its statistics are unit."""
    from lazyflow.k_diffusion import sample_lazyflow_sde
    from lazyflow.runtime.core.schedule import load_schedule
    from lazyflow.runtime.integrations.k_diffusion_samplers import resolved_integrator

    for steps in (2, 4):
        sig = _karras(steps, 14.6)
        t0 = float(1 / (1 + sig[0]))
        out = sample_lazyflow_sde(_denoiser(S), STARTS * sig[0], sig, disable=True, diffusion_scale=0.0, seed=0)
        assert (out - _flow_of(t0 * STARTS * sig[0], t0, S)).abs().max() < 1e-10, steps
        off = sample_lazyflow_sde(_denoiser(S_SIGMAS), STARTS * sig[0], sig, disable=True, diffusion_scale=0.0, seed=0)
        assert (off - _flow_of(t0 * STARTS * sig[0], t0, S_SIGMAS)).abs().max() > 1e-3, steps
    _, stats = resolved_integrator("data-sde", None, torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64),
                                   load_schedule("linear-sde"), (3,))
    assert float(stats.var) == 1.0


def test_comfyui_sampler_defaults_are_exact_on_gaussian_data_of_the_frame_variance():
    from lazyflow.runtime.integrations.comfyui import sample_comfy, sampler_options

    options = sampler_options(defaults.SCHEDULE, defaults.SIGMAS_INTEGRATOR, 1.0, "diffusion")
    for steps in (1, 2, 4, 8):
        sig = _karras(steps, 14.6)
        out = sample_comfy(_denoiser(S_SIGMAS), STARTS * sig[0], sig, disable=True, **options)
        t0 = float(1 / (1 + sig[0]))
        assert (out - _flow_of(t0 * STARTS * sig[0], t0, S_SIGMAS)).abs().max() < 1e-10, steps


def test_diffusers_scheduler_data_frame_is_exact_on_the_shifted_pipeline_grid(tmp_path):
    pytest.importorskip("diffusers")
    from lazyflow.runtime.integrations.diffusers import LazyFlowScheduler

    path = DataStats("diag", MU.clone(), S_DIAG**2).save(tmp_path / "stats.safetensors")
    velocity = _velocity(S_DIAG)
    for integrator in ("data-multistep-pc", "data-2m-pc"):
        for steps in (1, 2, 4, 8):
            scheduler = LazyFlowScheduler(shift=3.0, integrator=integrator, data_stats=str(path))
            scheduler.set_timesteps(steps)
            x = STARTS.clone()
            for timestep in scheduler.timesteps:
                t = 1 - torch.full((len(x),), float(timestep) / 1000, dtype=torch.float64)
                x = scheduler.step(-velocity(x, t), timestep, x, return_dict=False)[0]   # diffusers: noise - data
            # diffusers hands the model float32 timesteps (t rounded to ~6e-8): the velocity is evaluated there
            assert (x - _flow_of(STARTS, 0.0, S_DIAG)).abs().max() < 1e-6, (integrator, steps)


@pytest.mark.parametrize("schedule,integrator", [("linear", "multistep-pc"), ("vp", "multistep-pc"),
                                                 ("vp", "exponential"), ("vp", "multistep")])
def test_the_integrators_documented_as_not_lazy_are_not_exact_on_gaussian_data(schedule, integrator):
    """docs/k-diffusion.md and defaults.py say these are exact on no grid for Gaussian data (they extrapolate or
    freeze eta_X, which moves along a Gaussian's path): a Karras grid at 4 steps shows it."""
    sig = _karras(4, 80.0)
    out = sample_lazyflow(_denoiser(S), STARTS * sig[0], sig, disable=True, schedule=schedule, integrator=integrator)
    t0 = float(1 / (1 + sig[0]))
    assert (out - _flow_of(t0 * STARTS * sig[0], t0, S)).abs().max() > 1e-2


def test_shifted_grid_is_the_sd3_pipelines_flow_sigmas_in_any_frame():
    from lazyflow.runtime.core.grids import Shifted, make_grid, parse_grid
    from lazyflow.runtime.core.schedule import load_schedule
    from lazyflow.errors import LazyflowError

    linear, vp = load_schedule("linear"), load_schedule("vp")
    for steps in (1, 2, 5, 8):
        want = torch.tensor(_shifted_flow_times(steps, 3.0), dtype=torch.float64)
        assert torch.allclose(make_grid(linear, linear, steps, parse_grid("shift:3")), want, atol=1e-14)
        got = make_grid(vp, linear, steps, Shifted(3.0))[1:-1]       # the vp frame: the same log snr
        assert torch.allclose(vp.log_snr(got), linear.log_snr(want[1:-1]), atol=1e-10)
    assert torch.allclose(make_grid(linear, linear, 6, "shift:1"), torch.linspace(0, 1, 7, dtype=torch.float64))
    with pytest.raises(LazyflowError, match="shift"):
        parse_grid("shift:-2")
