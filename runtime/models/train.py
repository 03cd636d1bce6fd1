"""Training of the embedded models: ``lazyflow train digits|moons|classifier``.

Flow matching on the linear schedule: x_t = (1 - t) z + t x, target velocity x - z, t ~ U(0, 1);
Adam with cosine decay and an exponential moving average of the weights.  Fixed seeds; CPU.
Weights go to the folder the caller names, never into the package's own ``weights/``.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
from torch import nn

from . import data
from .embedded import Classifier, VelocityMLP, save
from ..core.progress import progress_bar

__all__ = ["train_flow", "train_digits", "train_moons", "train_classifier", "train", "RECIPES", "DIGITS_RECIPE",
           "MOONS_RECIPE"]

DIGITS_RECIPE = {"steps": 16000, "batch": 256, "lr": 1e-3, "width": 512, "depth": 3, "time_freqs": 8,
                 "ema": 0.9995, "seed": 0}
MOONS_RECIPE = {"steps": 6000, "batch": 256, "lr": 2e-3, "width": 128, "depth": 3, "time_freqs": 4,
                "ema": 0.999, "seed": 0}


def train_flow(points: torch.Tensor, *, steps: int, batch: int, lr: float, width: int, depth: int, time_freqs: int,
               ema: float, seed: int, progress: bool = True) -> VelocityMLP:
    """Flow-matching training of a :class:`VelocityMLP` on ``points``; returns the EMA model."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = VelocityMLP(tuple(points.shape[1:]), width=width, depth=depth, time_freqs=time_freqs)
    averaged = copy.deepcopy(model).requires_grad_(False)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    with progress_bar(steps, enabled=progress, desc="training") as update:
        for _ in range(steps):
            x = points[torch.randint(len(points), (batch,), generator=generator)]
            z = torch.randn(x.shape, generator=generator)
            t = torch.rand(batch, generator=generator)
            tb = t.view(-1, *([1] * (x.dim() - 1)))
            loss = ((model((1 - tb) * z + tb * x, t) - (x - z)) ** 2).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                for p_avg, p in zip(averaged.parameters(), model.parameters()):
                    p_avg.lerp_(p, 1 - ema)
            if update is not None:
                update(1, loss=f"{loss.item():.4f}")
    return averaged.eval()


def train_digits(out_dir: Path, progress: bool = True, **overrides) -> Path:
    recipe = {**DIGITS_RECIPE, **overrides}
    start = time.time()
    model = train_flow(data.digits(), progress=progress, **recipe)
    return save(model, Path(out_dir) / "digits.safetensors",
                {"schedule": "linear", "prediction": "velocity", "data": "sklearn digits, 8x8, scaled to [-1, 1]",
                 "recipe": recipe, "train_seconds": round(time.time() - start, 1),
                 "command": "lazyflow train digits"})


def train_moons(out_dir: Path, progress: bool = True, **overrides) -> Path:
    recipe = {**MOONS_RECIPE, **overrides}
    model = train_flow(data.two_moons(8000, seed=1), progress=progress, **recipe)
    return save(model, Path(out_dir) / "moons.safetensors",
                {"schedule": "linear", "prediction": "velocity", "data": "two moons (sklearn), standardised",
                 "recipe": recipe, "command": "lazyflow train moons"})


def train_classifier(out_dir: Path, seed: int = 0, epochs: int = 60, progress: bool = True,
                     steps: int | None = None) -> Path:
    """Train the digits classifier on 80% of the data; report accuracy on the other 20%.  ``steps`` (optimiser
    steps, batches of 64) stops the training early or runs further epochs; default ``epochs`` full epochs."""
    torch.manual_seed(seed)
    images, labels = data.digits(), data.digits_labels()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(images))
    train_idx, test_idx = order[:split], order[split:]
    model = Classifier()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(train_idx) // 64)
    total = epochs * per_epoch if steps is None else steps
    epochs = -(-total // per_epoch)
    with progress_bar(epochs, enabled=progress, desc="classifier", unit="epoch") as update:
        for epoch in range(epochs):
            perm = train_idx[torch.randperm(len(train_idx), generator=generator)]
            for batch in perm.split(64)[:total - epoch * per_epoch]:
                # light augmentation: pixel noise keeps features smooth for imperfect samples
                x = images[batch] + 0.1 * torch.randn(images[batch].shape, generator=generator)
                loss = nn.functional.cross_entropy(model(x), labels[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            if update is not None:
                update(1)
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    card = {"test_accuracy": round(accuracy, 4), "split": "80/20, seed 0", "command": "lazyflow train classifier"}
    if steps is not None:
        card.update(steps=total, command=f"lazyflow train classifier --steps {steps}")
    return save(model, Path(out_dir) / "digits_classifier.safetensors", card)


#: what ``lazyflow train`` reproduces
RECIPES = ("digits", "moons", "classifier")


def train(what: str, out_dir: str | Path, *, steps: int | None = None) -> Path:
    """Reproduce the embedded ``what`` (one of :data:`RECIPES`) into ``out_dir``; ``steps`` overrides a flow
    model's number of steps, or the classifier's optimiser steps (default: its 60 epochs)."""
    from ...errors import LazyflowError

    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise LazyflowError(f"--steps must be a positive integer, got {steps!r}")
    overrides = {"steps": steps} if steps else {}
    if what == "digits":
        return train_digits(Path(out_dir), **overrides)
    if what == "moons":
        return train_moons(Path(out_dir), **overrides)
    if what == "classifier":
        return train_classifier(Path(out_dir), **overrides)
    raise LazyflowError(f"nothing to train named {what!r}; choose one of {', '.join(RECIPES)}")
