"""What a sampler's start costs before it takes a step: the model's own converged ODE from several start states,
scored by the bench's measures (docs/results.md, "bespoke solvers from the peers' own start").

    python -m lazyflow.runtime.evaluation.start_study MODEL [--n N] [--steps S] [--data-stats FILE]

A sampler that follows the model's ODE closely ends near that ODE's solution from its own start, so the
solution's FD, SW and NLL gap are what such a sampler can reach from there.  Starts (the bench's noise z, seed
0, N samples): t = 0 (pure noise) where the model's prediction is defined there; the time of log snr
:data:`~.bespoke_fit.OPEN_START_LOG_SNR` from alpha z; on a discrete table its noisiest training timestep
from alpha z (where diffusers' schedulers start, and a bespoke fit: :func:`.bespoke_fit.start_time`) and, with ``--data-stats`` (diag statistics: mean and
per-element variance), from that time's Gaussian marginal, beta mu + sqrt(alpha^2 + beta^2 var) z.  Each
solution: the bench's path reference (:func:`.paths.path_reference`, S steps in float64).
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from ...errors import LazyflowError, exit_status
from ...predictions import SILENT_AT_SNR_0
from ..core.data_stats import DataStats
from ..core.discrete_schedule import is_discrete, noisiest_training_time
from ..core.noise import standard_normal
from ..models.registry import load_measured
from .bespoke_fit import OPEN_START_LOG_SNR, start_time
from .paths import PATH_REFERENCE_STEPS, path_reference
from .scorers import scorer_factory

__all__ = ["start_study", "main"]


def start_study(model: str, *, n: int = 256, steps: int = PATH_REFERENCE_STEPS, data_stats: str | None = None,
                log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Print and return {start: {metric: value}} (module docstring)."""
    kind, loaded = load_measured(model)
    factory = scorer_factory(kind)
    scorer = factory(loaded, n) if factory is not None else None
    if scorer is None:
        raise LazyflowError(f"{model!r} has no measure of its samples (a mixture, digits or patches model has)")
    src, prediction = loaded.source, loaded.prediction
    z = standard_normal(0, range(n), 0, tuple(loaded.data_shape)).to(torch.float64)   # the bench's start noise
    starts: dict[str, tuple[float, torch.Tensor]] = {}
    if prediction not in SILENT_AT_SNR_0:
        starts["t = 0 (pure noise)"] = (0.0, z)
    lam = torch.tensor([OPEN_START_LOG_SNR], dtype=torch.float64)
    starts[f"log snr {OPEN_START_LOG_SNR:g}"] = (float(src.time_of_log_snr(lam)[0]), z)
    if is_discrete(src) and start_time(src, prediction) == noisiest_training_time(src):
        t0, last = noisiest_training_time(src), len(src.kernel.alphas_cumprod) - 1
        starts[f"training timestep {last} (diffusers' start)"] = (t0, z)
        if data_stats is not None:
            stats = DataStats.load(data_stats)
            if stats.kind != "diag":
                raise LazyflowError(f"--data-stats: the marginal start reads diag statistics, got {stats.kind}")
            v = src.values(torch.tensor([t0], dtype=torch.float64))
            alpha, beta = float(v.alpha[0]), float(v.beta[0])
            marginal = beta * stats.mean + (alpha ** 2 + beta ** 2 * stats.var).sqrt() * z
            starts[f"training timestep {last}, Gaussian marginal"] = (t0, marginal / alpha)   # the solve starts at alpha x0
    out: dict[str, dict[str, float]] = {}
    log(f"{model}: the model's ODE ({steps} steps, float64) from the bench's noise (seed 0, {n} samples)")
    log("| start | log snr | " + " | ".join(scorer.metrics) + " |")
    log("|---|---|" + "---|" * len(scorer.metrics))
    for name, (t0, x0) in starts.items():
        ref = path_reference(loaded.model, src, x0, steps, t0=t0, prediction=prediction,
                             model_kwargs=loaded.model_kwargs or None)
        scores = {k: float(v) for k, v in scorer.score(ref.samples.to(torch.float32)).items()}
        out[name] = scores
        lam0 = float(src.log_snr(torch.tensor([t0], dtype=torch.float64))[0])
        log(f"| {name} | {lam0:.3g} | " + " | ".join(f"{scores[m]:.4g}" for m in scorer.metrics) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazyflow.runtime.evaluation.start_study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=256, help="samples (default 256, the bench's)")
    parser.add_argument("--steps", type=int, default=PATH_REFERENCE_STEPS, help="steps of each ODE solve")
    parser.add_argument("--data-stats", default=None, help="diag statistics: adds the Gaussian-marginal start")
    args = parser.parse_args(argv)
    return exit_status(lambda: start_study(args.model, n=args.n, steps=args.steps, data_stats=args.data_stats),
                       "start_study")


if __name__ == "__main__":
    raise SystemExit(main())
