"""A SiT checkpoint as a ready model (the ``sit-*`` model kinds): the weights, the class labels of the
samples, classifier-free guidance and, with a VAE, the decoding of the latents into images."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ...errors import LazyflowError
from . import sit
from .adapters import from_sit
from .guidance import guided
from .kind import LoadedModel

__all__ = ["load_sit_checkpoint", "SIT_OPTIONS", "model_param_values"]

#: the options of the SiT kinds (besides ``device`` and ``num_samples``)
SIT_OPTIONS = ("class_labels", "model_params", "guidance", "guidance_interval", "guidance_channels", "vae")


def model_param_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """SiT settings from text (``true``/``false``, integers, numbers); values that are not text stay as given."""
    values = {}
    for key, value in params.items():
        if not isinstance(value, str):
            values[key] = value
            continue
        low = value.lower()
        try:
            values[key] = True if low == "true" else False if low == "false" else \
                int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise LazyflowError(f"--model-param {key}: {value!r} is not a number or true/false") from None
    return values


def load_sit_checkpoint(path: str | Path, *, kind: str, device: torch.device, num_samples: int,
                        class_labels: str | None = None, model_params: Mapping[str, Any] | None = None,
                        guidance: float = 1.0, guidance_interval: tuple[float, float] | None = None,
                        guidance_channels: int | None = None, vae: str | Path | None = None) -> LoadedModel:
    """The SiT of ``kind`` at ``path`` (see :func:`lazyflow.runtime.models.sit.load_sit`; ``model_params``
    override its settings) as a velocity model on the linear schedule, with ``class_labels`` (comma-separated,
    repeated in order over the ``num_samples`` samples) as its conditioning, guided at scale ``guidance``
    (1: none) on the model's times in ``guidance_interval`` and the first ``guidance_channels`` channels;
    ``vae``: a local diffusers AutoencoderKL folder that decodes the latents into images."""
    if not class_labels:
        raise LazyflowError("--class-labels is needed for a SiT (comma-separated; "
                            "the model's num_classes is the null class)")
    net = sit.load_sit(path, kind, **model_param_values(model_params or {})).to(device)
    labels = sit.class_labels(class_labels, num_samples, net.num_classes).to(device)
    model, note = from_sit(net), ""
    if guidance != 1.0:
        model = guided(model, guidance, null={"y": net.num_classes}, interval=guidance_interval,
                       channels=guidance_channels)
        note = f"guidance {guidance:g}" + (f" on t in {list(guidance_interval)}" if guidance_interval else "") + \
            " (one network call on a doubled batch per evaluation)"
    decode = None if vae is None else (lambda latents: sit.decode_latents(latents, vae, device=device))
    return LoadedModel(kind=kind, model=model, data_shape=tuple(net.data_shape), source="linear",
                       prediction="velocity", model_kwargs={"y": labels}, metadata=dict(net.config), note=note,
                       decode_images=decode, decoder=f"VAE {vae}" if vae is not None else "")
