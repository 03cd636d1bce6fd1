"""Training of the embedded models: ``lazyflow train digits|moons|classifier|patches`` and the class-conditional test
beds (``lazyflow train cond-mlp|guided-mlp|fourier-unet|bn-unet|bn-mlp28|sit-digits``, :data:`TESTBED_RECIPES`).

Flow matching on the linear schedule: x_t = (1 - t) z + t x, target velocity x - z, t ~ U(0, 1);
Adam with cosine decay and, where the recipe says, an exponential moving average of the weights.  A
conditional model sees its label y, replaced by the null class with probability ``label_dropout``
(classifier-free guidance).  Fixed seeds; CPU.  Weights go to the folder the caller names, never into the
package's own ``weights/``.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from . import data
from ...atomic_write import write_text_atomic
from .conditional import ConditionalVelocityNet
from .embedded import Classifier, VelocityMLP, save
from .patch_unet import PatchUNet
from ..core.progress import progress_bar

__all__ = ["train_flow", "fit_velocity", "train_conditional", "train_patches", "train_digits", "train_moons",
           "train_classifier", "train_testbed", "train", "RECIPES", "DIGITS_RECIPE", "MOONS_RECIPE", "PATCHES_RECIPE",
           "TESTBED_RECIPES", "SIT_TESTBED_PARAMS"]

DIGITS_RECIPE = {"steps": 16000, "batch": 256, "lr": 1e-3, "width": 512, "depth": 3, "time_freqs": 8,
                 "ema": 0.9995, "seed": 0}
MOONS_RECIPE = {"steps": 6000, "batch": 256, "lr": 2e-3, "width": 128, "depth": 3, "time_freqs": 4,
                "ema": 0.999, "seed": 0}

#: the ``patches`` model: a :class:`PatchUNet` (pixel-unshuffled by 2, widths 32/64/128 at 16/8/4) on
#: ``patches`` training patches of the scikit-image photographs (:mod:`.image_patches`; 32 x 32, shrunk by 2,
#: the bottom quarter of each photograph held out); sized to train in about 12 minutes on one busy CPU core
PATCHES_RECIPE = {"net": {"widths": [32, 64, 128], "patch": 2, "time_freqs": 8}, "patches": 30000, "steps": 1200,
                  "batch": 32, "lr": 2e-3, "ema": 0.995, "seed": 7}


def train_flow(points: torch.Tensor, *, steps: int, batch: int, lr: float, width: int, depth: int, time_freqs: int,
               ema: float, seed: int, progress: bool = True) -> VelocityMLP:
    """Flow-matching training of a :class:`VelocityMLP` on ``points``; returns the EMA model."""
    torch.manual_seed(seed)
    model = VelocityMLP(tuple(points.shape[1:]), width=width, depth=depth, time_freqs=time_freqs)
    return fit_velocity(model, points, steps=steps, batch=batch, lr=lr, ema=ema, seed=seed, progress=progress)


def fit_velocity(model: nn.Module, points: torch.Tensor, *, steps: int, batch: int, lr: float, ema: float, seed: int,
                 progress: bool = True) -> nn.Module:
    """Flow matching of the unconditional ``model(x, t)`` on ``points``: minimise |model(x_t, t) - (x - z)|^2 at
    x_t = (1 - t) z + t x, t ~ U(0, 1), z ~ N(0, I), by Adam (learning rate ``lr``, cosine decay over ``steps``
    batches of ``batch``, draws from ``seed``); returns the exponential moving average (rate ``ema``) in eval mode."""
    generator = torch.Generator().manual_seed(seed)
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


#: the class-conditional test beds: each differs from the embedded digits MLP the way public checkpoints do
#: (labels, label dropout for guidance, Fourier time features of scale 30, BatchNorm, a U-Net, 784 pixels,
#: under-training).  ``data``: ``digits`` (8x8) or ``digits28`` (the digits moved by small random affine maps
#: and resampled at 28x28, :func:`.data.digits28`); ``net``: :class:`ConditionalVelocityNet`'s options;
#: ``ema`` None trains without an average (the last weights are the model).
TESTBED_RECIPES: dict[str, dict] = {
    "cond-mlp": {"data": "digits", "net": {"arch": "mlp", "width": 512, "depth": 3, "time": "dyadic", "time_freqs": 8},
                 "steps": 12000, "batch": 256, "lr": 1e-3, "ema": 0.9995, "seed": 1,
                 "about": "labels always given, well trained"},
    "guided-mlp": {"data": "digits", "net": {"arch": "mlp", "width": 512, "depth": 3, "time": "dyadic",
                                             "time_freqs": 8, "label_dropout": 0.15},
                   "steps": 12000, "batch": 256, "lr": 1e-3, "ema": 0.9995, "seed": 2,
                   "about": "15% label dropout: sampled with classifier-free guidance"},
    "fourier-unet": {"data": "digits", "net": {"arch": "unet", "width": 32, "time": "gaussian", "time_freqs": 16,
                                               "time_scale": 30.0, "norm": "group"},
                     "steps": 3000, "batch": 128, "lr": 2e-3, "ema": 0.999, "seed": 3,
                     "about": "a U-Net with Gaussian Fourier time features of scale 30"},
    "bn-unet": {"data": "digits", "net": {"arch": "unet", "width": 32, "time": "gaussian", "time_freqs": 16,
                                          "time_scale": 30.0, "norm": "batch"},
                "steps": 1200, "batch": 128, "lr": 2e-3, "ema": None, "seed": 4,
                "about": "a BatchNorm U-Net with Fourier time features of scale 30, under-trained, no average"},
    "bn-mlp28": {"data": "digits28", "net": {"arch": "mlp", "width": 512, "depth": 3, "time": "gaussian",
                                             "time_freqs": 16, "time_scale": 30.0, "norm": "batch"},
                 "steps": 3000, "batch": 256, "lr": 1e-3, "ema": None, "seed": 5,
                 "about": "784 pixels, BatchNorm, Fourier time features of scale 30, under-trained, no average"},
    "sit-digits": {"data": "digits", "net": {"arch": "sit", "hidden_size": 64, "depth": 3, "num_heads": 4,
                                             "patch_size": 2, "label_dropout": 0.1},
                   "steps": 4000, "batch": 128, "lr": 1e-3, "ema": 0.999, "seed": 6,
                   "about": "a SiT (lazyflow's, official key names) of width 64, depth 3, patch 2, 10% label dropout: "
                            "load it with --model-kind sit-s/2 --model-param hidden_size=64 --model-param depth=3 "
                            "--model-param num_heads=4, sample it with --guidance"},
}
#: the --model-param flags the SiT test bed loads with (its size differs from sit-s/2's)
SIT_TESTBED_PARAMS = {"hidden_size": 64, "depth": 3, "num_heads": 4}


def _conditional_net(net: dict, data_shape: tuple[int, ...], classes: int, seed: int) -> nn.Module:
    """A test bed's network: a :class:`ConditionalVelocityNet`, or for ``arch`` ``sit`` a SiT of that size (its
    null class is ``num_classes`` too)."""
    options = {k: v for k, v in net.items() if k != "label_dropout"}
    if options.get("arch") == "sit":
        from .sit import SiT

        options.pop("arch")
        return SiT(input_size=data_shape[-1], in_channels=data_shape[0], num_classes=classes, learn_sigma=False,
                   **options)
    return ConditionalVelocityNet(data_shape, num_classes=classes, seed=seed, label_dropout=net.get("label_dropout", 0.0),
                                  **options)


def train_conditional(points: torch.Tensor, labels: torch.Tensor, *, net: dict, steps: int, batch: int, lr: float,
                      ema: float | None, seed: int, progress: bool = True) -> nn.Module:
    """Flow-matching training of a :class:`ConditionalVelocityNet` (or a SiT, ``net["arch"]`` ``sit``) on
    (``points``, ``labels``); label dropout as ``net`` says.  Returns the averaged model (``ema``) or the last
    one, in eval mode; the averaged model takes the live model's buffers (BatchNorm's running statistics)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _conditional_net(net, tuple(points.shape[1:]), int(labels.max()) + 1, seed)
    null = model.num_classes
    averaged = copy.deepcopy(model).requires_grad_(False) if ema is not None else None
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    dropout = float(net.get("label_dropout", 0.0))
    model.train()
    with progress_bar(steps, enabled=progress, desc="training") as update:
        for _ in range(steps):
            index = torch.randint(len(points), (batch,), generator=generator)
            x, y = points[index], labels[index].clone()
            if dropout > 0:
                y[torch.rand(batch, generator=generator) < dropout] = null
            z = torch.randn(x.shape, generator=generator)
            t = torch.rand(batch, generator=generator)
            tb = t.view(-1, *([1] * (x.dim() - 1)))
            loss = ((model((1 - tb) * z + tb * x, t, y) - (x - z)) ** 2).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            if averaged is not None:
                with torch.no_grad():
                    for p_avg, p in zip(averaged.parameters(), model.parameters()):
                        p_avg.lerp_(p, 1 - ema)
            if update is not None:
                update(1, loss=f"{loss.item():.4f}")
    if averaged is None:
        return model.requires_grad_(False).eval()
    for b_avg, b in zip(averaged.buffers(), model.buffers()):
        b_avg.copy_(b)
    return averaged.eval()


def train_testbed(name: str, out_dir: Path, progress: bool = True, **overrides) -> Path:
    """Train the test bed ``name`` of :data:`TESTBED_RECIPES` into ``out_dir``/``name``.safetensors."""
    recipe = {**TESTBED_RECIPES[name], **overrides}
    points = data.digits() if recipe["data"] == "digits" else data.digits28()
    labels = data.digits_labels().repeat(len(points) // len(data.digits_labels()))
    start = time.time()
    model = train_conditional(points, labels, progress=progress,
                              **{k: recipe[k] for k in ("net", "steps", "batch", "lr", "ema", "seed")})
    card = {"schedule": "linear", "prediction": "velocity", "data": _DATA_NOTES[recipe["data"]],
            "about": recipe["about"], "recipe": recipe, "train_seconds": round(time.time() - start, 1),
            "parameters": "float16 (run in float32)",
            "command": _command(name, overrides)}
    if recipe["net"].get("arch") == "sit":   # a SiT checkpoint (official key names) with its card beside it
        from .sit import save_sit

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = save_sit(model.half(), Path(out_dir) / f"{name}.safetensors")
        config = json.dumps({"kind": "SiT", **model.config, **card}, indent=2) + "\n"
        write_text_atomic(path.with_suffix(".json"), config)
        return path
    return save(model, Path(out_dir) / f"{name}.safetensors", card, half_parameters=True)


_DATA_NOTES = {"digits": "sklearn digits, 8x8, scaled to [-1, 1], with their labels",
               "digits28": "sklearn digits under 4 random affine maps each, resampled at 28x28, in [-1, 1], with labels"}


def train_patches(out_dir: Path, progress: bool = True, **overrides) -> Path:
    """Train the ``patches`` model (:data:`PATCHES_RECIPE`) into ``out_dir``/patches.safetensors (parameters in
    float16).  Needs scikit-image (the photographs)."""
    from .image_patches import PatchSpec, image_patches

    recipe = {**PATCHES_RECIPE, **overrides}
    points = image_patches("train", recipe["patches"], seed=recipe["seed"])
    start = time.time()
    torch.manual_seed(recipe["seed"])
    net = recipe["net"]
    model = PatchUNet(tuple(points.shape[1:]), widths=tuple(net["widths"]), time_freqs=net["time_freqs"],
                      patch=net["patch"])
    model = fit_velocity(model, points, progress=progress, **{k: recipe[k] for k in ("steps", "batch", "lr", "ema",
                                                                                    "seed")})
    spec = PatchSpec()
    card = {"schedule": "linear", "prediction": "velocity",
            "data": f"{spec.size}x{spec.size} grayscale patches in [-1, 1] of the scikit-image photographs, shrunk "
                    f"by {spec.downscale}; the bottom {spec.held_out:g} of each photograph held out",
            "recipe": recipe, "train_seconds": round(time.time() - start, 1), "threads": torch.get_num_threads(),
            "parameters": "float16 (run in float32)",
            "command": _command("patches", overrides)}
    return save(model, Path(out_dir) / "patches.safetensors", card, half_parameters=True)


def train_digits(out_dir: Path, progress: bool = True, **overrides) -> Path:
    recipe = {**DIGITS_RECIPE, **overrides}
    start = time.time()
    model = train_flow(data.digits(), progress=progress, **recipe)
    return save(model, Path(out_dir) / "digits.safetensors",
                {"schedule": "linear", "prediction": "velocity", "data": "sklearn digits, 8x8, scaled to [-1, 1]",
                 "recipe": recipe, "train_seconds": round(time.time() - start, 1),
                 "command": _command("digits", overrides)})


def train_moons(out_dir: Path, progress: bool = True, **overrides) -> Path:
    recipe = {**MOONS_RECIPE, **overrides}
    model = train_flow(data.two_moons(8000, seed=1), progress=progress, **recipe)
    return save(model, Path(out_dir) / "moons.safetensors",
                {"schedule": "linear", "prediction": "velocity", "data": "two moons (sklearn), standardised",
                 "recipe": recipe, "command": _command("moons", overrides)})


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
    given = {key: value for key, value in (("steps", steps), ("seed", seed or None)) if value is not None}
    card = {"test_accuracy": round(accuracy, 4), "split": f"80/20, seed {seed}",
            "command": _command("classifier", given)}
    if steps is not None:
        card["steps"] = total
    return save(model, Path(out_dir) / "digits_classifier.safetensors", card)


#: what ``lazyflow train`` reproduces
RECIPES = ("digits", "moons", "classifier", "patches", *TESTBED_RECIPES)


def _command(name: str, overrides: dict) -> str:
    """The ``lazyflow train`` command line that reproduces a run with these overrides (the card records it)."""
    return f"lazyflow train {name}" + "".join(f" --{key} {overrides[key]}" for key in ("steps", "seed")
                                               if key in overrides)


def train(what: str, out_dir: str | Path, *, steps: int | None = None, seed: int | None = None) -> Path:
    """Reproduce the embedded ``what`` (one of :data:`RECIPES`) into ``out_dir``; ``steps`` overrides a flow
    model's number of steps, or the classifier's optimiser steps (default: its 60 epochs); ``seed`` the recipe's
    seed (a new network from the same recipe: the held-out test beds of docs/k-diffusion.md)."""
    from ...errors import LazyflowError

    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise LazyflowError(f"--steps must be a positive integer, got {steps!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise LazyflowError(f"--seed must be an integer in [0, 2^63), got {seed!r}")
    overrides = {"steps": steps} if steps else {}
    if seed is not None:
        overrides["seed"] = seed
    if what == "digits":
        return train_digits(Path(out_dir), **overrides)
    if what == "moons":
        return train_moons(Path(out_dir), **overrides)
    if what == "classifier":
        return train_classifier(Path(out_dir), **overrides)
    if what == "patches":
        return train_patches(Path(out_dir), **overrides)
    if what in TESTBED_RECIPES:
        return train_testbed(what, Path(out_dir), **overrides)
    raise LazyflowError(f"nothing to train named {what!r}; choose one of {', '.join(RECIPES)}")
