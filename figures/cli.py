"""The ``lazyflow plot`` command (argument parsing only; the plots load matplotlib when they run)."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_plot_command", "run_plot"]


def add_plot_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw comparison figures into figures/")
    kinds = p.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="PNG file to write")
    common.add_argument("--schedules", default="linear,vp,pointmass",
                        help="comma-separated presets or .toml files")
    q = kinds.add_parser("schedules", parents=[common], help="alpha, beta, log snr, sigma, eps*, time map, scale")
    q.add_argument("--source", default="linear")
    q = kinds.add_parser("drift", parents=[common], help="Gaussian drift and drift norm along 2D paths")
    q.add_argument("--steps", type=int, default=64)
    q = kinds.add_parser("trajectories", parents=[common], help="2D sample paths side by side")
    q.add_argument("--data", default="gmm", choices=["gmm", "moons"])
    q.add_argument("--steps", type=int, default=16)
    q = kinds.add_parser("samples", parents=[common], help="digit grids: rows schedule/integrator, columns NFE")
    q.add_argument("--model", default="digits")
    q.add_argument("--nfe", default="2,4,8,16")
    q.add_argument("--integrators", default="euler,multistep-pc")
    q = kinds.add_parser("bench", help="quality against NFE from a bench JSON")
    q.add_argument("--from", dest="source_json", required=True, help="JSON written by lazyflow bench --json/--save")
    q.add_argument("--out", required=True)
    p.set_defaults(handler=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from .plots import plot_bench, plot_drift, plot_samples, plot_schedules, plot_trajectories

    names = [n.strip() for n in getattr(args, "schedules", "").split(",") if n.strip()]
    if args.kind == "schedules":
        fig = plot_schedules(names, source=args.source)
    elif args.kind == "drift":
        fig = plot_drift(names, steps=args.steps)
    elif args.kind == "trajectories":
        fig = plot_trajectories(names, data=args.data, steps=args.steps)
    elif args.kind == "samples":
        fig = plot_samples(names, [int(v) for v in args.nfe.split(",")], model=args.model,
                           integrators=[i.strip() for i in args.integrators.split(",")])
    else:
        fig = plot_bench(args.source_json)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0
