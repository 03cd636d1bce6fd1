"""The ``diffusers-unet`` model kind: a diffusers ``UNet2DModel`` trained on a discrete diffusion schedule (DDPM,
DDIM checkpoints), as ``lazyflow sample``, ``lazyflow bench --model`` and ``lazyflow stats --from-model`` load it.

``--model`` names one of: a pipeline folder (``model_index.json`` with ``unet/`` and ``scheduler/``), the UNet's
own folder (``config.json`` and ``diffusion_pytorch_model.safetensors``, as ``unet.save_pretrained`` writes it),
or that ``.safetensors`` file (its ``config.json`` beside it).  The schedule and prediction come from the
scheduler config beside it: ``scheduler_config.json`` in the UNet's folder or in ``../scheduler/``
(:func:`~lazyflow.runtime.core.discrete_schedule.schedule_of_config`: betas, ``trained_betas``,
``rescale_betas_zero_snr``; ``prediction_type`` epsilon, v_prediction or sample).  Weights load from safetensors
only (``use_safetensors=True``, never a pickle); anything else is refused in one line.  The network is called at
the continuous timestep k(t) of each time (:class:`~.diffusion_net.RuntimeModel`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import LazyflowError
from .diffusion_net import DiffusionNetwork, RuntimeModel, TensorOutput
from .kind import LoadedModel, ModelKind

__all__ = ["DIFFUSERS_UNET_KIND", "load_diffusers_unet", "unet_files", "UNET_CLASSES"]

#: the diffusers classes this kind reads (unconditional image UNets)
UNET_CLASSES = ("UNet2DModel",)
_SCHEDULER = "scheduler_config.json"


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LazyflowError(f"{path}: cannot read the {what} ({err})") from None
    if not isinstance(found, dict):
        raise LazyflowError(f"{path}: the {what} is not a JSON object")
    return found


def unet_files(path: str | Path) -> tuple[Path, Path | None, Path]:
    """(the UNet's folder, its weights file when ``path`` names one, the scheduler config) of ``--model path``."""
    path = Path(path)
    weights = path if path.is_file() else None
    if weights is not None and path.suffix != ".safetensors":
        raise LazyflowError(f"--model {path}: a diffusers UNet file must be .safetensors (weights load only from "
                            "safetensors)")
    folder = path.parent if weights is not None else path
    if weights is None and (folder / "model_index.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise LazyflowError(f"--model {path}: not a saved diffusers UNet (no config.json in {folder}; save it with "
                            "unet.save_pretrained(folder) or pipe.save_pretrained(folder))")
    scheduler = next((p for p in (folder / _SCHEDULER, folder.parent / "scheduler" / _SCHEDULER) if p.is_file()), None)
    if scheduler is None:
        raise LazyflowError(f"--model {path}: no {_SCHEDULER} beside the UNet (in {folder} or "
                            f"{folder.parent / 'scheduler'}): its schedule and prediction type are read there")
    return folder, weights, scheduler


def _unet(folder: Path, weights: Path | None) -> torch.nn.Module:
    """The UNet of ``folder`` (its class checked), its weights from safetensors only."""
    name = _json(folder / "config.json", "UNet config").get("_class_name", "")
    if name not in UNET_CLASSES:
        raise LazyflowError(f"{folder / 'config.json'}: _class_name {name!r}; the diffusers-unet kind reads "
                            f"{', '.join(UNET_CLASSES)}")
    try:
        import diffusers
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise LazyflowError("the diffusers-unet kind needs diffusers: pip install -e .[peers]") from None
    cls = getattr(diffusers, name)
    try:
        if weights is None:
            return cls.from_pretrained(str(folder), use_safetensors=True, local_files_only=True).eval()
        unet = cls.from_config(cls.load_config(str(folder)))
        unet.load_state_dict(load_file(str(weights)), strict=True)
        return unet.eval()
    except (OSError, EnvironmentError, ValueError, RuntimeError, SafetensorError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LazyflowError(f"--model {weights or folder}: {name} did not load from safetensors weights ({first})") \
            from None


def load_diffusers_unet(path: str, *, device: torch.device, num_samples: int) -> LoadedModel:
    """The UNet at ``path`` (module docstring) on its scheduler config's discrete schedule, converted by the
    runtime; ``diffusion`` holds it as diffusers calls it (the bench's diffusers peers run on it)."""
    folder, weights, scheduler = unet_files(path)
    unet = _unet(folder, weights).to(device)
    config = {k: v for k, v in _json(scheduler, "scheduler config").items() if not k.startswith("_")}
    network = DiffusionNetwork(TensorOutput(unet), config)
    model = RuntimeModel(network)
    size = unet.config["sample_size"]
    shape = (unet.config["in_channels"], *((size, size) if isinstance(size, int) else size))
    return LoadedModel(kind="diffusers-unet", model=model, data_shape=tuple(shape), source=network.schedule,
                       prediction=model.prediction, metadata={"class": type(unet).__name__, "folder": str(folder),
                                                              "scheduler": str(scheduler),
                                                              "prediction_type": network.prediction_type},
                       note=f"{type(unet).__name__} on {network.schedule.name} ({network.prediction_type}, "
                            f"{network.num_train_timesteps} timesteps)", diffusion=network)


DIFFUSERS_UNET_KIND = ModelKind(
    name="diffusers-unet", description="a diffusers UNet2DModel (a pipeline folder, the UNet's save_pretrained "
    "folder or its .safetensors file) on the discrete schedule of the scheduler_config.json beside it (epsilon, "
    "v_prediction or sample); diffusers' DDIM, DPM-Solver++ and UniPC are its peers",
    load=load_diffusers_unet, takes_file=True)
