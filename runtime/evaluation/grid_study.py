"""Grids and defaults on one model, side by side with every deterministic peer on its own grid: the measurement
behind the k-diffusion default (docs/k-diffusion.md, "Lazy on your sigmas") and the high-dimension grids
(docs/results.md, "High dimension").

    python -m lazyflow.runtime.evaluation.grid_study MODEL [--n N] [--grids G1;G2] [--integrators I1,I2]

Rows, pathwise error (mean |x - x*| to the model's own 800-step ODE solution from the same start noise; a peer
or sampler that starts at sigma_max is scored against the solution from where it starts) at 4, 6, 8 NFE:
every installed deterministic peer; ``sample_lazyflow`` with its defaults on k-diffusion's Karras sigmas from 80
and 14.6; ``sample()``'s default ``multistep-pc`` on each grid; the data frames on each grid without statistics
(the frame N(E[X | c], I)) and with ``diag`` statistics of 2,000 of the model's own samples (32 multistep-pc steps, seed 12345); then each row's ratio to
the best peer.  Start noise: seed 0, as the bench's.
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import torch

from ..core.model_stats import stats_from_model
from ..core.noise import standard_normal
from ..core.sampler import sample
from ..integrations.k_diffusion_samplers import load_k_diffusion_sampling, sample_lazyflow
from .bench import bench_model
from .paths import PathReference, path_reference
from .peer_solvers import ve_denoiser
from .peers import available_peers, peer_start

__all__ = ["grid_study", "main"]

NFES = (4, 6, 8)


class _Study:
    """One model's start noise, its references by start time, and the rows measured so far."""

    def __init__(self, model_name: str, n: int, log: Callable[[str], None]):
        loaded = bench_model(model_name, "velocity", n)
        self.model, self.shape = loaded.peer_model(), (n, *loaded.loaded.data_shape)
        self.start = standard_normal(0, range(n), 0, self.shape[1:])
        self.references: dict[float, PathReference] = {}
        self.rows: list[tuple[str, list[float]]] = []
        self.log = log

    def reference(self, t0: float = 0.0) -> PathReference:
        key = round(t0, 12)
        if key not in self.references:
            self.references[key] = path_reference(self.model, "linear", self.start, 800, t0=t0)
            self.log(f"# reference from t0 = {t0:.4g}: halving its steps moves it by {self.references[key].check:.2e}")
        return self.references[key]

    def row(self, label: str, values: list[float]) -> None:
        self.rows.append((label, values))
        self.log(f"{label:72s} " + " ".join(f"{v:8.3f}" for v in values))

    def peers(self) -> list[float]:
        """Every deterministic peer's row; the best peer per budget."""
        peer_rows = []
        for name, (stochastic, fn) in available_peers()[0].items():
            if stochastic:
                continue
            reference = self.reference(peer_start(fn)[0])
            values = []
            for nfe in NFES:
                x = fn(self.model, self.start.clone(), nfe, 0)
                values.append(reference.error(x) if torch.isfinite(x).all() else math.nan)
            self.row(f"peer {name}", values)
            peer_rows.append(values)
        return [min(v[i] for v in peer_rows if not math.isnan(v[i])) for i in range(len(NFES))]

    def k_diffusion_defaults(self) -> None:
        sampling, denoise = load_k_diffusion_sampling(), ve_denoiser(self.model)

        def denoiser(x_ve: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:   # one sigma per call, as the peers'
            return denoise(x_ve, float(sigma.reshape(-1)[0]))

        for sigma_max in (80.0, 14.6):
            reference = self.reference(1 / (1 + sigma_max))
            values = [reference.error(sample_lazyflow(denoiser, self.start * sigma_max,
                                                      sampling.get_sigmas_karras(k, 0.002, sigma_max, rho=7.0),
                                                      disable=True)) for k in NFES]
            self.row(f"ours sample_lazyflow defaults (Karras rho=7, sigma_max {sigma_max:g})", values)

    def ours(self, label: str, **options) -> None:
        reference = self.reference()
        self.row(label, [reference.error(sample(self.model, self.shape, steps=k, seed=0, **options)) for k in NFES])


def grid_study(model_name: str, *, n: int = 256, grids: tuple[str, ...] = ("uniform", "shift:3"),
               integrators: tuple[str, ...] = ("data-multistep-pc", "data-multistep"), log=print) -> dict:
    """Run the study (rows printed as they come); returns {"rows": [(label, paths)], "best_peer": paths}."""
    study = _Study(model_name, n, log)
    with torch.no_grad():
        best = study.peers()
        study.row("BEST PEER", best)
        study.k_diffusion_defaults()
        for grid in grids:
            study.ours(f"ours multistep-pc {grid}", grid=grid)
            for integrator in integrators:   # no statistics: the frame N(E[X | c], I)
                study.ours(f"ours {integrator} {grid} [no statistics]", grid=grid, integrator=integrator)
        start = time.perf_counter()
        stats = stats_from_model(study.model, (2000, *study.shape[1:]), kind="diag", seed=12345, steps=32)
        log(f"# diag statistics of 2,000 of the model's own samples: {time.perf_counter() - start:.0f} s")
        for grid in grids:
            for integrator in integrators:
                study.ours(f"ours {integrator} {grid} [diag]", grid=grid, integrator=integrator, data_stats=stats)
    log("ratio to the best peer:")
    for label, values in study.rows:
        if label.startswith("ours"):
            log(f"{label:72s} " + " ".join(f"{a / b:8.2f}" for a, b in zip(values, best)))
    return {"rows": study.rows, "best_peer": best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lazyflow.runtime.evaluation.grid_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--grids", default="uniform;shift:3", help="';'-separated grids")
    parser.add_argument("--integrators", default="data-multistep-pc,data-multistep")
    args = parser.parse_args(argv)
    grid_study(args.model, n=args.n, grids=tuple(args.grids.split(";")),
               integrators=tuple(args.integrators.split(",")), log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
