"""The pathwise error of a deterministic sampler: each sample against the model's own converged ODE
solution from the same initial noise,

    path = (1/n) sum_i |x_i - x*_i|        (|.|: the L2 norm over the sample's coordinates)

where x*_i solves the probability-flow ODE of the model (its velocity) in its source schedule from the
same start x0_i.  x* is computed with multistep3-pc on the uniform grid of :data:`PATH_REFERENCE_STEPS`
steps in float64 (the model itself is called in its own dtype).  Every bench run checks that x* has
converged: the same solver at half the steps; the mean distance ``check`` = (1/n) sum_i |x*_i - x'_i|
between the two bounds how far any row's ``path`` moves when the reference is swapped (triangle
inequality), and is printed beside the best 4-NFE path (it should be below 1% of it).  Measured: on
gmm64 and digits (500 samples) 400 -> 800 steps move x* by 1.7e-3 and 2.2e-3, 800 -> 1600 by 1.8e-4 to
5e-4.  FD and SW compare distributions; ``path`` compares each sample with the one the exact ODE maps
the same noise to, so a sampler cannot score well on it by matching moments alone."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["PathReference", "path_reference", "path_error", "PATH_REFERENCE_INTEGRATOR", "PATH_REFERENCE_GRID",
           "PATH_REFERENCE_STEPS"]

PATH_REFERENCE_INTEGRATOR = "multistep3-pc"
PATH_REFERENCE_GRID = "uniform"
PATH_REFERENCE_STEPS = 800


def path_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """(1/n) sum_i |x_i - x*_i|, the L2 norm over each sample's coordinates, in float64."""
    n = len(reference)
    diff = x.to(torch.float64).reshape(n, -1).cpu() - reference.to(torch.float64).reshape(n, -1).cpu()
    return float(diff.norm(dim=1).mean())


@dataclass(frozen=True)
class PathReference:
    """The converged ODE solution ``samples`` (float64) of ``method`` at ``steps`` steps (``nfe`` calls),
    and ``check``: its mean distance to the same solver at ``check_steps`` steps."""

    samples: torch.Tensor
    method: str
    steps: int
    nfe: int
    check_steps: int
    check: float
    seconds: float

    def error(self, x: torch.Tensor) -> float:
        """``path`` of samples ``x`` drawn from the same start noise."""
        return path_error(x, self.samples)

    def fields(self) -> dict[str, Any]:
        """What the bench's JSON records of the reference."""
        return {"method": self.method, "steps": self.steps, "nfe": self.nfe, "dtype": "float64",
                "check_steps": self.check_steps, "check": self.check, "seconds": round(self.seconds, 3)}


def _solve(model: Callable, x0: torch.Tensor, source: Any, steps: int, t0: float = 0.0, prediction: str = "velocity",
           **options: Any) -> tuple[torch.Tensor, int]:
    """x* at ``steps`` steps (uniform on [t0, 1]) and the network evaluations per sample; ``options`` (batch_size,
    model_kwargs, device) go to ``sample``."""
    import math

    from ..core.sampler import sample
    from ..core.call_counter import CallCounter

    counter = CallCounter(model)   # a module is called in its own dtype (the counter keeps it)
    frame = reference_frame(source)
    if frame is not source and t0 > 0:   # the same start in the frame's time: equal log snr
        t0 = float(frame.time_of_log_snr(source.log_snr(torch.tensor([t0], dtype=torch.float64)))[0])
    grid = PATH_REFERENCE_GRID if t0 == 0 else torch.linspace(t0, 1.0, steps + 1, dtype=torch.float64).tolist()
    with torch.no_grad():
        x = sample(counter, tuple(x0.shape), schedule=frame, source=source, steps=steps,
                   integrator=PATH_REFERENCE_INTEGRATOR, grid=grid, prediction=prediction,
                   dtype=torch.float64, initial=x0.to(torch.float64), **options)
    batches = math.ceil(len(x0) / (options.get("batch_size") or len(x0)))
    return x.cpu(), counter.calls // batches


def reference_frame(source: Any) -> Any:
    """The schedule x* is solved in: the source itself, but ``vp`` for a discrete diffusion schedule, whose time
    reaches log snr -2.7 (SD 1.x) in its first knot interval (1/1001): a uniform grid there would cover that in one
    step (measured on discrete:gmm:2707,dim=64: 800 -> 400 steps moved x* by 0.035 in the table's own time).  The ODE
    and its solution are the same in every frame (the frames meet at equal log snr)."""
    from ..core.discrete_schedule import is_discrete
    from ..core.schedule import load_schedule

    return load_schedule("vp") if is_discrete(source) else source


def path_reference(velocity: Callable, source: Any, x0: torch.Tensor, steps: int = PATH_REFERENCE_STEPS,
                   *, t0: float = 0.0, prediction: str = "velocity", **options: Any) -> PathReference:
    """x* from the start noise ``x0`` (n, *data_shape) for the ``velocity`` model on its ``source`` schedule,
    with its convergence check at steps // 2.  ``t0`` > 0: the solve starts at the source time t0 from
    alpha(t0) x0 (no data term; where a sampler that starts at t0 starts, e.g. a VE sampler from sigma_max:
    t0 = 1 / (1 + sigma_max) on the linear schedule) on the grid uniform on [t0, 1]; ``options``
    (``batch_size``, ``model_kwargs`` with per-sample conditioning, ``device``) go to ``sample``: the solve
    runs batch by batch (bounded memory); ``prediction``: what ``velocity`` returns where it is a trained network
    of another prediction (a noise model needs t0 > 0)."""
    from ..core.schedule import load_schedule

    start = time.perf_counter()
    source = load_schedule(source)
    samples, nfe = _solve(velocity, x0, source, steps, t0, prediction, **options)
    coarse, _ = _solve(velocity, x0, source, steps // 2, t0, prediction, **options)
    name = f"{reference_frame(source).name}/{PATH_REFERENCE_INTEGRATOR}/{PATH_REFERENCE_GRID}" + \
        (f" from t = {t0:.6g}" if t0 else "")
    return PathReference(samples, name, steps, nfe, steps // 2, path_error(coarse, samples),
                         time.perf_counter() - start)
