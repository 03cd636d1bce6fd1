"""Benchmarks that print tables: ``lazyflow bench`` (quality at equal NFE, ours and peers side by
side on one model) and ``lazyflow bench-overhead`` (sampler time beyond the model's own)."""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["add_bench_commands", "CountingModel", "our_methods", "run_quality_bench"]


class CountingModel:
    """Wraps a model and counts its calls (network evaluations)."""

    def __init__(self, model: Callable):
        self.model, self.calls = model, 0

    def __call__(self, x, t, **kwargs):
        self.calls += 1
        return self.model(x, t, **kwargs)


@dataclass(frozen=True)
class OurMethod:
    schedule: str
    integrator: str
    grid: str
    final_step: str | None = None

    @property
    def name(self) -> str:
        last = f"/{self.final_step}" if self.final_step else ""
        return f"{self.schedule}/{self.integrator}/{self.grid}{last}"



def our_methods(full: bool = True) -> list[OurMethod]:
    """The samplers the bench compares: each schedule with each integrator and grid that applies."""
    methods = []
    for schedule in ("linear", "vp", "pointmass", "linear-sde", "vp-sde"):
        for integrator in ("euler", "heun", "midpoint", "exponential", "exp-midpoint", "multistep", "multistep-pc"):
            if schedule == "linear" and integrator == "exponential":
                continue  # identical to Euler on the linear schedule
            grids = ("uniform", "source", "logsnr") if full else ("uniform",)
            for grid in grids:
                if grid == "source" and schedule in ("linear", "linear-sde"):
                    continue  # the source frame itself: the same as uniform
                methods.append(OurMethod(schedule, integrator, grid))
    if full:  # the last step: a plain step or the denoised mean eta_X
        methods += [OurMethod("pointmass", integrator, grid, "denoise") for integrator in ("euler", "midpoint", "multistep-pc")
                    for grid in ("uniform", "logsnr")]
    return methods


def _row(method: str, peer: bool, stochastic: bool, budget: int, nfe: int, fd: float | None, seconds: float,
         error: str = "") -> dict:
    """One bench row; ``nfe`` is what the counting wrapper saw, ``budget`` the column it competes in (nfe <= budget)."""
    row = {"method": method, "peer": peer, "stochastic": stochastic, "nfe": nfe, "budget": budget, "fd": fd,
           "seconds": round(seconds, 3)}
    if error:
        row["error"] = error
    return row


def run_quality_bench(model_name: str, nfes: list[int], n: int, seed: int, include_peers: bool = True,
                      full: bool = True, log=print) -> dict:
    """Every method at every NFE budget on ``n`` samples; FD against the digits dataset."""
    from . import models
    from .metrics import bootstrap_floor, digits_fd, split_floor
    from .peers import available_peers
    from .sampler import sample

    import torch

    model = models.load(model_name)
    shape = (n, *model.data_shape)
    with torch.no_grad():
        rows = _run_all(model, shape, nfes, seed, include_peers, full, log)
    skipped = available_peers()[1] if include_peers else []
    reference = CountingModel(model)
    with torch.no_grad():
        ref = digits_fd(sample(reference, shape, schedule="linear", steps=250, integrator="heun", seed=seed))
    return {"rows": rows, "model": model_name, "n": n, "seed": seed, "nfe_budgets": nfes,
            "floor_split_fd": split_floor(), "floor_bootstrap_fd": bootstrap_floor(n, seed),
            "reference": {"method": "linear/heun/uniform", "nfe": reference.calls, "fd": ref},
            "skipped": skipped, "machine": machine(), "date": datetime.date.today().isoformat(),
            "command": "lazyflow " + " ".join(sys.argv[1:])}


def _run_all(model, shape, nfes, seed, include_peers, full, log) -> list[dict]:
    """One row per (method, budget): ours, then the installed peers from the same initial noise."""
    import torch

    from .metrics import digits_fd
    from .noise import per_sample_normal
    from .peers import available_peers
    from . import kernels
    from .sampler import sample
    from .tables import SamplingError, steps_for_nfe

    n, rows = shape[0], []
    for method in our_methods(full):
        for budget in nfes:
            counter = CountingModel(model)
            start = time.perf_counter()
            try:
                x = sample(counter, shape, schedule=method.schedule, steps=steps_for_nfe(method.integrator, budget),
                           integrator=method.integrator, grid=method.grid, final_step=method.final_step, seed=seed)
                fd, error = digits_fd(x), ""
            except (SamplingError, ValueError) as err:
                fd, error = None, str(err)
            rows.append(_row(method.name, False, kernels.load(method.schedule).STOCHASTIC, budget, counter.calls, fd,
                             time.perf_counter() - start, error))
        log(f"  {method.name}: " + ", ".join(f"{r['nfe']}->{_fmt(r['fd'])}" for r in rows[-len(nfes):]))
    if include_peers:
        peers = available_peers()[0]
        for name, (stochastic, fn) in peers.items():
            for budget in nfes:
                counter = CountingModel(model)
                x0 = per_sample_normal(seed, range(n), 1, shape[1:])[:, 0]  # the same start as ours: paired
                start = time.perf_counter()
                try:
                    x = fn(counter, x0, budget, seed)
                    fd, error = (digits_fd(x), "") if torch.isfinite(x).all() else (None, "non-finite samples")
                except Exception as err:  # noqa: BLE001 - a peer failing must not stop the bench
                    fd, error = None, f"{type(err).__name__}: {err}"
                rows.append(_row(name, True, stochastic, budget, counter.calls, fd, time.perf_counter() - start, error))
            log(f"  {name}: " + ", ".join(f"{r['nfe']}->{_fmt(r['fd'])}" for r in rows[-len(nfes):]))
    return rows


def machine() -> str:
    import torch

    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}"


def _fmt(value) -> str:
    return "  -  " if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def format_table(result: dict) -> str:
    """Rows = methods, columns = NFE budgets; each cell 'fd' (actual NFE when it differs from the budget)."""
    budgets = result["nfe_budgets"]
    by_method: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_method.setdefault((row["method"], row["peer"], row["stochastic"]), []).append(row)
    width = max(len(m[0]) for m in by_method) + 2
    header = f"{'method'.ljust(width)}{'peer':>5}{'sde':>5}" + "".join(f"{'nfe ' + str(b):>11}" for b in budgets)
    lines = [header, "-" * len(header)]
    for (method, peer, stochastic), rows in by_method.items():
        cells = []
        for budget, row in zip(budgets, rows):
            text = _fmt(row["fd"])
            if row["nfe"] != budget:
                text += f" ({row['nfe']})"
            cells.append(f"{text:>11}")
        lines.append(f"{method.ljust(width)}{'yes' if peer else '':>5}{'yes' if stochastic else '':>5}" + "".join(cells))
    ref = result["reference"]
    lines.append("")
    lines.append(f"FD on {result['n']} samples vs the 1,797 digits; floors: two dataset halves {result['floor_split_fd']:.3f}, "
                 f"{result['n']} images drawn from the dataset itself {result.get('floor_bootstrap_fd', float('nan')):.3f}; "
                 f"reference {ref['method']} at {ref['nfe']} NFE: {ref['fd']:.3f}")
    lines.append(f"machine: {result['machine']}; date {result['date']}")
    if result["skipped"]:
        lines.append("skipped peers: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


def best_by_kind(result: dict) -> str:
    """The best deterministic and stochastic sampler, ours and peers', at each budget."""
    lines = ["best FD per budget:      ours ODE | peer ODE | ours SDE | peer SDE"]
    for budget in result["nfe_budgets"]:
        cells = []
        for stochastic in (False, True):
            for peer in (False, True):
                rows = [r for r in result["rows"] if r["peer"] == peer and r["stochastic"] == stochastic
                        and r["fd"] is not None and r["budget"] == budget]
                best = min(rows, key=lambda r: r["fd"], default=None)
                cells.append(f"{_fmt(best['fd'])} {best['method']}" if best else "-")
        lines.append(f"  nfe {budget:>3}: " + " | ".join(cells))
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    nfes = sorted({int(v) for v in args.nfe.split(",")})
    if min(nfes) < 1:
        raise ValueError("--nfe values must be >= 1")
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    result = run_quality_bench(args.model, nfes, args.n, args.seed, include_peers=not args.no_peers,
                               full=not args.quick, log=log)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(result))
        print(best_by_kind(result))
    if args.save:
        with open(args.save, "w") as handle:
            json.dump(result, handle, indent=1)
    if args.plot:
        from figures.plots import plot_bench  # noqa: PLC0415

        plot_bench(result, args.plot)
    return 0


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="sample quality (FD) against NFE, ours and peers side by side")
    p.add_argument("--model", default="digits")
    p.add_argument("--nfe", default="2,4,6,8,12,16")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", default=None, help="also write the JSON result to this file")
    p.add_argument("--plot", default=None, help="write the quality-vs-NFE plot to this PNG")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--quick", action="store_true", help="uniform grids only")
    p.set_defaults(handler=run_bench)

    p = sub.add_parser("bench-overhead", help="sampler time per step beyond the model's forward, eager and compiled")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.set_defaults(handler=run_overhead)


def run_overhead(args: argparse.Namespace) -> int:
    from .overhead import overhead_table

    print(overhead_table(device=args.device, steps=args.steps, batch=args.batch, repeats=args.repeats,
                         compile=not args.no_compile))
    return 0
