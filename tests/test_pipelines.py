"""LazyFlowScheduler in real diffusers pipelines (SD3, FLUX, SD3 img2img) built from tiny random
components in code: no weights, no text encoders (prompt embeddings are passed), ``output_type="latent"``
or a tiny VAE."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")   # the diffusers pipelines import it

from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,  # noqa: E402
                       SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline)

from lazyflow import INTEGRATORS, LazyflowError, sample  # noqa: E402
from lazyflow.diffusers import LazyFlowScheduler  # noqa: E402
from lazyflow.runtime.integrations.flow_convention import from_diffusers_flow  # noqa: E402
from lazyflow.runtime.models.guidance import guided  # noqa: E402
from lazyflow.runtime.core.schedule import load_schedule  # noqa: E402

SCHEDULES = ("linear", "vp", "pointmass", "linear-sde")
DETERMINISTIC = ("linear", "vp")
N, STEPS = 2, 4
SD3_SIGMAS = [1.0, 0.75, 0.5, 0.25]
#: the integrators that need no data statistics nor a solver file (the data frames: test_data_frame.py;
#: bespoke solvers: test_bespoke.py)
CLASSIC = {name: method for name, method in INTEGRATORS.items() if method.classic}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16,
                                        pooled_projection_dim=16, out_channels=4).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=None, text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None)
    g = torch.Generator().manual_seed(1)
    cond = {"prompt_embeds": torch.randn(N, 5, 16, generator=g), "pooled_prompt_embeds": torch.randn(N, 16, generator=g),
            "negative_prompt_embeds": torch.randn(N, 5, 16, generator=g),
            "negative_pooled_prompt_embeds": torch.randn(N, 16, generator=g)}
    latents = torch.randn(N, 4, 8, 8, generator=g)
    return _quiet(pipe), cond, latents


def _sd3_call(pipe, cond, latents, *, guidance=1.0, **options):
    keep = cond if guidance > 1 else {k: v for k, v in cond.items() if not k.startswith("negative")}
    options = {"num_inference_steps": STEPS, **options}
    return pipe(**keep, latents=latents, height=64, width=64, guidance_scale=guidance, output_type="latent",
                **options).images


def _use(pipe, **config):
    pipe.scheduler = LazyFlowScheduler.from_config(pipe.scheduler.config, **config)
    return pipe.scheduler


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    g = torch.Generator().manual_seed(2)
    cond = {"prompt_embeds": torch.randn(N, 5, 32, generator=g), "pooled_prompt_embeds": torch.randn(N, 32, generator=g)}
    latents = torch.randn(N, 16, 4, generator=g)   # packed: (8/2 * 8/2) tokens of 1 * 4 channels
    return _quiet(pipe), cond, latents


def _flux_call(pipe, cond, latents):
    return pipe(**cond, latents=latents, height=64, width=64, num_inference_steps=STEPS, output_type="latent").images


def _sd3_kwargs(cond):
    return {"encoder_hidden_states": cond["prompt_embeds"], "pooled_projections": cond["pooled_prompt_embeds"]}


def _flux_kwargs(cond):
    ids = FluxPipeline._prepare_latent_image_ids(N, 4, 4, "cpu", torch.float32)
    return {"encoder_hidden_states": cond["prompt_embeds"], "pooled_projections": cond["pooled_prompt_embeds"],
            "txt_ids": torch.zeros(5, 3), "img_ids": ids, "guidance": None}


# --- FlowMatchEuler's own configuration ---------------------------------------------------------

def test_linear_euler_reproduces_flow_match_euler_in_sd3(sd3):
    pipe, cond, latents = sd3
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference = _sd3_call(pipe, cond, latents, sigmas=SD3_SIGMAS)
    _use(pipe, schedule="linear", integrator="euler")
    ours = _sd3_call(pipe, cond, latents, sigmas=SD3_SIGMAS)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)


def test_linear_euler_reproduces_flow_match_euler_in_flux_with_dynamic_shift(flux):
    pipe, cond, latents = flux
    reference = _flux_call(pipe, cond, latents)
    euler_sigmas = pipe.scheduler.sigmas.clone()
    scheduler = _use(pipe, schedule="linear", integrator="euler")
    ours = _flux_call(pipe, cond, latents)
    assert torch.allclose(scheduler.sigmas, euler_sigmas, atol=1e-6)   # shifted by mu once, as FlowMatchEuler does
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def test_default_grid_is_shifted_once():
    """Without sigmas FlowMatchEuler shifts its already shifted sigma_min again (diffusers issue 13243)."""
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = LazyFlowScheduler.from_config(euler.config, schedule="linear", integrator="euler")
    ours.set_timesteps(6)
    plain = np.linspace(1.0, 1e-3, 6)
    once = torch.tensor(3 * plain / (1 + 2 * plain), dtype=torch.float32)
    assert torch.allclose(ours.sigmas[:-1], once, atol=1e-6)
    euler.set_timesteps(6)
    assert not torch.allclose(euler.sigmas[:-1], once, atol=1e-4)
    assert torch.allclose(ours.timesteps, 1000 * once, atol=1e-3)


# --- every schedule and integrator runs; the deterministic ones equal sample ---------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_integrator_runs_in_sd3(sd3, schedule):
    pipe, cond, latents = sd3
    for name, method in CLASSIC.items():
        scheduler = _use(pipe, schedule=schedule, integrator=name)
        out = _sd3_call(pipe, cond, latents)
        assert out.shape == latents.shape and torch.isfinite(out).all(), (schedule, name)
        assert scheduler.order == method.calls_per_step
        assert len(scheduler.timesteps) == method.nfe(STEPS) == scheduler.nfe
        assert scheduler.step_index == scheduler.nfe      # one step per network call


@pytest.mark.parametrize("schedule", DETERMINISTIC)
def test_deterministic_runs_equal_sample_in_sd3(sd3, schedule):
    pipe, cond, latents = sd3
    model = from_diffusers_flow(pipe.transformer)
    for name in CLASSIC:
        scheduler = _use(pipe, schedule=schedule, integrator=name)
        ours = _sd3_call(pipe, cond, latents)
        ref = sample(model, latents.shape, schedule=schedule, source="linear", steps=STEPS, integrator=name,
                     grid=scheduler.times, initial=latents, model_kwargs=_sd3_kwargs(cond))
        assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (schedule, name, (ours - ref).abs().max())


@pytest.mark.parametrize("schedule,integrator", [("vp", "multistep-pc"), ("linear", "heun"), ("vp", "exp-midpoint")])
def test_deterministic_runs_equal_sample_in_flux(flux, schedule, integrator):
    pipe, cond, latents = flux
    scheduler = _use(pipe, schedule=schedule, integrator=integrator)
    ours = _flux_call(pipe, cond, latents)
    ref = sample(from_diffusers_flow(pipe.transformer, timestep_scale=1), latents.shape, schedule=schedule,
                 steps=STEPS, integrator=integrator, grid=scheduler.times, initial=latents,
                 model_kwargs=_flux_kwargs(cond))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def _first_call_on(model, latents):
    """sample's point-mass run calls the model on 0 at snr = 0; the pipeline called it on the latents, and
    the scheduler turns that output into the denoiser there (eta_X = latents + velocity)."""
    seen = []

    def wrapped(x, t, **kwargs):
        seen.append(1)
        if len(seen) == 1:
            return model(latents, t, **kwargs) + latents
        return model(x, t, **kwargs)
    return wrapped


@pytest.mark.parametrize("schedule,integrator", [("pointmass", "multistep-pc"), ("pointmass", "euler"),
                                                 ("linear-sde", "exponential"), ("pointmass", "exp-midpoint")])
def test_stochastic_runs_follow_the_seed_as_sample_does(sd3, schedule, integrator):
    pipe, cond, latents = sd3
    scheduler = _use(pipe, schedule=schedule, integrator=integrator, seed=7)
    ours = _sd3_call(pipe, cond, latents)
    model = from_diffusers_flow(pipe.transformer)
    if load_schedule(schedule).point_mass:
        model = _first_call_on(model, latents)
    ref = sample(model, latents.shape, schedule=schedule, steps=STEPS, integrator=integrator, grid=scheduler.times,
                 seed=7, initial=latents, model_kwargs=_sd3_kwargs(cond))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()
    scheduler.set_seed(8)
    other = _sd3_call(pipe, cond, latents)
    assert not torch.allclose(other, ours)
    again = _use(pipe, schedule=schedule, integrator=integrator, seed=7)
    assert again.seed == 7 and torch.equal(_sd3_call(pipe, cond, latents), ours)


def test_diffusion_scale_in_the_scheduler_is_samples(sd3):
    """diffusion_scale in the config runs the same weaker-diffusion SDE as sample does."""
    pipe, cond, latents = sd3
    scheduler = _use(pipe, schedule="linear-sde", integrator="multistep-pc", seed=3, diffusion_scale=0.5)
    ours = _sd3_call(pipe, cond, latents)
    target = load_schedule("linear-sde").with_diffusion_scale(0.5)
    ref = sample(from_diffusers_flow(pipe.transformer), latents.shape, schedule=target, steps=STEPS,
                 integrator="multistep-pc", grid=scheduler.times, seed=3, initial=latents,
                 model_kwargs=_sd3_kwargs(cond))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()
    assert pipe.scheduler.config.diffusion_scale == 0.5   # saved in the config
    _use(pipe, schedule="linear-sde", integrator="multistep-pc", seed=3, diffusion_scale=1.0)
    assert not torch.allclose(_sd3_call(pipe, cond, latents), ours)


def test_the_pipelines_own_guidance_batching_works_unchanged(sd3):
    pipe, cond, latents = sd3
    _use(pipe, schedule="vp", integrator="multistep-pc")
    scheduler = pipe.scheduler
    ours = _sd3_call(pipe, cond, latents, guidance=3.0)
    model = guided(from_diffusers_flow(pipe.transformer), 3.0,
                   null={"encoder_hidden_states": "negative", "pooled_projections": "negative_pooled"})
    kwargs = {**_sd3_kwargs(cond), "negative": cond["negative_prompt_embeds"],
              "negative_pooled": cond["negative_pooled_prompt_embeds"]}
    ref = sample(model, latents.shape, schedule="vp", steps=STEPS, integrator="multistep-pc", grid=scheduler.times,
                 initial=latents, model_kwargs=kwargs)
    assert model.calls == scheduler.nfe == STEPS     # a guided call is one call on a doubled batch
    assert torch.allclose(ours, ref, atol=5e-5, rtol=1e-5), (ours - ref).abs().max()
    plain = _sd3_call(pipe, cond, latents)
    assert not torch.allclose(plain, ours, atol=1e-3)


# --- img2img: a run that starts below sigma = 1 ---------------------------------------------------

@pytest.fixture(scope="module")
def img2img(sd3):
    pipe, cond, _ = sd3
    torch.manual_seed(3)
    vae = AutoencoderKL(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.06, scaling_factor=1.5).eval()
    i2i = StableDiffusion3Img2ImgPipeline(transformer=pipe.transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                          vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                          tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    image = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    return _quiet(i2i), cond, image


def _i2i_call(pipe, cond, image, steps=5, strength=0.6):
    keep = {k: v for k, v in cond.items() if not k.startswith("negative")}
    sigmas = list(np.linspace(1.0, 0.1, steps))      # explicit: FlowMatchEuler's default shifts twice
    return pipe(**keep, image=image, strength=strength, sigmas=sigmas, guidance_scale=1.0, height=8,
                width=8, output_type="latent", generator=torch.Generator().manual_seed(5)).images


def _record_noised(scheduler):
    seen = []
    original = scheduler.scale_noise

    def scale_noise(sample_, timestep, noise=None):
        seen.append(original(sample_, timestep, noise))
        return seen[-1]
    scheduler.scale_noise = scale_noise
    return seen


def test_img2img_linear_euler_reproduces_flow_match_euler(img2img):
    pipe, cond, image = img2img
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference_noised = _record_noised(pipe.scheduler)
    reference = _i2i_call(pipe, cond, image)
    scheduler = _use(pipe, schedule="linear", integrator="euler")
    noised = _record_noised(scheduler)
    ours = _i2i_call(pipe, cond, image)
    assert scheduler.begin_index == 2                   # 5 steps at strength 0.6 start at step 2
    assert torch.allclose(noised[0], reference_noised[0], atol=1e-6)   # scale_noise as FlowMatchEuler's
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_img2img_runs_in_every_schedule(img2img, schedule):
    pipe, cond, image = img2img
    for name in ("euler", "multistep-pc", "heun"):
        scheduler = _use(pipe, schedule=schedule, integrator=name)
        out = _i2i_call(pipe, cond, image)
        assert out.shape == (N, 4, 8, 8) and torch.isfinite(out).all(), (schedule, name)
        assert scheduler.times[0] == 0 and scheduler.step_index == scheduler.nfe


def test_img2img_starts_from_the_scaled_latents(img2img):
    """Below sigma = 1 the state is c(t0) * latents; for a standard target that is sample's start
    alpha(t0) * initial with initial = c(t0) / alpha(t0) * latents on the remaining grid."""
    pipe, cond, image = img2img
    scheduler = _use(pipe, schedule="vp", integrator="multistep-pc")
    noised = _record_noised(scheduler)
    ours = _i2i_call(pipe, cond, image)
    k0 = scheduler.begin_index
    times = scheduler.times[k0:]
    target, source = load_schedule("vp"), load_schedule("linear")
    t0 = times[:1]
    tau0 = source.time_of_log_snr(target.log_snr(t0))
    now, then = target.values(t0), source.values(tau0)
    c = float((now.alpha + now.beta) / (then.alpha + then.beta))
    initial = noised[0] * (c / float(now.alpha))
    ref = sample(from_diffusers_flow(pipe.transformer), (N, 4, 8, 8), schedule="vp", steps=len(times) - 1,
                 integrator="multistep-pc", grid=times, initial=initial, model_kwargs=_sd3_kwargs(cond))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()


# --- the scheduler's own interface -----------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path, sd3):
    pipe, cond, latents = sd3
    scheduler = _use(pipe, schedule="pointmass", integrator="multistep-pc", seed=3, grid="pipeline")
    first = _sd3_call(pipe, cond, latents)
    scheduler.save_pretrained(tmp_path)
    loaded = LazyFlowScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert loaded.config.schedule == "pointmass" and loaded.config.shift == 3.0 and loaded.seed == 3
    pipe.scheduler = loaded
    assert torch.equal(_sd3_call(pipe, cond, latents), first)


def test_step_index_lookup_and_two_stage_timesteps():
    scheduler = LazyFlowScheduler(schedule="linear", integrator="heun")
    scheduler.set_timesteps(3)
    ts = scheduler.timesteps
    assert scheduler.order == 2 and len(ts) == 5 and ts[1] == ts[2] and ts[3] == ts[4]
    assert scheduler.index_for_timestep(ts[0]) == 0 and scheduler.index_for_timestep(ts[1]) == 2
    assert scheduler.init_noise_sigma == 1.0 and scheduler.begin_index is None and scheduler.step_index is None


def test_refusals():
    with pytest.raises(LazyflowError, match="stochastic schedule"):
        LazyFlowScheduler(stochastic_sampling=True)
    with pytest.raises(LazyflowError, match="unknown integrator"):
        LazyFlowScheduler(integrator="rk45")
    with pytest.raises(LazyflowError, match="mu"):
        LazyFlowScheduler(use_dynamic_shifting=True).set_timesteps(4)
    scheduler = LazyFlowScheduler(schedule="linear", integrator="euler")
    scheduler.set_timesteps(2)
    x = torch.zeros(1, 2)
    with pytest.raises(LazyflowError, match="integer index"):
        scheduler.step(x, 0, x)
    out = scheduler.step(x, scheduler.timesteps[0], x).prev_sample
    with pytest.raises(LazyflowError, match="not those the previous step returned"):
        scheduler.step(x, scheduler.timesteps[1], out + 1)


def test_a_lazyflow_grid_replaces_the_pipeline_sigmas(sd3):
    pipe, cond, latents = sd3
    scheduler = _use(pipe, schedule="pointmass", integrator="euler", grid="logsnr")
    out = _sd3_call(pipe, cond, latents)
    assert torch.isfinite(out).all() and len(scheduler.timesteps) == STEPS
    lam = load_schedule("pointmass").log_snr(scheduler.times[1:-1])
    assert torch.allclose(lam, torch.linspace(-3, 3, STEPS + 1, dtype=torch.float64)[1:-1])


def test_a_grid_file_tuned_at_a_diffusion_scale_brings_its_scale(sd3, tmp_path):
    from lazyflow.runtime.core.gridfile import TunedGrid, save_grid_file

    pipe, cond, latents = sd3
    times = tuple(float(v) for v in torch.linspace(0, 1, STEPS + 1, dtype=torch.float64) ** 0.8)
    path = save_grid_file(TunedGrid(times, "linear-sde(diffusion*0.5)", "multistep-pc", diffusion_scale=0.5),
                          tmp_path / "g.json")
    scheduler = _use(pipe, schedule="linear-sde", integrator="multistep-pc", grid=str(path), seed=2,
                     diffusion_scale=1.0)
    assert scheduler.target.diffusion_scale == 0.5
    ours = _sd3_call(pipe, cond, latents)
    ref = sample(from_diffusers_flow(pipe.transformer), latents.shape,
                 schedule=load_schedule("linear-sde").with_diffusion_scale(0.5), steps=STEPS, integrator="multistep-pc",
                 grid=list(times), seed=2, initial=latents, model_kwargs=_sd3_kwargs(cond))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()
    with pytest.raises(LazyflowError, match="times of"):
        _use(pipe, schedule="linear-sde", integrator="multistep-pc", grid=str(path), diffusion_scale=0.25)
    _use(pipe, schedule="linear-sde", integrator="multistep-pc", grid="pipeline", diffusion_scale=1.0)


def test_a_bespoke_solver_file_runs_in_the_pipeline_as_in_sample(sd3, tmp_path):
    from lazyflow.runtime.core.bespoke import midpoint_weights
    from lazyflow.runtime.core.gridfile import TunedGrid, save_grid_file

    pipe, cond, latents = sd3
    times, a, w = midpoint_weights(STEPS)
    w[2, 1] *= 0.9                            # not the midpoint rule any more: the file's own weights run
    solver = TunedGrid(tuple(times.tolist()), "linear", "bespoke", source="linear", x0_weights=tuple(a.tolist()),
                       call_weights=tuple(tuple(w[k, :k + 1].tolist()) for k in range(STEPS)))
    path = save_grid_file(solver, tmp_path / "solver.json")
    scheduler = _use(pipe, schedule="linear", integrator="bespoke", grid=str(path))
    ours = _sd3_call(pipe, cond, latents)
    assert len(scheduler.timesteps) == STEPS
    ref = sample(from_diffusers_flow(pipe.transformer), latents.shape, integrator="bespoke", grid=path,
                 initial=latents, model_kwargs=_sd3_kwargs(cond))
    assert torch.allclose(ours, ref, atol=2e-5, rtol=1e-5), (ours - ref).abs().max()
    with pytest.raises(LazyflowError, match="run it with integrator 'bespoke'"):
        _use(pipe, schedule="linear", integrator="midpoint", grid=str(path))
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def test_diffusers_stays_optional():
    """Importing lazyflow (runtime, sampler, guidance, SiT, adapters) never imports diffusers; without
    diffusers, lazyflow.diffusers refuses with the install advice (one subprocess for both)."""
    code = ("import sys\n"
            "import lazyflow, lazyflow.runtime, lazyflow.runtime.core.sampler, lazyflow.runtime.models.guidance\n"
            "import lazyflow.runtime.models.sit, lazyflow.runtime.models.adapters\n"
            "print('imported:', 'diffusers' in sys.modules)\n"
            "sys.modules['diffusers'] = None\n"
            "from lazyflow import LazyflowError\n"
            "try:\n    from lazyflow.diffusers import LazyFlowScheduler\n"
            "except LazyflowError as err:\n    print('refused:', err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "imported: False" in done.stdout
    assert "refused:" in done.stdout and "pip install 'lazyflow[peers]'" in done.stdout
