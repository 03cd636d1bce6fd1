"""The ``patches`` model's network: :class:`PatchUNet`, an unconditional convolutional U-Net velocity model
v(x, t) on the linear schedule (x_t = (1 - t) z + t x, target x - z) for 32 x 32 grayscale image patches
(:mod:`.image_patches`), small enough to train in minutes on two CPU cores (``lazyflow train patches``).

Three resolutions (H, H/2, H/4) of widths ``widths``: a residual block at each on the way down, two at the
bottom, and on the way up a nearest-neighbour upsampling, a 3x3 convolution and a residual block on the
concatenated skip.  Each residual block is GroupNorm -> SiLU -> 3x3 conv, plus a per-channel shift from the
time embedding, GroupNorm -> SiLU -> 3x3 conv, added to the (1x1-projected) input.  Time enters through
dyadic Fourier features [t, sin(2 pi w t), cos(2 pi w t)], w = 2^k / 2 (:class:`.conditional.TimeFeatures`),
and a two-layer MLP.  The network is TorchScript-able (``torch.jit.script``), so it can be benched as a
user's model (``--model-kind torchscript``)."""
from __future__ import annotations

import torch
from torch import nn

from .conditional import TimeFeatures

__all__ = ["PatchUNet", "ResidualBlock"]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResidualBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W e;  out = conv(SiLU(GN(h))) + skip(x)  (skip: 1x1 conv where widths differ)."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x))) + self.emb(e)[:, :, None, None]
        return self.conv2(nn.functional.silu(self.norm2(h))) + self.skip(x)


class _Up(nn.Module):
    """Nearest-neighbour upsampling by 2, then a 3x3 convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class PatchUNet(nn.Module):
    """v(x, t) for images (C, H, W) with H and W divisible by 4; see the module's docstring."""

    def __init__(self, data_shape: tuple[int, ...] = (1, 32, 32), widths: tuple[int, ...] = (32, 64, 64),
                 time_freqs: int = 8, patch: int = 1):
        super().__init__()
        if len(data_shape) != 3 or data_shape[1] % (4 * patch) or data_shape[2] % (4 * patch):
            raise ValueError(f"PatchUNet takes images (C, H, W) with H and W divisible by 4 x patch ({patch}), "
                             f"not {data_shape}")
        if len(widths) != 3:
            raise ValueError(f"PatchUNet has three resolutions: three widths, not {widths}")
        self.data_shape = tuple(data_shape)
        self.config = {"kind": "PatchUNet", "data_shape": list(self.data_shape), "widths": list(widths),
                       "time_freqs": time_freqs, "patch": patch}
        self.patch = patch
        c1, c2, c3 = widths
        emb = 4 * c1
        self.time = TimeFeatures("dyadic", time_freqs)
        self.embed = nn.Sequential(nn.Linear(self.time.dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        channels = data_shape[0] * patch * patch
        self.inp = nn.Conv2d(channels, c1, 3, padding=1)
        self.enc1, self.down1 = ResidualBlock(c1, c1, emb), nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.enc2, self.down2 = ResidualBlock(c2, c2, emb), nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.mid1, self.mid2 = ResidualBlock(c3, c3, emb), ResidualBlock(c3, c3, emb)
        self.up2, self.dec2 = _Up(c3, c2), ResidualBlock(2 * c2, c2, emb)
        self.up1, self.dec1 = _Up(c2, c1), ResidualBlock(2 * c1, c1, emb)
        self.out_norm, self.out = _group_norm(c1), nn.Conv2d(c1, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).reshape(-1).expand(x.shape[0])
        e = self.embed(self.time(t))
        h1 = self.enc1(self.inp(nn.functional.pixel_unshuffle(x, self.patch)), e)
        h2 = self.enc2(self.down1(h1), e)
        h = self.mid2(self.mid1(self.down2(h2), e), e)
        h = self.dec2(torch.cat([self.up2(h), h2], dim=1), e)
        h = self.dec1(torch.cat([self.up1(h), h1], dim=1), e)
        return nn.functional.pixel_shuffle(self.out(nn.functional.silu(self.out_norm(h))), self.patch)
