"""Class-conditional velocity networks, the test beds that look like the models users own.

:class:`ConditionalVelocityNet` is ``v(x, t, y)`` on the linear schedule (t = 0 noise, t = 1 data, velocity
x - z), built from the choices public checkpoints make and the embedded digits MLP does not:

- ``arch``: ``mlp`` (the flattened sample) or ``unet`` (a two-level convolutional U-Net);
- ``time``: ``dyadic`` features sin/cos(2^k pi t) or ``gaussian`` random Fourier features
  sin/cos(2 pi w t), w ~ N(0, scale^2) fixed at construction (a large scale, 30, makes v oscillate in t);
- ``norm``: ``batch`` (BatchNorm: batch statistics in training, running averages when sampling),
  ``group`` or ``none``;
- ``num_classes`` labels y in [0, num_classes); ``null_class`` = num_classes is the extra label that
  label dropout trains as "no label" (classifier-free guidance: ``guided(net, s, null={"y": num_classes})``).

The recipes that train them are in :mod:`.train` (``lazyflow train cond-mlp`` ...); the trained test beds ship
in ``weights/testbeds/`` (:func:`shipped_testbed` gives a file's path).  ``--model-kind conditional`` loads such a
file with its labels and guidance (:mod:`.builtin`).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ...errors import LazyflowError

__all__ = ["ConditionalVelocityNet", "TimeFeatures", "TESTBEDS", "shipped_testbed"]

#: the shipped test beds (``weights/testbeds/NAME.safetensors``), trained by ``lazyflow train NAME``
TESTBEDS = ("cond-mlp", "guided-mlp", "fourier-unet", "bn-unet", "bn-mlp28", "sit-digits")


def shipped_testbed(name: str) -> Path:
    """The path of the shipped test bed ``name`` (read-only)."""
    if name not in TESTBEDS:
        raise LazyflowError(f"no test bed {name!r}; choose one of {', '.join(TESTBEDS)}")
    return Path(__file__).resolve().parent / "weights" / "testbeds" / f"{name}.safetensors"


class TimeFeatures(nn.Module):
    """[t, sin(2 pi w t), cos(2 pi w t)] with w = 2^k / 2 (``dyadic``, k < freqs) or w ~ N(0, scale^2)
    drawn from ``seed`` (``gaussian``); a buffer, so saved with the weights."""

    def __init__(self, kind: str = "dyadic", freqs: int = 8, scale: float = 30.0, seed: int = 0):
        super().__init__()
        if kind == "dyadic":
            w = 2.0 ** torch.arange(freqs, dtype=torch.float32) / 2
        elif kind == "gaussian":
            w = scale * torch.randn(freqs, generator=torch.Generator().manual_seed(seed))
        else:
            raise ValueError(f"time features are dyadic or gaussian, not {kind!r}")
        self.register_buffer("w", w)
        self.dim = 2 * freqs + 1

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * t[:, None] * self.w.to(t.dtype)
        return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _Block(nn.Module):
    """conv -> norm -> SiLU, + the embedding (per channel), conv -> norm -> SiLU, with a residual path."""

    def __init__(self, cin: int, cout: int, emb: int, norm: str):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(cin, cout, 3, padding=1), _norm(norm, cout)
        self.conv2, self.norm2 = nn.Conv2d(cout, cout, 3, padding=1), _norm(norm, cout)
        self.emb = nn.Linear(emb, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm1(self.conv1(x))) + self.emb(e)[:, :, None, None]
        return nn.functional.silu(self.norm2(self.conv2(h))) + self.skip(x)


class _UNet(nn.Module):
    """Two resolutions (H, H/2): block, down, block, block, up, block on the concatenated skip, 1x1 out."""

    def __init__(self, channels: int, width: int, emb: int, norm: str):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down1 = _Block(width, width, emb, norm)
        self.pool = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid1 = _Block(2 * width, 2 * width, emb, norm)
        self.mid2 = _Block(2 * width, 2 * width, emb, norm)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.up1 = _Block(2 * width, width, emb, norm)
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h0 = self.down1(self.inp(x), e)
        h = self.mid2(self.mid1(self.pool(h0), e), e)
        h = self.up(h)[:, :, :h0.shape[2], :h0.shape[3]]
        return self.out(self.up1(torch.cat([h, h0], dim=1), e))


class ConditionalVelocityNet(nn.Module):
    """v(x, t, y): see the module's docstring.  ``y`` (batch,) integer labels; None means the null class
    (a model trained without label dropout was never shown it)."""

    def __init__(self, data_shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10, arch: str = "mlp",
                 width: int = 256, depth: int = 3, time: str = "dyadic", time_freqs: int = 8,
                 time_scale: float = 30.0, norm: str = "none", label_dropout: float = 0.0, seed: int = 0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes
        self.config = {"kind": "ConditionalVelocityNet", "data_shape": list(self.data_shape),
                       "num_classes": num_classes, "arch": arch, "width": width, "depth": depth, "time": time,
                       "time_freqs": time_freqs, "time_scale": time_scale, "norm": norm,
                       "label_dropout": label_dropout, "seed": seed}
        self.time = TimeFeatures(time, time_freqs, time_scale, seed)
        emb = width if arch == "mlp" else 4 * width
        self.labels = nn.Embedding(num_classes + 1, emb)          # the last row: the null class
        self.embed = nn.Sequential(nn.Linear(self.time.dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        dim = math.prod(self.data_shape)
        if arch == "mlp":
            self.inp = nn.Linear(dim, width)
            self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
            self.norms = nn.ModuleList(nn.BatchNorm1d(width) if norm == "batch" else
                                       nn.GroupNorm(8, width) if norm == "group" else nn.Identity()
                                       for _ in range(depth))
            self.out = nn.Linear(width, dim)
        elif arch == "unet":
            if len(self.data_shape) != 3:
                raise ValueError(f"a unet takes images (C, H, W), not {self.data_shape}")
            self.unet = _UNet(self.data_shape[0], width, emb, norm)
        else:
            raise ValueError(f"arch is mlp or unet, not {arch!r}")
        self.arch = arch

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        t = t.to(x.dtype).reshape(-1).expand(n)
        y = torch.full((n,), self.null_class, dtype=torch.long, device=x.device) if y is None else \
            y.reshape(-1).expand(n).long()
        e = self.embed(self.time(t)) + self.labels(y)
        if self.arch == "unet":
            return self.unet(x, e)
        h = nn.functional.silu(self.inp(x.reshape(n, -1)) + e)
        for layer, norm in zip(self.hidden, self.norms):
            h = nn.functional.silu(norm(layer(h)) + e) + h
        return self.out(h).reshape(x.shape)

