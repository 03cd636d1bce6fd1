"""The measurement behind :func:`lazyflow.runtime.core.stats_kind.choose_kind`: per dimension d and number n
of statistics samples, the path at a few NFE of the data frame with each kind of statistics estimated from
n exact draws of a random mixture, against the mixture's converged 800-step ODE solution from the same noise.

    python -m lazyflow.runtime.evaluation.kind_choice --quick

The mixtures are ``gmm:2601,dim=D`` (6 components of rank-3 covariances; not a held-out problem); the
sampler linear/data-multistep-pc on the uniform grid, float64.  ``dct`` sees the flat samples as one plane
(1, s, s) (d = s^2): these mixtures are not stationary, so the DCT basis is only another fixed basis here.
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import torch

from ..core.data_stats import DataStats
from ..core.integrators import INTEGRATORS
from ..core.sampler import sample
from ..core.stats_kind import FULL_LIMIT, choose_kind
from ..models.gmm import ExactMixtureModel, load_random
from .paths import path_reference

__all__ = ["kind_choice", "format_kind_choice"]

INTEGRATOR = "data-multistep-pc"


def _candidates(d: int, n: int) -> list[tuple[str, int | None]]:
    """The kinds measured at (d, n): diag, lowrank at ranks below n, dct where d is a square, full up to
    FULL_LIMIT (also where n < d, to see what the rule avoids)."""
    out: list[tuple[str, int | None]] = [("diag", None)]
    out += [("lowrank", r) for r in (16, 64, 256) if r < min(n - 1, d)]
    if math.isqrt(d) ** 2 == d and d >= 64:
        out.append(("dct", None))
    if d <= FULL_LIMIT:
        out.append(("full", None))
    return out


def kind_choice(dims: tuple[int, ...] = (64, 1024, 4096), ns: tuple[int, ...] = (500, 1000, 4000),
                paths: int = 64, nfe: int = 4, seed: int = 2601, integrator: str = INTEGRATOR,
                log: Callable[[str], None] = print) -> dict:
    """Rows (d, n, kind, rank, path) and the kind the rule picks per (d, n)."""
    rows, picks = [], []
    steps = INTEGRATORS[integrator].steps_for_nfe(nfe)
    for d in dims:
        model = load_random(f"gmm:{seed}", dim=d)
        z = torch.randn(paths, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        start = time.perf_counter()
        ref = path_reference(model, "linear", z)
        log(f"d = {d}: reference in {time.perf_counter() - start:.0f} s (check {ref.check:.2e})")
        for n in ns:
            data = model.exact_samples(n, 1).to(torch.float64)
            for kind, rank in _candidates(d, n):
                side = math.isqrt(d)
                shape = (1, side, side) if kind == "dct" else (d,)
                net = ExactMixtureModel(model.mixture, shape, model.name) if kind == "dct" else model
                stats = DataStats.from_samples(data.reshape(n, *shape), kind=kind, rank=rank)
                x = sample(net, (paths, *shape), schedule="linear", integrator=integrator, steps=steps,
                           data_stats=stats, dtype=torch.float64, initial=z.reshape(paths, *shape))
                rows.append({"d": d, "n": n, "kind": kind, "rank": rank, "path": ref.error(x)})
            cell = [r for r in rows if r["d"] == d and r["n"] == n]
            best = min(cell, key=lambda r: r["path"])
            picks.append({"d": d, "n": n, "best": _label(best), "rule": _label(dict(zip(("kind", "rank"),
                                                                                      choose_kind((d,), n))))})
            log(f"  n = {n}: " + ", ".join(f"{_label(r)} {r['path']:.3f}" for r in cell))
    return {"nfe": nfe, "paths": paths, "seed": seed, "integrator": integrator, "rows": rows, "picks": picks}


def digits_kind_choice(ns: tuple[int, ...] = (300, 1797), paths: int = 64, nfe: int = 4,
                       integrator: str = INTEGRATOR, log: Callable[[str], None] = print) -> dict:
    """The same on an image model: the embedded digits flow (1 x 8 x 8), statistics of the first n of the 1,797
    digit images (its training data), path against its own converged ODE solution."""
    from ..models.data import digits
    from ..models.registry import load_model

    model, data = load_model("digits").model, digits().to(torch.float64)
    z = torch.randn(paths, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref = path_reference(model, "linear", z)
    rows, picks, steps = [], [], INTEGRATORS[integrator].steps_for_nfe(nfe)
    for n in ns:
        for kind, rank in [("diag", None), ("lowrank", 16), ("dct", None), ("full", None)]:
            stats = DataStats.from_samples(data[:n], kind=kind, rank=rank)
            x = sample(model, (paths, 1, 8, 8), schedule="linear", integrator=integrator, steps=steps, data_stats=stats,
                       dtype=torch.float64, initial=z)
            rows.append({"d": 64, "n": n, "kind": kind, "rank": rank, "path": ref.error(x)})
        cell = [r for r in rows if r["n"] == n]
        picks.append({"d": 64, "n": n, "best": _label(min(cell, key=lambda r: r["path"])),
                      "rule": _label(dict(zip(("kind", "rank"), choose_kind((1, 8, 8), n))))})
        log(f"  digits n = {n}: " + ", ".join(f"{_label(r)} {r['path']:.3f}" for r in cell))
    return {"nfe": nfe, "paths": paths, "seed": "digits", "integrator": integrator, "rows": rows, "picks": picks}


def _label(row: dict) -> str:
    return f"{row['kind']}{'' if row['rank'] is None else ' ' + str(row['rank'])}"


def format_kind_choice(result: dict) -> str:
    """One line per (d, n): every kind's path, the best and what the rule picks for a flat shape (d,)."""
    model = "digits" if result["seed"] == "digits" else f"gmm:{result['seed']},dim=d"
    lines = [f"path at {result['nfe']} NFE ({result['integrator']}, uniform grid, {result['paths']} samples, {model})"]
    for pick in result["picks"]:
        cell = [r for r in result["rows"] if (r["d"], r["n"]) == (pick["d"], pick["n"])]
        lines.append(f"d={pick['d']:<5} n={pick['n']:<5} " + "  ".join(f"{_label(r)}={r['path']:.3f}" for r in cell)
                     + f"  | best {pick['best']}, rule {pick['rule']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="32 samples per path (else 64)")
    p.add_argument("--dims", default="64,1024,4096", help="the mixtures' dimensions")
    p.add_argument("--ns", default="500,1000,4000", help="statistics samples")
    p.add_argument("--seed", type=int, default=2601, help="the mixtures gmm:SEED,dim=D")
    p.add_argument("--integrator", default=INTEGRATOR, help="the data frame (default data-multistep-pc)")
    p.add_argument("--digits", action="store_true", help="instead: the embedded digits flow (1 x 8 x 8 images)")
    args = p.parse_args(argv)
    ints = lambda text: tuple(int(v) for v in text.split(","))   # noqa: E731
    if args.digits:
        print(format_kind_choice(digits_kind_choice(paths=32 if args.quick else 64, integrator=args.integrator)))
        return
    result = kind_choice(ints(args.dims), ints(args.ns), paths=32 if args.quick else 64, seed=args.seed,
                         integrator=args.integrator)
    print(format_kind_choice(result))


if __name__ == "__main__":
    main()
