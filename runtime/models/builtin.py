"""The model kinds lazyflow ships: the embedded models (``digits``, ``moons``, ``patches``), the exact Gaussian mixtures
(``gmm64``, ``gmm4096``, and the random ``gmm:SEED[,dim=D][,components=K][,rank=R]``), model files (``file``:
.safetensors with a .json config, TorchScript .pt), SiT checkpoints (``sit-s/2`` ... ``sit-xl/8``), TorchScript
velocity models (``torchscript``), diffusers flow transformers with prompt embeddings (``diffusers-transformer``),
diffusers UNets on discrete diffusion schedules (``diffusers-unet``) and the exact mixtures as such networks
(``discrete:MIXTURE``).
:mod:`lazyflow.runtime.models.registry` registers them.  How the bench scores each is the evaluation
layer's business (:mod:`lazyflow.runtime.evaluation.scorers`)."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from ...errors import LazyflowError
from . import embedded, gmm, sit
from .conditional import ConditionalVelocityNet
from .diffusion_net import DiffusionNetwork, RuntimeModel
from .diffusers_transformer import DIFFUSERS_TRANSFORMER_KIND
from .diffusers_unet import DIFFUSERS_UNET_KIND
from .guidance import guided
from .kind import LoadedModel, ModelKind
from .sit_checkpoint import SIT_OPTIONS, load_sit_checkpoint
from .torchscript import TORCHSCRIPT_KIND

__all__ = ["BUILTIN_KINDS", "FILE_KIND", "DISCRETE_MIXTURE_KIND", "DIGITS_SHAPE", "RANDOM_MIXTURE_OPTIONS", "CONDITIONAL_OPTIONS",
           "load_conditional"]

#: the kind that loads a ``--model`` path given without ``--model-kind``
FILE_KIND = "file"
#: the samples the digits measure (the bench's Fréchet distance in the digits classifier's features) takes
DIGITS_SHAPE = (1, 8, 8)
#: the options of the random mixture kind ``gmm:SEED`` (also accepted in its name: ``gmm:101,dim=64``)
RANDOM_MIXTURE_OPTIONS = tuple(gmm.RANDOM_DEFAULTS)
#: the options of the ``conditional`` kind (a class-conditional network file)
CONDITIONAL_OPTIONS = ("class_labels", "guidance", "guidance_interval")


def _trained(kind: str, model: Any) -> LoadedModel:
    """A trained network with the schedule and prediction its file records (default: linear, velocity)."""
    meta = dict(getattr(model, "metadata", None) or {})
    shape = getattr(model, "data_shape", None)
    return LoadedModel(kind=kind, model=model, data_shape=None if shape is None else tuple(shape),
                       source=meta.get("schedule", "linear"), prediction=meta.get("prediction", "velocity"),
                       metadata=meta)


def _load_embedded(name: str, *, device: torch.device, num_samples: int) -> LoadedModel:
    return _trained(name, embedded.load(name).to(device))


def _load_file(path: str, *, device: torch.device, num_samples: int) -> LoadedModel:
    return _trained(FILE_KIND, embedded.load(Path(path)).to(device))


def load_conditional(path: str, *, device: torch.device, num_samples: int, class_labels: str | None = None,
                     guidance: float = 1.0, guidance_interval: tuple[float, float] | None = None) -> LoadedModel:
    """The :class:`~.conditional.ConditionalVelocityNet` file at ``path`` (.safetensors with its .json) as a
    velocity model on the linear schedule, its samples labelled by ``class_labels`` (comma-separated, repeated
    in order over the ``num_samples``; ``num_classes`` is the null class) and guided at scale ``guidance``
    (1: none) on the model's times in ``guidance_interval``."""
    net = embedded.load(Path(path)) if Path(path).suffix == ".safetensors" and Path(path).is_file() else None
    if not isinstance(net, ConditionalVelocityNet):
        raise LazyflowError(f"--model {path}: not a ConditionalVelocityNet file (.safetensors with its .json, as "
                            "lazyflow train cond-mlp writes)")
    if not class_labels:
        raise LazyflowError(f"--class-labels is needed for a conditional model (comma-separated labels in "
                            f"0..{net.num_classes - 1}; {net.num_classes} is the null class)")
    net = net.to(device)
    labels = sit.class_labels(class_labels, num_samples, net.num_classes).to(device)
    model, note = net, ""
    if guidance != 1.0:
        model = guided(net, guidance, null={"y": net.null_class}, interval=guidance_interval)
        note = f"guidance {guidance:g}" + (f" on t in {list(guidance_interval)}" if guidance_interval else "") + \
            " (one network call on a doubled batch per evaluation)"
    return LoadedModel(kind="conditional", model=model, data_shape=net.data_shape, source="linear",
                       prediction="velocity", model_kwargs={"y": labels},
                       metadata={**net.metadata, "num_classes": net.num_classes}, note=note)


def _exact(model: gmm.ExactMixtureModel) -> LoadedModel:
    return LoadedModel(kind=model.name, model=model, data_shape=model.data_shape, source=model.source.name,
                       prediction=model.prediction, metadata=dict(model.metadata), view=model.view)


def _load_mixture(name: str, *, device: torch.device, num_samples: int) -> LoadedModel:
    return _exact(gmm.load(name).to(device))


def _load_random_mixture(spec: str, *, device: torch.device, num_samples: int, dim: int | None = None,
                         components: int | None = None, rank: int | None = None) -> LoadedModel:
    return _exact(gmm.load_random(spec, dim=dim, components=components, rank=rank).to(device))


#: the kind of the exact mixtures as noise-prediction networks on Stable Diffusion 1.x's discrete schedule
DISCRETE_MIXTURE_KIND = "discrete"


def _load_discrete_mixture(spec: str, *, device: torch.device, num_samples: int, dim: int | None = None,
                           components: int | None = None, rank: int | None = None) -> LoadedModel:
    """``discrete:MIXTURE`` (gmm64, gmm4096, gmm:SEED[,...]): :class:`~.gmm.DiscreteNoiseMixture` on
    :data:`~.gmm.SD_CONFIG`'s schedule, run as the runtime converts it (:class:`~.diffusion_net.RuntimeModel`:
    noise at the timestep k(t)); seen through another source or prediction, the mixture answers exactly."""
    base = gmm.load_any(spec.partition(":")[2], dim=dim, components=components, rank=rank).to(device)
    network = DiffusionNetwork(gmm.DiscreteNoiseMixture(base), gmm.SD_CONFIG)
    model = RuntimeModel(network)

    def view(source, prediction: str):
        return model if (source, prediction) == (network.schedule, model.prediction) else base.view(source, prediction)
    return LoadedModel(kind=DISCRETE_MIXTURE_KIND, model=model, data_shape=base.data_shape, source=network.schedule,
                       prediction=model.prediction, metadata={**base.metadata, "schedule": network.schedule.name,
                                                              "prediction": model.prediction, "scheduler": gmm.SD_CONFIG},
                       view=view, diffusion=network)


def _sit_kind(name: str) -> ModelKind:
    depth, width, heads = sit.SIZES[name.split("-")[1].split("/")[0]]
    return ModelKind(name=name, description=f"a SiT checkpoint (.pt state dict or .safetensors), {depth} blocks of "
                     f"width {width}, patch {name.split('/')[1]}", load=partial(load_sit_checkpoint, kind=name),
                     options=SIT_OPTIONS, takes_file=True, latents=True)


BUILTIN_KINDS: tuple[ModelKind, ...] = (
    ModelKind(name="digits", description="the embedded 8x8 digits flow (linear schedule, velocity)",
              load=_load_embedded),
    ModelKind(name="moons", description="the embedded 2D two-moons flow (for the figures)", load=_load_embedded),
    ModelKind(name="patches", description="the embedded 32x32 grayscale photo-patch flow (a small U-Net on patches "
              "of scikit-image's photographs; linear schedule, velocity)", load=_load_embedded),
    *(ModelKind(name=name, description=f"an exact Gaussian mixture in {shape} (no weights; any prediction)",
                load=_load_mixture, exact=True)
      for name, (shape, _) in gmm.NAMES.items()),
    ModelKind(name=gmm.RANDOM_KIND, argument="SEED[,dim=D][,components=K][,rank=R]",
              description="a random exact Gaussian mixture built from SEED (default: dim {dim}, {components} "
                          "components with rank-{rank} covariances; no weights; any prediction)".format(
                              **gmm.RANDOM_DEFAULTS),
              load=_load_random_mixture, options=RANDOM_MIXTURE_OPTIONS, exact=True),
    ModelKind(name=DISCRETE_MIXTURE_KIND, argument="MIXTURE",
              description="an exact mixture (gmm64, gmm4096, gmm:SEED[,dim=D]...) as a noise-prediction network on "
                          "Stable Diffusion 1.x's discrete scaled_linear schedule (1,000 timesteps, betas 0.00085 .. "
                          "0.012), called at the timestep of each time; diffusers' schedulers are its peers",
              load=_load_discrete_mixture, options=RANDOM_MIXTURE_OPTIONS, exact=True),
    ModelKind(name=FILE_KIND, description="a model file: .safetensors with its .json config, or TorchScript .pt",
              load=_load_file, takes_file=True),
    ModelKind(name="conditional", description="a class-conditional velocity network file (ConditionalVelocityNet "
              ".safetensors + .json, e.g. the test beds in weights/testbeds/); --class-labels, --guidance",
              load=load_conditional, options=CONDITIONAL_OPTIONS, takes_file=True),
    *(_sit_kind(name) for name in sit.KINDS),
    TORCHSCRIPT_KIND,
    DIFFUSERS_TRANSFORMER_KIND,
    DIFFUSERS_UNET_KIND,
)
