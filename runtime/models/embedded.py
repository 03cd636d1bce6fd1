"""Models: the shipped digits velocity network and loaders for user models.

``load("digits")`` returns the embedded flow model (linear schedule, velocity prediction,
data shape (1, 8, 8) in [-1, 1]); ``load("moons")`` a 2D model for the figures.  A path loads a
``.safetensors`` file with a ``.json`` config beside it (same stem) or a TorchScript ``.pt``.
Weights never go through pickle; nothing here writes into the package's ``weights/`` folder.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ...atomic_write import atomic_path, write_text_atomic
from ...errors import LazyflowError
from .conditional import ConditionalVelocityNet
from .patch_unet import PatchUNet

__all__ = ["VelocityMLP", "Classifier", "load", "load_classifier", "save", "WEIGHTS", "EMBEDDED"]

#: the shipped weights (read-only: ``lazyflow train`` writes elsewhere)
WEIGHTS = Path(__file__).resolve().parent / "weights"
#: names of the embedded models (each WEIGHTS/<name>.safetensors with its .json)
EMBEDDED = ("digits", "moons", "patches")


def time_features(t: torch.Tensor, n: int) -> torch.Tensor:
    """[sin(2^k pi t), cos(2^k pi t)] features, k = 0..n-1 (plus t itself)."""
    freqs = math.pi * 2.0 ** torch.arange(n, device=t.device, dtype=t.dtype)
    angles = t[:, None] * freqs
    return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


class VelocityMLP(nn.Module):
    """v(x, t): an MLP on the flattened data and Fourier features of t, SiLU activations."""

    def __init__(self, data_shape: tuple[int, ...] = (1, 8, 8), width: int = 512, depth: int = 3,
                 time_freqs: int = 8):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.config = {"kind": "VelocityMLP", "data_shape": list(self.data_shape), "width": width, "depth": depth,
                       "time_freqs": time_freqs}
        dim = math.prod(self.data_shape)
        self.time_freqs = time_freqs
        layers: list[nn.Module] = []
        inp = dim + 2 * time_freqs + 1
        for _ in range(depth):
            layers += [nn.Linear(inp, width), nn.SiLU()]
            inp = width
        layers.append(nn.Linear(inp, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        features = time_features(t.to(flat.dtype).reshape(-1).expand(x.shape[0]), self.time_freqs)
        return self.net(torch.cat([flat, features], dim=1)).reshape(x.shape)


class Classifier(nn.Module):
    """A small digits classifier; ``features`` (the last hidden layer) feed the Fréchet distance."""

    def __init__(self, dim: int = 64, width: int = 256, feature_dim: int = 64, classes: int = 10):
        super().__init__()
        self.config = {"kind": "Classifier", "dim": dim, "width": width, "feature_dim": feature_dim, "classes": classes}
        self.body = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


_KINDS = {"VelocityMLP": VelocityMLP, "Classifier": Classifier, "ConditionalVelocityNet": ConditionalVelocityNet,
          "PatchUNet": PatchUNet}


def save(model: nn.Module, path: str | Path, metadata: dict | None = None, *, half_parameters: bool = False) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` config (the model's ``config`` plus ``metadata``);
    ``half_parameters``: the parameters in float16 (half the file; buffers such as BatchNorm's statistics and
    Fourier frequencies stay float32), loaded back into the float32 model."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = {name for name, _ in model.named_parameters()} if half_parameters else set()
    with atomic_path(path) as temporary:
        save_file({k: (v.half() if k in params else v).detach().contiguous().cpu()
                   for k, v in model.state_dict().items()}, str(temporary))
    write_text_atomic(path.with_suffix(".json"), json.dumps({**model.config, **(metadata or {})}, indent=2) + "\n")
    return path


def _from_safetensors(path: Path) -> nn.Module:
    from safetensors.torch import load_file

    config_path = path.with_suffix(".json")
    if not config_path.exists():
        raise LazyflowError(f"{path} needs its config {config_path.name} beside it")
    config = json.loads(config_path.read_text())
    kind = config.get("kind")
    if kind not in _KINDS:
        raise LazyflowError(f"{config_path}: unknown model kind {kind!r} (known: {', '.join(_KINDS)})")
    signature = _KINDS[kind].__init__.__code__.co_varnames[1:_KINDS[kind].__init__.__code__.co_argcount]
    model = _KINDS[kind](**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in signature})
    model.load_state_dict(load_file(str(path)))
    model.metadata = config
    return model.eval()


def load(name_or_path: str | Path) -> nn.Module:
    """The embedded model by name (``digits``), an exact mixture (``gmm64``, ``gmm4096``: see
    :mod:`lazyflow.runtime.models.gmm`) or a model file (.safetensors + .json, or TorchScript .pt)."""
    text = str(name_or_path)
    from . import gmm

    if text in gmm.NAMES:   # an exact Gaussian-mixture model (lazyflow.runtime.models.gmm), no weights
        return gmm.load(text)
    if text in EMBEDDED:
        return _from_safetensors(WEIGHTS / f"{text}.safetensors")
    path = Path(text)
    if not path.exists():
        raise LazyflowError(f"no model {text!r}: not an embedded name ({', '.join(EMBEDDED + tuple(gmm.NAMES))}) "
                            "nor an existing file")
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    if path.suffix in (".pt", ".pth", ".ts"):
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as err:
            raise LazyflowError(f"{path}: not a TorchScript model ({str(err).splitlines()[0]}); pickled models are "
                                "not loaded: save TorchScript, or safetensors with a .json config") from None
    raise LazyflowError(f"{path}: unsupported model file (use .safetensors with a .json config, or TorchScript .pt)")


def load_classifier() -> Classifier:
    """The shipped digits classifier used by the Fréchet distance."""
    return _from_safetensors(WEIGHTS / "digits_classifier.safetensors")
