"""Torch-side subcommands of ``lazyflow``: sample, train, bench, bench-overhead, plot."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the runtime subcommands."""
    p = sub.add_parser("sample", help="sample a pretrained model in few steps")
    p.add_argument("--model", default="digits", help="embedded model name (digits) or a model file")
    p.add_argument("--schedule", default="pointmass", help="kernel name in runtime/kernels")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--integrator", default="euler",
                   choices=["euler", "heun", "midpoint", "exponential", "exp-midpoint", "multistep", "multistep-pc"])
    p.add_argument("--final-step", default=None, choices=["euler", "denoise"])
    p.add_argument("--grid", default="uniform", help="uniform, logsnr, edm or comma-separated times")
    p.add_argument("--prediction", default=None, help="velocity, x, noise or score (default: the model's own)")
    p.add_argument("--shape", default=None, help="data shape, e.g. 1,8,8 (default: the model's own)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the step")
    p.add_argument("--out", required=True, help="FILE.npy (raw samples), FILE.png (image grid) or FILE.pt")
    p.set_defaults(handler=run_sample)

    p = sub.add_parser("train", help="reproduce an embedded model's weights")
    p.add_argument("what", choices=["digits", "moons", "classifier"])
    p.add_argument("--out-dir", default=None, help="folder for the weights (default: the package's weights/)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    p.set_defaults(handler=run_train)

    from .bench import add_bench_commands
    add_bench_commands(sub)
    try:
        from figures.cli import add_plot_command
    except ImportError:  # an install without the figures package
        return
    add_plot_command(sub)


def parse_grid(text: str):
    """A named grid or comma-separated explicit times."""
    if "," in text:
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"--grid: cannot read {text!r} as comma-separated times") from None
    return text


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from . import models
    from .sampler import sample

    model = models.load(args.model)
    meta = getattr(model, "metadata", {})
    if args.shape:
        shape = tuple(int(s) for s in args.shape.split(","))
    elif hasattr(model, "data_shape"):
        shape = tuple(model.data_shape)
    else:
        raise ValueError("--shape is needed for this model (its data shape is not recorded)")
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.device:
        model = model.to(args.device)
    x = sample(model, (args.n, *shape), schedule=args.schedule, steps=args.steps, integrator=args.integrator,
               final_step=args.final_step, grid=parse_grid(args.grid), source=meta.get("schedule", "linear"),
               prediction=args.prediction or meta.get("prediction", "velocity"), seed=args.seed,
               batch_size=args.batch_size, device=args.device, compile=args.compile, progress=args.n * args.steps > 2000)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = x.float().cpu()
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    elif out.suffix == ".pt":
        torch.save(x, out)
    elif out.suffix == ".png":
        save_image_grid(x, out)
    else:
        raise ValueError(f"--out must end in .npy, .png or .pt, got {out.name!r}")
    print(f"wrote {out} ({args.n} samples of shape {tuple(shape)}, schedule {args.schedule}, {args.steps} steps, "
          f"{args.integrator}, grid {args.grid})")
    return 0


def save_image_grid(x, path: Path, columns: int | None = None, zoom: int = 4) -> None:
    """Samples (n, C, H, W) in [-1, 1] as a PNG grid (each pixel drawn ``zoom`` x ``zoom``)."""
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if x.dim() != 4:
        raise ValueError(f"a .png grid needs image samples (n, C, H, W), got shape {tuple(x.shape)}")
    n = x.shape[0]
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    h, w = x.shape[2], x.shape[3]
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1), 0.3)  # light grey borders
    images = ((x[:, 0].clamp(-1, 1) + 1) / 2).numpy()
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = images[i]
    plt.imsave(path, np.kron(canvas, np.ones((zoom, zoom))), cmap="gray_r", vmin=0, vmax=1)


def run_train(args: argparse.Namespace) -> int:
    from . import train

    out_dir = Path(args.out_dir) if args.out_dir else train.WEIGHTS
    overrides = {"steps": args.steps} if args.steps else {}
    if args.what == "digits":
        path = train.train_digits(out_dir, **overrides)
    elif args.what == "moons":
        path = train.train_moons(out_dir, **overrides)
    else:
        path = train.train_classifier(out_dir)
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    print(json.dumps({k: v for k, v in json.loads(path.with_suffix('.json').read_text()).items()
                      if k in ("test_accuracy", "train_seconds")}), file=sys.stdout)
    return 0
