"""Equivalence with the peers where both apply (optional extra: pip install -e .[peers])."""
import math

import pytest
import torch

from lazyflow import load_schedule, sample
from lazyflow.runtime.core.noise import standard_normal

from exact import GMMVelocity, gaussian_velocity

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64
MODEL = GMMVelocity(torch.tensor([0.6, 0.4], dtype=F64), torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64),
                    torch.tensor([0.2, 0.4], dtype=F64))


def test_linear_euler_equals_diffusers_flow_match_euler():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    steps = 7
    scheduler.set_timesteps(num_inference_steps=steps)
    sigmas = scheduler.sigmas.double()
    x = standard_normal(0, range(16), 0, (2,)).double()
    for timestep in scheduler.timesteps:
        t = 1.0 - float(timestep) / scheduler.config.num_train_timesteps
        output = -MODEL(x, torch.full((16,), t, dtype=F64))           # diffusers predicts Z - X
        x = scheduler.step(output, timestep, x, return_dict=False)[0]
    ours = sample(MODEL, (16, 2), schedule="linear", steps=steps, grid=(1 - sigmas).tolist(), dtype=F64, integrator="euler")
    assert torch.allclose(ours, x.double(), atol=1e-6)


def test_converted_velocity_equals_flow_matching_schedule_transform():
    """Our velocity in the cosine (vp) frame equals flow_matching's ScheduleTransformedModel."""
    pytest.importorskip("flow_matching")
    from flow_matching.path.scheduler import CondOTScheduler, CosineScheduler, ScheduleTransformedModel
    from flow_matching.utils import ModelWrapper

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return MODEL(x, t.reshape(-1).expand(x.shape[0]))

    theirs = ScheduleTransformedModel(Wrapped(None), CondOTScheduler(), CosineScheduler())
    seen = []
    sample(MODEL, (32, 2), schedule="vp", steps=6, grid=[0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], dtype=F64,
           callback=seen.append, integrator="euler")
    for info in seen[1:]:   # (their cosine model is singular at t = 0)
        expected = theirs(info.x, torch.full((32, 1), info.t, dtype=F64))
        assert torch.allclose(info.drift, expected, atol=1e-8)


def _tiny_sd3():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
        pos_embed_max_size=16).eval()
    gen = torch.Generator().manual_seed(1)
    cond = {"encoder_hidden_states": torch.randn(6, 3, 16, generator=gen),
            "pooled_projections": torch.randn(6, 8, generator=gen)}
    return diffusers, transformer, cond


def test_diffusers_transformer_adapter_matches_the_diffusers_loop():
    """A randomly initialised SD3 transformer through the adapter: our linear Euler equals diffusers'
    FlowMatchEulerDiscreteScheduler loop on the raw transformer, on the same grid."""
    from lazyflow.runtime.integrations.flow_convention import from_diffusers_flow

    diffusers, transformer, cond = _tiny_sd3()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(num_inference_steps=4)
    x = standard_normal(0, range(6), 0, (4, 8, 8))
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            out = transformer(hidden_states=x, timestep=timestep.expand(6), return_dict=False, **cond)[0]
            x = scheduler.step(out, timestep, x, return_dict=False)[0]
        ours = sample(from_diffusers_flow(transformer), (6, 4, 8, 8), schedule="linear", steps=4,
                      grid=(1 - scheduler.sigmas.double()).tolist(), model_kwargs=cond, integrator="euler")
    assert torch.allclose(ours, x, atol=1e-5)


def test_diffusers_transformer_in_a_lazy_frame_with_chunked_conditioning():
    from lazyflow.runtime.integrations.flow_convention import from_diffusers_flow

    _, transformer, cond = _tiny_sd3()
    model = from_diffusers_flow(transformer)
    with torch.no_grad():
        whole = sample(model, (6, 4, 8, 8), schedule="pointmass", steps=3, integrator="multistep-pc", model_kwargs=cond)
        chunked = sample(model, (6, 4, 8, 8), schedule="pointmass", steps=3, integrator="multistep-pc",
                         model_kwargs=cond, batch_size=4)
    assert torch.isfinite(whole).all()
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_the_added_peers_run_and_count_their_calls():
    """UniPC on Karras sigmas (the one sigma option diffusers converts to flow sigmas) and flow_matching's rk4
    (which calls the model at t = 1: an exact mixture, finite there)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("flow_matching")
    from lazyflow.runtime.evaluation.peers import PEERS
    from lazyflow.runtime.models import gmm

    model = gmm.ExactMixtureModel(gmm.random_mixture(0, dim=2, components=2, rank=1), (2,), "two")
    x0 = standard_normal(0, range(64), 0, (2,)).double()
    reference = sample(model, (64, 2), schedule="linear", integrator="multistep3-pc", steps=400, dtype=F64, initial=x0)
    for name, nfe, calls in (("diffusers UniPC (karras sigmas)", 8, 8), ("flow_matching rk4", 8, 8),
                             ("flow_matching rk4", 6, 4)):
        seen = []
        x = PEERS[name][2](lambda x, t: seen.append(t) or model(x, t), x0.clone(), nfe, 0)
        assert len(seen) == calls and torch.isfinite(x).all(), name
        assert (x - reference).norm(dim=1).mean() < 1.0, name    # near the converged ODE (a loose check)


@pytest.mark.parametrize("solver,option", [("UniPCMultistepScheduler", "exponential"), ("UniPCMultistepScheduler", "beta"),
                                           ("DPMSolverMultistepScheduler", "karras"),
                                           ("DPMSolverMultistepScheduler", "exponential"),
                                           ("DPMSolverMultistepScheduler", "beta")])
def test_the_sigma_options_the_bench_leaves_out_give_non_finite_samples(solver, option):
    """What SKIPPED_SIGMA_OPTIONS says of diffusers (it keeps these sigmas in DDPM units with flow sigmas): if a
    diffusers release converts them, this fails and the bench should run them as peers."""
    diffusers = pytest.importorskip("diffusers")
    from lazyflow.runtime.evaluation.peers import SKIPPED_SIGMA_OPTIONS
    from lazyflow.runtime.integrations.flow_convention import time_of_timestep, velocity_of_output

    assert f"use_{option}_sigmas" in SKIPPED_SIGMA_OPTIONS
    scheduler = getattr(diffusers, solver)(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0,
                                           **{f"use_{option}_sigmas": True})
    scheduler.set_timesteps(num_inference_steps=4)
    x = standard_normal(0, range(16), 0, (2,)).double()
    for timestep in scheduler.timesteps:
        t = torch.full((16,), time_of_timestep(float(timestep), scheduler.config.num_train_timesteps), dtype=F64)
        x = scheduler.step(velocity_of_output(MODEL(x, t)), timestep, x, return_dict=False)[0]
    assert not torch.isfinite(x).all()


def _k_diffusion():
    from lazyflow.errors import LazyflowError
    from lazyflow.runtime.integrations.k_diffusion_samplers import load_k_diffusion_sampling

    try:
        return load_k_diffusion_sampling()
    except LazyflowError as err:
        pytest.skip(str(err))


def test_k_diffusion_euler_on_the_ve_denoiser_is_our_linear_euler():
    """x_ve = x_t / t, sigma = (1 - t) / t, D = x_t + (1 - t) v: k-diffusion's sample_euler on Karras sigmas from 80
    equals lazyflow's linear Euler on the times t = 1 / (1 + sigma) from (1 - t_0) z (float64)."""
    from lazyflow.runtime.evaluation.peer_solvers import ve_denoiser

    k = _k_diffusion()
    sigmas = k.get_sigmas_karras(6, 0.002, 80.0, rho=7.0).double()
    z = standard_normal(0, range(32), 0, (2,)).double()
    denoise = ve_denoiser(MODEL)
    theirs = k.sample_euler(lambda x, sigma: denoise(x, float(sigma[0])), z * float(sigmas[0]), sigmas, disable=True)
    ours = sample(MODEL, (32, 2), schedule="linear", integrator="euler", grid=(1 / (1 + sigmas)).tolist(), dtype=F64,
                  initial=z)
    assert torch.allclose(theirs, ours, rtol=0, atol=1e-10)


def _first_call(fn, *args, **kwargs):
    seen = []

    def model(x, t):
        seen.append((x.clone(), t.clone()))
        return MODEL(x, t)
    fn(model, *args, **kwargs)
    return seen[0]


@pytest.mark.parametrize("name,needs", [("k-diffusion dpmpp_2m (Karras rho=7, sigma_max 14.6)", "k_diffusion"),
                                        ("iPNDM (EDM rho=7, sigma_max 80)", ""),
                                        ("diffusers UniPC (VP epsilon, karras sigmas, sigma_max 157.4)", "diffusers")])
def test_a_started_peers_reference_starts_where_the_peer_starts(name, needs):
    """The first model call of the peer and of its path reference (path_reference from t0, as the bench's
    PathReferences.from_start gives it x0 * scale / (1 - t0)) see the same state at the same time."""
    from lazyflow.runtime.evaluation.paths import path_reference
    from lazyflow.runtime.evaluation.peers import PEERS, peer_start

    if needs == "k_diffusion":
        _k_diffusion()
    elif needs:
        pytest.importorskip(needs)
    fn = PEERS[name][2]
    t0, scale = peer_start(fn)
    z = standard_normal(0, range(8), 0, (2,)).double()
    x_peer, t_peer = _first_call(fn, z.clone(), 4, 0)
    x_ref, t_ref = _first_call(lambda m, x0: path_reference(m, "linear", x0, 8, t0=t0), z * (scale / (1 - t0)))
    assert t0 > 0 and torch.allclose(t_peer, t_ref, rtol=1e-6) and torch.allclose(x_peer, x_ref, rtol=1e-6)


@pytest.mark.slow   # 4 s: a 100-step reference; the closed-form check below is the fast one
def test_diffusers_vp_mode_converges_to_the_ode_from_its_start():
    """UniPC in VP epsilon mode on Karras sigmas (the time of equal log snr, x_t = x_vp t sqrt(1 + sigma^2),
    eps = x_t - t v) at 40 NFE lands on the model's own ODE solution from where it starts: the conversion is
    exact (measured 3.5e-3 against 200 reference steps)."""
    pytest.importorskip("diffusers")
    from lazyflow.runtime.evaluation.paths import path_reference
    from lazyflow.runtime.evaluation.peers import PEERS, peer_start

    fn = PEERS["diffusers UniPC (VP epsilon, karras sigmas, sigma_max 157.4)"][2]
    t0, scale = peer_start(fn)
    z = standard_normal(0, range(32), 0, (2,)).double()
    reference = path_reference(MODEL, "linear", z * (scale / (1 - t0)), 100, t0=t0)
    assert reference.check < 1e-2 and reference.error(fn(MODEL, z.clone(), 40, 0)) < 0.02


@pytest.mark.parametrize("name,needs", [("diffusers UniPC (VP epsilon, karras sigmas, sigma_max 157.4)", "diffusers"),
                                        ("diffusers DPM-Solver++ 2M (VP epsilon, exponential sigmas, sigma_max 157.4)",
                                         "diffusers"),
                                        ("k-diffusion dpmpp_2m (Karras rho=7, sigma_max 14.6)", "k_diffusion"),
                                        ("DEIS-tAB3 (uniform t, sigma_max 80)", "")])
def test_a_started_peer_converges_to_the_exact_ode_solution_from_its_start(name, needs):
    """X ~ N(0, S^2) in one dimension: from the flow state scale * z at t0 (x_ve = scale z / t0 at sigma_0), the
    probability-flow ODE ends at x_ve S / sqrt(S^2 + sigma_0^2); each peer at 80 NFE lands there (diffusers'
    float32 internals stop it near 3e-4)."""
    from lazyflow.runtime.evaluation.peers import PEERS, peer_start

    if needs == "k_diffusion":
        _k_diffusion()
    elif needs:
        pytest.importorskip(needs)
    var = 0.09
    t0, scale = peer_start(PEERS[name][2])
    sigma0 = (1 - t0) / t0
    z = torch.linspace(-2, 2, 9, dtype=F64).reshape(9, 1)
    exact = scale * z / t0 * math.sqrt(var / (var + sigma0 ** 2))
    x = PEERS[name][2](gaussian_velocity(var), z.clone(), 80, 0)
    assert (x - exact).abs().max() < 2e-3


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun", "lms", "dpmpp_2m_sde"])
def test_k_diffusion_peers_keep_a_float32_state(sampler):
    """A float32 module refuses float64 input: k-diffusion's append_dims of float64 sigmas would promote the state."""
    from lazyflow.runtime.evaluation.peers import PEERS

    _k_diffusion()

    def float32_only(x, t):
        assert x.dtype == torch.float32 and t.dtype == torch.float32
        return MODEL(x.double(), t.double()).float()
    x = PEERS[f"k-diffusion {sampler} (Karras rho=7, sigma_max 80)"][2](float32_only, torch.ones(4, 2), 6, 0)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
