"""On k-diffusion's own sigmas: ``sample_lazyflow`` against k-diffusion's ``sample_dpmpp_2m`` on one model (the
measurement behind the k-diffusion default, docs/k-diffusion.md "Which default").

    python -m lazyflow.runtime.evaluation.sigmas_study MODEL [--model-kind K] [--class-labels L] [--guidance G]
                                                      [--n N] [--integrators I1,I2] [--data-stats FILE]

Rows: pathwise error (mean |x - x*|, x* the model's own 800-step ODE solution from the sampler's start state
x = sigma_max z at t0 = 1 / (1 + sigma_max)) at 4, 6, 8 steps on Karras sigmas (rho 7, 0.002 to 80 and to
14.6) of ``sample_dpmpp_2m``, ``sample_lazyflow`` with its defaults, and ``sample_lazyflow`` with each of
``--integrators`` (no statistics: the frame of :data:`~lazyflow.runtime.core.defaults.SIGMAS_FRAME_VARIANCE`).  Start noise: seed 0, as the bench's; a
conditional model's labels repeat ``--class-labels`` over the samples.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import exit_status
from ...parsers import named_values
from ..core import defaults
from ..core.integrators import INTEGRATORS, get_integrator
from ..core.noise import standard_normal
from ..integrations.k_diffusion_samplers import load_k_diffusion_sampling, sample_lazyflow
from ..models.registry import load_model
from .paths import path_reference
from .peer_solvers import ve_denoiser

__all__ = ["sigmas_study", "main"]

STEPS = (4, 6, 8)
SIGMA_MAXES = (80.0, 14.6)


def sigmas_study(model: str, *, kind: str | None = None, n: int = 256, integrators: tuple[str, ...] = (),
                 data_stats: str | None = None, log: Callable[[str], None] = print,
                 **options: Any) -> dict[str, list[float]]:
    """Print and return {row label: paths at STEPS} for each sigma_max in SIGMA_MAXES (``data_stats``: a
    statistics file; each of ``integrators`` that takes statistics also runs with them)."""
    for name in integrators:   # refused before any work
        get_integrator(name)
    loaded = load_model(model, kind=kind, num_samples=n, source="linear", prediction="velocity", **options)
    start = standard_normal(0, range(n), 0, tuple(loaded.data_shape))
    sampling = load_k_diffusion_sampling()
    denoise = ve_denoiser(lambda x, t: loaded.model(x, t, **loaded.model_kwargs))

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:   # one sigma per call, as the peers'
        return denoise(x, float(sigma.reshape(-1)[0]))

    rows: dict[str, list[float]] = {}
    samplers = {"k-diffusion sample_dpmpp_2m": lambda x, s: sampling.sample_dpmpp_2m(denoiser, x, s, disable=True),
                f"sample_lazyflow defaults ({defaults.SIGMAS_INTEGRATOR})":
                    lambda x, s: sample_lazyflow(denoiser, x, s, disable=True)}
    for name in integrators:
        samplers[f"sample_lazyflow integrator={name}"] = \
            lambda x, s, name=name: sample_lazyflow(denoiser, x, s, disable=True, integrator=name)
        if data_stats is not None and INTEGRATORS[name].needs_data_stats:
            samplers[f"sample_lazyflow integrator={name} [{Path(data_stats).name}]"] = \
                lambda x, s, name=name: sample_lazyflow(denoiser, x, s, disable=True, integrator=name,
                                                        data_stats=data_stats)
    with torch.no_grad():
        for sigma_max in SIGMA_MAXES:
            reference = path_reference(loaded.model, "linear", start, t0=1 / (1 + sigma_max),
                                       model_kwargs=loaded.model_kwargs)
            for label, run in samplers.items():
                values = [reference.error(run(start * sigma_max, sampling.get_sigmas_karras(k, 0.002, sigma_max, rho=7.0)))
                          for k in STEPS]
                rows[f"{label}, Karras from {sigma_max:g}"] = values
                log(f"{model} from {sigma_max:5g}  {label:48s} " + " ".join(f"{v:8.3f}" for v in values))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazyflow.runtime.evaluation.sigmas_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--model-kind", default=None)
    parser.add_argument("--class-labels", default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--integrators", default="none",
                        help="more sample_lazyflow rows, comma-separated integrators (default none: the defaults' only)")
    parser.add_argument("--data-stats", default=None, help="a statistics file (lazyflow stats) for the data frames")
    parser.add_argument("--model-param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of the model kind (repeatable; e.g. sit-s/2's hidden_size=64)")
    args = parser.parse_args(argv)

    def run() -> None:
        options = {k: v for k, v in (("class_labels", args.class_labels), ("guidance", args.guidance)) if v is not None}
        if args.model_param:
            options["model_params"] = named_values(args.model_param, "--model-param")
        integrators = tuple(name for name in args.integrators.split(",") if name not in ("", "none"))
        sigmas_study(args.model, kind=args.model_kind, n=args.n, integrators=integrators,
                     data_stats=args.data_stats, log=lambda line: print(line, flush=True), **options)
    return exit_status(run, "sigmas_study")


if __name__ == "__main__":
    raise SystemExit(main())
