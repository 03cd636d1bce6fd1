"""LazyDiffusionScheduler in diffusers' diffusion pipelines (DDPM, DDIM, Stable Diffusion, SDXL and img2img) built
from tiny random parts in code (UNet2DModel, UNet2DConditionModel, CLIP text encoders and a CLIP tokenizer on a
26-letter vocabulary, a one-block VAE): DDIM reproduced in float64, guidance, data frames, refusals, round trip."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import (AutoencoderKL, DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler,  # noqa: E402
                       StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel, UNet2DModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

from lazyflow import LazyflowError, sample  # noqa: E402
from lazyflow.diffusers import LazyDiffusionScheduler, LazyFlowScheduler  # noqa: E402
from lazyflow.runtime.core.beta_schedules import alphas_cumprod_of_config  # noqa: E402
from lazyflow.runtime.core.data_stats import DataStats  # noqa: E402
from lazyflow.runtime.core.discrete_schedule import schedule_of_config  # noqa: E402
from lazyflow.runtime.integrations.diffusion_convention import from_diffusers_unet  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
#: DDIM configurations: Stable Diffusion's (epsilon, leading, steps_offset 1, final alpha abar_0), DDPM's linear
#: one ending at the data, a zero-terminal-snr v-prediction one (trailing: its first call is at snr = 0), and a
#: clipped cosine one
DDIM_CONFIGS = {
    "sd-epsilon": {**SD_BETAS, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False},
    "linear-epsilon": {"beta_schedule": "linear", "set_alpha_to_one": True, "clip_sample": False},
    "zero-snr-v": {**SD_BETAS, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                   "timestep_spacing": "trailing", "clip_sample": False},
    "cosine-clipped": {"beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "clip_sample_range": 0.5},
}


def _quiet(*pipes):
    """The pipelines without their progress bars."""
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes if len(pipes) > 1 else pipes[0]


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).double().eval()


def _reference_ddim(config: dict) -> DDIMScheduler:
    """diffusers' DDIM stepping on the float64 table (its own is float32, 7e-6 off in x at abar near 1:
    tests/test_discrete_schedule.py compares the tables)."""
    ddim = DDIMScheduler(**config)
    table = alphas_cumprod_of_config(ddim.config)
    ddim.alphas_cumprod = table
    ddim.final_alpha_cumprod = torch.tensor(1.0 if ddim.config.set_alpha_to_one else float(table[0]), dtype=torch.float64)
    return ddim


def _denoise(unet, scheduler, x: torch.Tensor, steps: int, **step_options) -> torch.Tensor:
    """DDIMPipeline's loop."""
    scheduler.set_timesteps(steps)
    for timestep in scheduler.timesteps:
        with torch.no_grad():
            out = unet(x, timestep).sample
        x = scheduler.step(out, timestep, x, **step_options).prev_sample
    return x


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize("name", list(DDIM_CONFIGS))
def test_ddim_is_the_exponential_step_on_its_timesteps(unet, name, steps):
    """DDIM (eta 0) = integrator exponential in the vp frame (or the table's own) on DDIM's timesteps, to 1e-6 in
    float64 (measured: 3e-13); clipped: DDIM's use_clipped_model_output=True."""
    ddim = _reference_ddim(DDIM_CONFIGS[name])
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(steps))
    reference = _denoise(unet, ddim, x, steps, use_clipped_model_output=True)
    for target in ("vp", "table"):
        lazy = LazyDiffusionScheduler.from_config(ddim.config, schedule="vp", integrator="exponential")
        if target == "table":
            lazy.target = lazy.source
        assert (_denoise(unet, lazy, x, steps) - reference).abs().max() < 1e-6, target
        assert lazy.timesteps.tolist() == ddim.timesteps.tolist()


def test_ddim_is_sample_with_the_exponential_integrator(unet):
    """The same run with lazyflow.sample: the network on its discrete schedule, the grid of the scheduler's
    times, started from the latents (initial = latents / alpha(t_0))."""
    config = DDIM_CONFIGS["sd-epsilon"]
    ddim = _reference_ddim(config)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    reference = _denoise(unet, ddim, x, 5)
    source = schedule_of_config(ddim.config)
    lazy = LazyDiffusionScheduler.from_config(ddim.config, schedule="vp", integrator="exponential")
    lazy.set_timesteps(5)
    model, prediction = from_diffusers_unet(unet, source, "epsilon")
    alpha0 = float(torch.cos(torch.pi / 2 * lazy.times[0]))
    with torch.no_grad():
        out = sample(model, x.shape, schedule="vp", source=source, prediction=prediction, integrator="exponential",
                     grid=lazy.times, final_step="euler", initial=x / alpha0, dtype=torch.float64)
    assert (out - reference).abs().max() < 1e-6


def test_ddim_and_ddpm_pipelines_run(unet):
    """DDIMPipeline with the scheduler swapped equals DDIM's (its clamped images to 1e-6); DDPMPipeline (DDPM's
    config: variance_type, clip_sample) runs with a lazy schedule at 4 steps."""
    ddim = _reference_ddim(DDIM_CONFIGS["linear-epsilon"])
    pipe = _quiet(DDIMPipeline(unet=unet, scheduler=ddim))
    pipe.scheduler = ddim
    reference = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4,
                     output_type="np").images
    pipe.scheduler = LazyDiffusionScheduler.from_config(ddim.config, schedule="vp", integrator="exponential")
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np").images
    assert abs(images - reference).max() < 1e-6
    ddpm = _quiet(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))
    ddpm.scheduler = LazyDiffusionScheduler.from_config(ddpm.scheduler.config)
    images = ddpm(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np").images
    assert images.shape == (2, 8, 8, 3) and ddpm.scheduler.nfe == 4


# --- Stable Diffusion 1.x / 2.x and SDXL ---------------------------------------------------------

def _tokenizer(folder) -> CLIPTokenizer:
    """A CLIP tokenizer on the 26 letters (each a word piece and a word end), no merges."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16, pad_token="!")


def _text_encoder(projection: bool = False):
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=32, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=2, vocab_size=64, max_position_embeddings=16,
                            projection_dim=32, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae():
    return AutoencoderKL(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=4, norm_num_groups=1).eval()


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=2).eval()
    parts = dict(vae=_vae(), text_encoder=_text_encoder(), tokenizer=_tokenizer(tmp_path_factory.mktemp("sd")), unet=unet,
                 scheduler=DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"]), safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    return _quiet(StableDiffusionPipeline(**parts), StableDiffusionImg2ImgPipeline(**parts))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
                                norm_num_groups=1).eval()
    folder = tmp_path_factory.mktemp("sdxl")
    parts = dict(vae=_vae(), text_encoder=_text_encoder(), text_encoder_2=_text_encoder(projection=True),
                 tokenizer=_tokenizer(folder), tokenizer_2=_tokenizer(folder), unet=unet,
                 scheduler=DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"]))
    return _quiet(StableDiffusionXLPipeline(**parts), StableDiffusionXLImg2ImgPipeline(**parts))


def _stats_file(tmp_path) -> str:
    return str(DataStats.isotropic((4, 8, 8), 1.0).save(tmp_path / "latents.safetensors"))


def _run(pipe, *, steps: int, guidance: float, image=None, **options) -> torch.Tensor:
    pipe.scheduler = LazyDiffusionScheduler.from_config(DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"]).config, **options)
    kwargs = {"image": image, "strength": 0.5} if image is not None else {"height": 8, "width": 8}
    return pipe(["a cat", "a dog"], num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_stable_diffusion_runs_with_guidance_at_4_and_8_steps(kind, sd, sdxl, tmp_path):
    pipe = (sd if kind == "sd" else sdxl)[0]
    stats = _stats_file(tmp_path)
    for steps in (4, 8):
        guided = _run(pipe, steps=steps, guidance=5.0)
        assert guided.shape == (2, 4, 8, 8) and torch.isfinite(guided).all() and pipe.scheduler.nfe == steps
        assert not torch.allclose(guided, _run(pipe, steps=steps, guidance=1.0))          # guidance reaches the step
        framed = _run(pipe, steps=steps, guidance=5.0, integrator="data-multistep-pc", data_stats=stats)
        assert torch.isfinite(framed).all() and not torch.allclose(framed, guided)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_guided_stable_diffusion_with_the_ddim_configuration_is_ddim(kind, sd, sdxl):
    """Guidance 5 through the pipeline's own classifier-free guidance: exponential in vp equals DDIM (float32 on
    DDIM's float32 table: to 1e-5 of the latents' scale; measured 5e-7)."""
    pipe = (sd if kind == "sd" else sdxl)[0]
    pipe.scheduler = DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"])
    reference = pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=5.0, output_type="latent", height=8,
                     width=8, generator=torch.Generator().manual_seed(0)).images
    out = _run(pipe, steps=4, guidance=5.0, schedule="vp", integrator="exponential")
    assert (out - reference).abs().max() < 1e-5 * reference.abs().max()


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_img2img_starts_at_the_strengths_timestep(kind, sd, sdxl):
    """strength 0.5 of 4 steps: the run starts at the third timestep, from add_noise's sqrt(abar) X + sqrt(1-abar) Z
    (as DDIM's add_noise, to float32 precision)."""
    pipe = (sd if kind == "sd" else sdxl)[1]
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = _run(pipe, steps=4, guidance=5.0, image=image)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all() and pipe.scheduler.step_index == 4
    ddim = DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"])
    ddim.set_timesteps(4)
    x, z = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    pipe.scheduler.set_timesteps(4)
    pipe.scheduler.set_begin_index(2)
    assert torch.allclose(pipe.scheduler.add_noise(x, z, ddim.timesteps[2:3]), ddim.add_noise(x, z, ddim.timesteps[2:3]),
                          atol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    scheduler = LazyDiffusionScheduler(**DDIM_CONFIGS["zero-snr-v"], schedule="vp", integrator="multistep",
                                       trained_betas=None)
    scheduler.save_pretrained(tmp_path)
    again = LazyDiffusionScheduler.from_pretrained(tmp_path)
    def saved(config):
        return {key: value for key, value in config.items() if not key.startswith("_")}
    assert saved(again.config) == saved(scheduler.config) and again.source == scheduler.source
    trained = LazyDiffusionScheduler(trained_betas=torch.linspace(1e-4, 0.02, 1000).tolist())
    trained.save_pretrained(tmp_path / "trained")
    assert LazyDiffusionScheduler.from_pretrained(tmp_path / "trained").source == trained.source


def test_what_it_cannot_honour_is_refused_in_one_line(tmp_path):
    ddim_config = DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"]).config
    scheduler = LazyDiffusionScheduler.from_config(ddim_config)
    scheduler.set_timesteps(4)
    x = torch.zeros(1, 4, 2, 2)
    refusals = {
        "thresholding": lambda: LazyDiffusionScheduler(thresholding=True),
        "timestep_type": lambda: LazyDiffusionScheduler(timestep_type="continuous"),
        "grid": lambda: LazyDiffusionScheduler(grid="uniform"),
        "prediction_type": lambda: LazyDiffusionScheduler(prediction_type="flow"),
        "timestep_spacing": lambda: LazyDiffusionScheduler(timestep_spacing="karras"),
        "beta_schedule": lambda: LazyDiffusionScheduler(beta_schedule="sigmoid"),
        "eta": lambda: scheduler.step(x, scheduler.timesteps[0], x, eta=0.5),
        "variance_noise": lambda: scheduler.step(x, scheduler.timesteps[0], x, variance_noise=x),
        "integer timestep": lambda: scheduler.step(x, 981, x),
        "timesteps": lambda: scheduler.set_timesteps(timesteps=[1, 500]),
        "steps": lambda: scheduler.set_timesteps(1001),
        "flow scheduler": lambda: LazyFlowScheduler.from_config(ddim_config),
        "bespoke": lambda: LazyDiffusionScheduler(integrator="bespoke"),
        "data frame without statistics": lambda: LazyDiffusionScheduler(integrator="data-multistep"),
        "noise at snr 0": lambda: LazyDiffusionScheduler(**{**DDIM_CONFIGS["zero-snr-v"], "prediction_type": "epsilon"}
                                                         ).set_timesteps(4),
    }
    for name, refuse in refusals.items():
        with pytest.raises(LazyflowError) as err:
            refuse()
        assert "\n" not in str(err.value), name
    with pytest.raises(LazyflowError, match="LazyDiffusionScheduler.from_config"):
        LazyFlowScheduler.from_config(ddim_config)


def test_two_stage_calls_fall_between_timesteps_unless_rounded():
    """midpoint's second call is between two pipeline timesteps: a float timestep, or its nearest integer."""
    config = DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"]).config
    exact = LazyDiffusionScheduler.from_config(config, integrator="midpoint")
    rounded = LazyDiffusionScheduler.from_config(config, integrator="midpoint", rounded_timesteps=True)
    for scheduler in (exact, rounded):
        scheduler.set_timesteps(4)
    assert exact.order == 2 and exact.timesteps[0::2].tolist() == [751.0, 501.0, 251.0, 1.0]
    assert (exact.timesteps != exact.timesteps.round()).any()
    assert torch.equal(rounded.timesteps, exact.timesteps.round())


def _karras_solver(source, tmp_path, name="solver.json", steps=4):
    """A bespoke solver file on the table: DPM-Solver++(2M) on its Karras sigmas from timestep 999, one weight
    changed so that the file's own weights are what runs."""
    from lazyflow.runtime.core.bespoke import fitted_source
    from lazyflow.runtime.core.discrete_schedule import noisiest_training_time
    from lazyflow.runtime.core.gridfile import TunedGrid, save_grid_file
    from lazyflow.runtime.evaluation.bespoke_starts import dpmpp_2m_weights, table_karras_times

    times = table_karras_times(source, steps, noisiest_training_time(source))
    a, w = dpmpp_2m_weights(times, source)
    w[2, 1] *= 0.9
    solver = TunedGrid(tuple(times.tolist()), source.describe(), "bespoke", source=fitted_source(source),
                       prediction="noise", x0_weights=tuple(a.tolist()),
                       call_weights=tuple(tuple(w[k, :k + 1].tolist()) for k in range(steps)))
    return save_grid_file(solver, tmp_path / name)


def test_a_bespoke_solver_file_runs_in_the_pipeline_as_in_sample(unet, tmp_path):
    """A solver file fitted on the table (here DPM-Solver++(2M) on its Karras sigmas, one weight changed) runs in
    the pipeline's loop as lazyflow.sample runs it (float64, 1e-10): its own 4 steps, its first call at training
    timestep 999, from init_noise_sigma = alpha(t_0) times the noise; what it cannot honour is one line."""
    config = DDIM_CONFIGS["sd-epsilon"]
    source = schedule_of_config(DDIMScheduler(**config).config)
    path = _karras_solver(source, tmp_path)
    lazy = LazyDiffusionScheduler.from_config(DDIMScheduler(**config).config, integrator="bespoke", grid=str(path))
    z = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    lazy.set_timesteps(4)
    abar = float(alphas_cumprod_of_config(lazy.config)[-1])
    assert lazy.timesteps[0] == 999 and lazy.init_noise_sigma == pytest.approx((1 - abar) ** 0.5, abs=1e-12)
    ours = _denoise(unet, lazy, z * lazy.init_noise_sigma, 4)
    model, prediction = from_diffusers_unet(unet, source, "epsilon")
    with torch.no_grad():
        theirs = sample(model, z.shape, schedule=source, source=source, prediction=prediction, integrator="bespoke",
                        grid=path, initial=z, dtype=torch.float64)
    assert (ours - theirs).abs().max() < 1e-10
    refusals = {
        "steps": lambda: lazy.set_timesteps(5),
        "img2img": lambda: lazy.set_begin_index(2),
        "integrator": lambda: LazyDiffusionScheduler.from_config(lazy.config, integrator="multistep-pc"),
        "another table": lambda: LazyDiffusionScheduler.from_config(
            {**lazy.config, **DDIM_CONFIGS["linear-epsilon"]}, integrator="bespoke").set_timesteps(4),
        "not a file": lambda: LazyDiffusionScheduler(grid="uniform"),
    }
    for name, refuse in refusals.items():
        with pytest.raises(LazyflowError) as err:
            refuse()
        assert "\n" not in str(err.value), name


def test_stable_diffusion_runs_a_bespoke_solver_with_guidance(sd, tmp_path):
    """The solver file in a guided StableDiffusionPipeline: its 4 calls at its own timesteps, the pipeline's
    latents scaled by init_noise_sigma = alpha(t_0) (prepare_latents), finite latents; img2img is refused."""
    source = schedule_of_config(DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"]).config)
    path = _karras_solver(source, tmp_path)
    pipe, seen = sd[0], []
    pipe.scheduler = LazyDiffusionScheduler.from_config(DDIMScheduler(**DDIM_CONFIGS["sd-epsilon"]).config,
                                                        integrator="bespoke", grid=str(path))
    latents = pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=5.0, output_type="latent", height=8,
                   width=8, generator=torch.Generator().manual_seed(0),
                   callback_on_step_end=lambda pipe, i, t, kw: seen.append(float(t)) or kw).images
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all() and sd[0].scheduler.nfe == 4
    assert seen == sd[0].scheduler.timesteps.tolist() and seen[0] == 999.0
    with pytest.raises(LazyflowError, match="img2img"):
        _run(sd[1], steps=4, guidance=5.0, image=latents, integrator="bespoke", grid=str(path))
