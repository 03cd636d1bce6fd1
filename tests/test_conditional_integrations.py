"""Conditional statistics where users sample: a guided SiT (per-label and first-call statistics, from
Python and ``lazyflow sample``/``lazyflow stats``), the diffusers scheduler in a guided SD3 pipeline and in
img2img, k-diffusion's sampler signature and the ComfyUI node; each equal to ``sample`` with the same
statistics, and per-label statistics refused where the labels cannot be seen."""
from __future__ import annotations

import pytest
import torch

from lazyflow import DataStats, LazyflowError, sample, stats_from_model
from lazyflow.cli import main
from lazyflow.runtime.core.data_stats import ConditionalStats
from lazyflow.runtime.models.adapters import from_sit
from lazyflow.runtime.models.gmm import conditional_mixture
from lazyflow.runtime.models.guidance import guided
from lazyflow.runtime.models.sit import save_sit

from test_sit import small_sit

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

SIT_FLAGS = ["--model-kind", "sit-s/2", "--model-param", "hidden_size=32", "--model-param", "depth=2",
             "--model-param", "num_heads=4"]


@pytest.fixture(scope="module")
def guided_sit():
    net = small_sit()
    return net, guided(from_sit(net), 1.5, null={"y": net.num_classes})


def test_a_guided_sit_samples_with_per_label_and_first_call_statistics(guided_sit):
    net, model = guided_sit
    labels = torch.arange(40) % 4
    shape = (40, 4, 8, 8)
    per_label = stats_from_model(model, shape, kind="diag", steps=6, condition="label", model_kwargs={"y": labels})
    first = stats_from_model(model, shape, kind="diag", steps=6, condition="first-call", model_kwargs={"y": labels})
    assert isinstance(per_label, ConditionalStats) and per_label.labels == (0, 1, 2, 3) and first.first_call_mean
    for stats in (per_label, first):
        x = sample(model, (8, 4, 8, 8), integrator="data-multistep-pc", steps=4, data_stats=stats,
                   model_kwargs={"y": labels[:8]})
        assert torch.isfinite(x).all()
        parts = sample(model, (8, 4, 8, 8), integrator="data-multistep-pc", steps=4, data_stats=stats,
                       model_kwargs={"y": labels[:8]}, batch_size=3)
        assert torch.allclose(x, parts, atol=1e-5)            # each sample keeps its own label's frame in any batch


def test_the_stats_and_sample_commands_on_a_guided_sit(tmp_path, capsys):
    ckpt = save_sit(small_sit(), tmp_path / "sit.pt")
    flags = [*SIT_FLAGS, "--class-labels", "1,2,3", "--guidance", "1.5"]
    for condition in ("label", "first-call"):
        out = tmp_path / f"{condition}.safetensors"
        assert main(["stats", "--from-model", str(ckpt), *flags, "--n", "30", "--steps", "4", "--condition", condition,
                     "--out", str(out)]) == 0
        assert main(["sample", "--model", str(ckpt), *flags, "--n", "6", "--steps", "4", "--integrator",
                     "data-multistep", "--data-stats", str(out), "--out", str(tmp_path / f"{condition}.pt")]) == 0
        x = torch.load(tmp_path / f"{condition}.pt", weights_only=True)
        assert x.shape == (6, 4, 8, 8) and torch.isfinite(x).all()
    printed = capsys.readouterr().out
    assert "per y (3 labels, 10-10 samples each)" in printed and "the mean from the first call" in printed
    assert main(["stats", "--from-model", "digits", "--condition", "label", "--n", "8", "--steps", "2",
                 "--out", str(tmp_path / "d.safetensors")]) == 2
    assert "has no class labels" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sd3_guided():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from test_pipelines import N, _quiet
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=16,
                                        pooled_projection_dim=16, out_channels=4).eval()
    pipe = _quiet(StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                           vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                           tokenizer_2=None, text_encoder_3=None, tokenizer_3=None))
    g = torch.Generator().manual_seed(1)
    cond = {"prompt_embeds": torch.randn(N, 5, 16, generator=g), "pooled_prompt_embeds": torch.randn(N, 16, generator=g),
            "negative_prompt_embeds": torch.randn(N, 5, 16, generator=g),
            "negative_pooled_prompt_embeds": torch.randn(N, 16, generator=g)}
    return pipe, cond, torch.randn(N, 4, 8, 8, generator=g)


def test_the_scheduler_takes_first_call_statistics_in_a_guided_sd3_pipeline(sd3_guided, tmp_path):
    from lazyflow.diffusers import LazyFlowScheduler
    from lazyflow.runtime.integrations.flow_convention import from_diffusers_flow
    from test_pipelines import _sd3_call, _sd3_kwargs

    pipe, cond, latents = sd3_guided
    model = guided(from_diffusers_flow(pipe.transformer), 3.0,
                   null={"encoder_hidden_states": "negative", "pooled_projections": "negative_pooled"})
    kwargs = {**_sd3_kwargs(cond), "negative": cond["negative_prompt_embeds"],
              "negative_pooled": cond["negative_pooled_prompt_embeds"]}
    many = {k: v.repeat(4, *[1] * (v.dim() - 1)) for k, v in kwargs.items()}
    with torch.no_grad():
        stats = stats_from_model(model, (8, 4, 8, 8), kind="diag", steps=4, condition="first-call", model_kwargs=many,
                                 model_dtype=torch.float32)
    path = stats.save(tmp_path / "first.safetensors")
    pipe.scheduler = LazyFlowScheduler.from_config(pipe.scheduler.config, schedule="linear",
                                                   integrator="data-multistep-pc", data_stats=str(path))
    ours = _sd3_call(pipe, cond, latents, guidance=3.0)
    with torch.no_grad():
        ref = sample(model, latents.shape, schedule="linear", steps=4, integrator="data-multistep-pc",
                     grid=pipe.scheduler.times, initial=latents, model_kwargs=kwargs, data_stats=stats)
    assert torch.isfinite(ours).all() and torch.allclose(ours, ref, atol=5e-5, rtol=1e-5), (ours - ref).abs().max()
    per_label = ConditionalStats("y", (0, 1), (stats.with_first_call_mean(False),) * 2)
    with pytest.raises(LazyflowError, match="never sees the labels"):
        LazyFlowScheduler(integrator="data-multistep", data_stats=str(per_label.save(tmp_path / "labels.safetensors")))


def test_k_diffusion_and_the_comfyui_node_take_first_call_and_per_label_statistics(tmp_path):
    from lazyflow.k_diffusion import sample_lazyflow
    from lazyflow.runtime.integrations.comfyui import sampler_options

    mixture = conditional_mixture(4, classes=3, dim=6)
    x_model = mixture.view(prediction="x")
    labels = torch.arange(9) % 3

    def denoiser(x, sigma, y):                 # k-diffusion's VE denoiser of the mixture: x = x0 + sigma n
        t = 1 / (1 + sigma)
        return x_model(x * t[:, None], t, y=y)

    sigmas = torch.tensor([80.0, 10.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    noise = torch.randn(9, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    train = mixture.exact_samples(900, 2, torch.arange(900) % 3).double()
    per_label = ConditionalStats.from_samples(train, torch.arange(900) % 3, kind="full")
    first = DataStats.from_samples(train, kind="full").with_first_call_mean()
    for stats in (per_label, first):
        out = sample_lazyflow(denoiser, noise, sigmas, extra_args={"y": labels}, integrator="data-multistep",
                              schedule="vp", data_stats=stats, disable=True)
        assert out.shape == noise.shape and torch.isfinite(out).all()
    with pytest.raises(LazyflowError, match="per y"):
        sample_lazyflow(denoiser, noise, sigmas, integrator="data-multistep", data_stats=per_label, disable=True)
    path = first.save(tmp_path / "first.safetensors")
    assert sampler_options("vp", "data-multistep", 1.0, "diffusion", str(path))["data_stats"].first_call_mean
    with pytest.raises(LazyflowError, match="ComfyUI conditions on prompts"):
        sampler_options("vp", "data-multistep", 1.0, "diffusion", str(per_label.save(tmp_path / "l.safetensors")))
