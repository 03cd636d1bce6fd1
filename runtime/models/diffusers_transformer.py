"""The ``diffusers-transformer`` model kind: a diffusers flow transformer saved with ``save_pretrained``
(a folder with ``config.json`` and safetensors weights: SD3's ``SD3Transformer2DModel``, FLUX's
``FluxTransformer2DModel``, ...) and a safetensors file of prompt embeddings, outside any pipeline.

The embeddings file holds ``encoder_hidden_states`` (P, L, D) (or the pipelines' name ``prompt_embeds``)
and, where the transformer takes it, ``pooled_projections`` (P, D') (or ``pooled_prompt_embeds``): P
prompts, sample i gets prompt i mod P.  Any other tensor in the file (FLUX's ``txt_ids``, ``img_ids``) is
passed to every call as it is.  The network goes through the one adapter of diffusers' flow convention
(:func:`~lazyflow.runtime.integrations.flow_convention.from_diffusers_flow`: t = 1 - sigma, velocity =
minus the output); FLUX takes sigma (timestep scale 1), the others 1000 sigma.  Nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ...errors import LazyflowError
from .kind import LoadedModel, ModelKind, data_shape_option

__all__ = ["DIFFUSERS_TRANSFORMER_KIND", "load_diffusers_transformer", "load_prompt_embeddings", "PromptConditioned"]

#: the per-prompt inputs of a flow transformer, by the names a file may give them
PER_PROMPT = {"prompt_embeds": "encoder_hidden_states", "encoder_hidden_states": "encoder_hidden_states",
              "pooled_prompt_embeds": "pooled_projections", "pooled_projections": "pooled_projections"}
#: transformers that take sigma itself (they scale it inside)
SIGMA_TIMESTEP = ("FluxTransformer2DModel",)


def load_prompt_embeddings(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """(per-prompt tensors by the transformer's argument name, tensors passed as they are, prompt count P)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise LazyflowError(f"--prompt-embeds {path}: not a readable safetensors file ({err})") from None
    per_prompt = {PER_PROMPT[k]: v for k, v in tensors.items() if k in PER_PROMPT}
    shared = {k: v for k, v in tensors.items() if k not in PER_PROMPT}
    if "encoder_hidden_states" not in per_prompt:
        raise LazyflowError(f"--prompt-embeds {path}: needs encoder_hidden_states (or prompt_embeds) of shape "
                            f"(prompts, tokens, dim); found {', '.join(tensors) or 'nothing'}")
    counts = {k: v.shape[0] if v.ndim else 0 for k, v in per_prompt.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise LazyflowError(f"--prompt-embeds {path}: the per-prompt tensors disagree on the prompt count {counts}")
    return per_prompt, shared, next(iter(counts.values()))


class PromptConditioned(torch.nn.Module):
    """v(x, t, prompt) = from_diffusers_flow(transformer)(x, t, **embeddings[prompt]): sample i is
    conditioned on the embeddings of prompt index ``prompt[i]`` (a (batch,) integer tensor)."""

    def __init__(self, transformer: torch.nn.Module, per_prompt: dict[str, torch.Tensor],
                 shared: dict[str, torch.Tensor], timestep_scale: float):
        from ..integrations.flow_convention import from_diffusers_flow   # the one adapter (a leaf module)

        super().__init__()
        self.transformer = transformer
        self.flow = from_diffusers_flow(transformer, timestep_scale=timestep_scale)
        self.per_prompt, self.shared = list(per_prompt), list(shared)
        for name, tensor in {**per_prompt, **shared}.items():
            self.register_buffer(name, tensor, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        def cast(v: torch.Tensor) -> torch.Tensor:
            return v.to(x.dtype) if v.is_floating_point() else v
        kwargs = {name: cast(getattr(self, name)[prompt.to(x.device)]) for name in self.per_prompt}
        kwargs.update({name: cast(getattr(self, name)) for name in self.shared})
        return self.flow(x, t, **kwargs)


def _transformer(folder: Path) -> torch.nn.Module:
    config = folder / "config.json"
    if not config.is_file():
        raise LazyflowError(f"--model {folder}: not a saved diffusers transformer (no config.json; save it with "
                            "transformer.save_pretrained(folder))")
    name = json.loads(config.read_text()).get("_class_name", "")
    try:
        import diffusers
    except ImportError:
        raise LazyflowError("the diffusers-transformer kind needs diffusers: pip install -e .[peers]") from None
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise LazyflowError(f"{config}: _class_name {name!r} is not a diffusers model class")
    try:
        return cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True).eval()
    except (OSError, EnvironmentError, ValueError) as err:
        raise LazyflowError(f"--model {folder}: {name} did not load from safetensors weights ({err})") from None


def load_diffusers_transformer(path: str, *, device: torch.device, num_samples: int, prompt_embeds: str | None = None,
                               shape: str | Sequence[int] | None = None) -> LoadedModel:
    """The transformer in the folder ``path`` as a velocity model on the linear schedule, conditioned on the
    prompts of the ``prompt_embeds`` file (sample i on prompt i mod P)."""
    if not prompt_embeds:
        raise LazyflowError("--prompt-embeds FILE is needed for a diffusers transformer (a safetensors file with "
                            "encoder_hidden_states and, where the transformer takes them, pooled_projections)")
    folder = Path(path)
    transformer = _transformer(folder)
    per_prompt, shared, prompts = load_prompt_embeddings(prompt_embeds)
    name = type(transformer).__name__
    model = PromptConditioned(transformer, per_prompt, shared, 1.0 if name in SIGMA_TIMESTEP else 1000.0).to(device)
    found = data_shape_option(shape)
    config = transformer.config
    if found is None and name not in SIGMA_TIMESTEP and "sample_size" in config and "in_channels" in config:
        size = config["sample_size"]
        found = (config["in_channels"], *((size, size) if isinstance(size, int) else size))
    index = torch.arange(num_samples, device=device) % prompts
    return LoadedModel(kind="diffusers-transformer", model=model, data_shape=found, source="linear",
                       prediction="velocity", model_kwargs={"prompt": index},
                       metadata={"class": name, "prompts": prompts, "folder": str(folder)},
                       note=f"{name}, {prompts} prompt(s) from {prompt_embeds}")


DIFFUSERS_TRANSFORMER_KIND = ModelKind(
    name="diffusers-transformer", description="a diffusers flow transformer folder (save_pretrained; SD3, FLUX) "
    "with --prompt-embeds FILE (safetensors: encoder_hidden_states, pooled_projections; sample i gets prompt i "
    "mod P); --shape gives the latent shape where the config does not (FLUX's packed latents)",
    load=load_diffusers_transformer, options=("prompt_embeds", "shape"), takes_file=True, latents=True)
