"""32 x 32 grayscale patches of the photographs bundled with scikit-image (d = 1,024): the data of the
``patches`` model (``lazyflow train patches``).

Each photograph in :data:`PHOTOS` (``skimage.data``, files inside the scikit-image wheel: nothing is
downloaded) is turned to grayscale (scikit-image's luminance, 0.2125 R + 0.7154 G + 0.0721 B), scaled to
[-1, 1] (2 p - 1 for p in [0, 1]) and shrunk by ``downscale`` (the mean of each ``downscale`` x ``downscale``
block), so that a 32-pixel patch holds structure rather than one flat region.  The **held-out region** of
each photograph is its bottom ``held_out`` fraction of rows; training patches lie wholly above it and
held-out patches wholly inside it, so the two splits share no pixel.  A patch is a uniformly drawn
photograph, a uniformly drawn top-left corner within the split's rows, and a horizontal flip with
probability 1/2, all from one seeded generator.

scikit-image is needed only here (``pip install 'lazyflow[train]'``); the package imports without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ...errors import LazyflowError

__all__ = ["PHOTOS", "PatchSpec", "Crops", "photographs", "split_rows", "draw_crops", "crop", "image_patches"]

#: the photographs of ``skimage.data`` bundled in the wheel (the synthetic images, text and binary
#: silhouettes are left out)
PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket")
SPLITS = ("train", "held-out")


@dataclass(frozen=True, kw_only=True)
class PatchSpec:
    """How patches are cut: ``size`` x ``size`` pixels of the photographs shrunk by ``downscale``; the bottom
    ``held_out`` fraction of each photograph's rows is the held-out region."""

    size: int = 32
    downscale: int = 2
    held_out: float = 0.25


@dataclass(frozen=True)
class Crops:
    """Where ``count`` patches come from: photograph index (into :data:`PHOTOS`), top row, left column and
    whether the patch is mirrored left to right."""

    photo: np.ndarray
    row: np.ndarray
    col: np.ndarray
    flip: np.ndarray


def _need_skimage():
    try:
        import skimage.data
        import skimage.color
    except ImportError:
        raise LazyflowError("the image patches need scikit-image: pip install 'lazyflow[train]' "
                            "(or pip install scikit-image)") from None
    return skimage


def _grayscale(image: np.ndarray) -> np.ndarray:
    """An image of ``skimage.data`` as float64 luminance in [0, 1]."""
    skimage = _need_skimage()
    pixels = skimage.util.img_as_float(image)
    if pixels.ndim == 3:
        pixels = skimage.color.rgb2gray(pixels[..., :3])
    return np.clip(pixels, 0.0, 1.0)


@lru_cache(maxsize=4)
def photographs(downscale: int = 2) -> tuple[np.ndarray, ...]:
    """The photographs of :data:`PHOTOS` in order, grayscale in [-1, 1] (float32), shrunk by ``downscale``
    (block means; a ragged edge is cut)."""
    skimage = _need_skimage()
    out = []
    for name in PHOTOS:
        gray = 2.0 * _grayscale(getattr(skimage.data, name)()) - 1.0
        h, w = (gray.shape[0] // downscale) * downscale, (gray.shape[1] // downscale) * downscale
        blocks = gray[:h, :w].reshape(h // downscale, downscale, w // downscale, downscale)
        out.append(blocks.mean(axis=(1, 3)).astype(np.float32))
    return tuple(out)


def split_rows(height: int, spec: PatchSpec, split: str) -> tuple[int, int]:
    """The rows [first, stop) a split's patches lie in, in a photograph of ``height`` rows: ``train`` above
    the cut at round((1 - held_out) height), ``held-out`` below it; each holds at least one patch."""
    if split not in SPLITS:
        raise LazyflowError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    cut = int(round((1 - spec.held_out) * height))
    if min(cut, height - cut) < spec.size:
        raise LazyflowError(f"a photograph of {height} rows has no room for {spec.size}-pixel patches on both "
                            f"sides of the held-out cut (row {cut})")
    return (0, cut) if split == "train" else (cut, height)


def draw_crops(split: str, count: int, *, seed: int = 0, spec: PatchSpec = PatchSpec()) -> Crops:
    """``count`` crops of ``split`` drawn from ``seed``: photograph uniform, corner uniform in the split's rows
    and the photograph's columns, a flip with probability 1/2."""
    images = photographs(spec.downscale)
    rng = np.random.default_rng(seed)
    photo = rng.integers(len(images), size=count)
    row, col = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64)
    for k, image in enumerate(images):
        chosen = photo == k
        first, stop = split_rows(image.shape[0], spec, split)
        row[chosen] = rng.integers(first, stop - spec.size + 1, size=int(chosen.sum()))
        col[chosen] = rng.integers(0, image.shape[1] - spec.size + 1, size=int(chosen.sum()))
    return Crops(photo=photo, row=row, col=col, flip=rng.random(count) < 0.5)


def crop(crops: Crops, spec: PatchSpec = PatchSpec()) -> torch.Tensor:
    """The patches ``crops`` names, (count, 1, size, size) float32 in [-1, 1]."""
    images, s = photographs(spec.downscale), spec.size
    out = np.empty((len(crops.photo), 1, s, s), dtype=np.float32)
    for i, (k, r, c, f) in enumerate(zip(crops.photo, crops.row, crops.col, crops.flip)):
        patch = images[k][r:r + s, c:c + s]
        out[i, 0] = patch[:, ::-1] if f else patch
    return torch.from_numpy(out)


def image_patches(split: str, count: int, *, seed: int = 0, spec: PatchSpec = PatchSpec()) -> torch.Tensor:
    """``count`` patches of ``split`` (``train`` or ``held-out``) drawn from ``seed``: (count, 1, 32, 32) in
    [-1, 1] by default (see the module's docstring)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise LazyflowError(f"count must be a positive integer, got {count!r}")
    return crop(draw_crops(split, count, seed=seed, spec=spec), spec)
