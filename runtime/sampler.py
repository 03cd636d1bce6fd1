"""``sample``: run a pretrained model under any generated schedule.

The integrators are small functions over (model, x, plan) with the noise given; each step is one
affine update from a coefficient table built before the loop, so the loop has no host
synchronisation and no branching on tensor values.
"""
from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Callable, Sequence

import torch

from . import kernels
from .grids import GridSpec, make_grid
from .noise import per_sample_normal
from .tables import MULTISTEP, Plan, SamplingError, build_plan

__all__ = ["sample", "run_plan", "SamplingError", "DEFAULT_FINAL_STEP"]

#: the default last step, chosen by measurement on the digits model (README: a plain step was better
#: than returning eta_X for point-mass Euler, 8.7 against 13.4 FD at 8 NFE, and about equal elsewhere)
DEFAULT_FINAL_STEP = "euler"

Model = Callable[..., torch.Tensor]


def _affine(x: torch.Tensor, m: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
            xi: torch.Tensor) -> torch.Tensor:
    """x' = a x + b m + c xi."""
    return a * x + b * m + c * xi


def _corrector(x: torch.Tensor, m: torch.Tensor, x2: torch.Tensor, m2: torch.Tensor, a: torch.Tensor,
               b: torch.Tensor, d: torch.Tensor, e: torch.Tensor, c: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """x' = a x + b m + d x~ + e m~ + c xi."""
    return a * x + b * m + d * x2 + e * m2 + c * xi


class _Evaluator:
    """Calls the model at (tau, x * in_scale), checks its output shape, records non-finite output."""

    def __init__(self, model: Model, plan: Plan, model_kwargs: dict[str, Any]):
        self.model, self.plan, self.kwargs = model, plan, model_kwargs
        self.finite: list[torch.Tensor] = []   # one 0-d flag per call, read once after the loop
        self.steps: list[int] = []

    def __call__(self, x: torch.Tensor, tau: torch.Tensor, in_scale: torch.Tensor, step: int) -> torch.Tensor:
        out = self.model(x * in_scale, tau.expand(x.shape[0]), **self.kwargs)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SamplingError(f"model output at step {step} (t = {self.plan.times[step].item():.6g}) has shape {got}, "
                                f"expected {tuple(x.shape)}")
        self.finite.append(torch.isfinite(out).all())
        self.steps.append(step)
        return out

    def raise_if_bad(self) -> None:
        """The one host synchronisation after the loop."""
        if not self.finite:
            return
        flags = torch.stack(self.finite).cpu()
        if not bool(flags.all()):
            k = self.steps[int((~flags).nonzero()[0, 0])]
            raise SamplingError(f"the model returned NaN or inf at step {k} (t = {self.plan.times[k].item():.6g}, "
                                f"model time {self.plan.tau[k].item():.6g})")


def run_plan(model: Model, x: torch.Tensor, plan: Plan, noise: torch.Tensor, *, model_kwargs: dict[str, Any] | None = None,
             compile: bool = False, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Integrate from ``x`` along ``plan``; ``noise[:, k]`` is step k's xi (zeros for an ODE)."""
    evaluate = _Evaluator(model, plan, model_kwargs or {})
    affine, corrector = (torch.compile(_affine), torch.compile(_corrector)) if compile else (_affine, _corrector)
    if plan.integrator in MULTISTEP:
        return _run_multistep(evaluate, x, plan, noise, affine, progress)
    for k in range(plan.steps):
        xi = noise[:, k]
        m = evaluate(x, plan.tau[k], plan.in_scale[k], k)
        if plan.two_stage[k]:
            x2 = affine(x, m, plan.a1[k], plan.b1[k], plan.c1[k], xi)
            m2 = evaluate(x2, plan.tau2[k], plan.in_scale2[k], k)
            x = corrector(x, m, x2, m2, plan.a[k], plan.b[k], plan.d[k], plan.e[k], plan.c[k], xi)
        else:
            x = affine(x, m, plan.a[k], plan.b[k], plan.c[k], xi)
        if progress is not None:
            progress(1)
    return _checked(evaluate, x)


def _checked(evaluate: _Evaluator, x: torch.Tensor) -> torch.Tensor:
    """After the loop: refuse NaN/inf from the model (naming the step) or in the samples."""
    evaluate.raise_if_bad()
    if not torch.isfinite(x).all():
        raise SamplingError("the samples are not finite after the last step (the integrator diverged); "
                            "use more steps, another integrator or a logsnr grid")
    return x


def _run_multistep(evaluate: _Evaluator, x: torch.Tensor, plan: Plan, noise: torch.Tensor, affine,
                   progress: Callable[[int], None] | None) -> torch.Tensor:
    """Multistep exponential steps x' = a x + b (w eta - u eta_prev) + c xi; with ``multistep-pc`` each
    predicted point's model call also corrects the step just taken: x' = a x + b (eta + v (eta_next - eta)) + c xi."""
    correct = plan.integrator == "multistep-pc"
    eta_prev = torch.zeros_like(x)
    eta = plan.p[0] * x + plan.q[0] * evaluate(x, plan.tau[0], plan.in_scale[0], 0)
    for k in range(plan.steps):
        xi = noise[:, k]
        x_next = affine(x, plan.w[k] * eta - plan.u[k] * eta_prev, plan.a[k], plan.b[k], plan.c[k], xi)
        if k + 1 < plan.steps:
            m = evaluate(x_next, plan.tau[k + 1], plan.in_scale[k + 1], k + 1)
            eta_next = plan.p[k + 1] * x_next + plan.q[k + 1] * m
            if correct:
                x_next = affine(x, eta + plan.v[k] * (eta_next - eta), plan.a[k], plan.b[k], plan.c[k], xi)
            eta_prev, eta = eta, eta_next
        x = x_next
        if progress is not None:
            progress(1)
    return _checked(evaluate, x)


def sample(model: Model, shape: Sequence[int], *, schedule: str | ModuleType = "pointmass", steps: int = 8,
           integrator: str = "euler", final_step: str | None = None, grid: GridSpec = "uniform",
           source: str = "linear", prediction: str = "velocity", seed: int = 0, batch_size: int | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32, compile: bool = False,
           model_kwargs: dict[str, Any] | None = None, progress: bool = False) -> torch.Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` from a pretrained ``model``.

    ``model(x, t, **model_kwargs)`` is the network trained on the ``source`` schedule, t of shape
    (batch,) in the source's time, returning a ``prediction`` (velocity, x, noise or score).
    The run integrates in the ``schedule`` frame (a kernel name or module) over a ``grid`` of
    ``steps`` steps.  Sample i depends only on (seed, i).  Tensors in ``model_kwargs`` whose first
    dimension is ``shape[0]`` are per-sample conditioning and follow their samples into each batch.
    """
    kernel = kernels.load(schedule)
    if source != kernel.SOURCE:
        raise ValueError(f"kernel {kernel.NAME!r} was generated for source schedule {kernel.SOURCE!r}, not {source!r}; "
                         f"emit one with `lazyflow emit --schedule ... --source {source}`")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (n, *data_shape) with positive sizes, got {shape}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    final_step = DEFAULT_FINAL_STEP if final_step is None else final_step
    device = torch.device(device) if device is not None else torch.device("cpu")
    times = make_grid(kernel, steps, grid)
    plan = build_plan(kernel, times, integrator=integrator, final_step=final_step, prediction=prediction,
                      device=device, dtype=dtype)
    n, data_shape = shape[0], shape[1:]
    start_scale = float(kernel.schedule(times[:1])[0][0])
    chunk = batch_size or n
    draws = (0 if kernel.POINT_MASS else 1) + (steps if kernel.STOCHASTIC else 0)
    bar = _progress_bar(total=steps * ((n + chunk - 1) // chunk), enabled=progress)
    outputs = []
    with bar as update, torch.no_grad():
        for start in range(0, n, chunk):
            indices = range(start, min(start + chunk, n))
            draws_cpu = per_sample_normal(seed, indices, max(draws, 1), data_shape)
            draws_dev = draws_cpu.to(device=device, dtype=dtype)
            if kernel.POINT_MASS:
                x = torch.zeros((len(indices), *data_shape), device=device, dtype=dtype)
                step_noise = draws_dev
            else:  # I_t0 = alpha(t0) Z (exact at t0 = 0; the data term beta(t0) X is dropped if t0 > 0)
                x, step_noise = draws_dev[:, 0] * start_scale, draws_dev[:, 1:]
            if not kernel.STOCHASTIC:
                step_noise = torch.zeros((len(indices), steps, *data_shape), device=device, dtype=dtype)
            outputs.append(run_plan(model, x, plan, step_noise, model_kwargs=_chunk_kwargs(model_kwargs, n, indices),
                                    compile=compile, progress=update))
    return torch.cat(outputs)


def _chunk_kwargs(model_kwargs: dict[str, Any] | None, n: int, indices: range) -> dict[str, Any]:
    """Per-sample conditioning: tensors whose first dimension is n are cut to the chunk's samples."""
    if not model_kwargs:
        return {}
    if len(indices) == n:
        return dict(model_kwargs)
    return {key: value[indices.start:indices.stop] if isinstance(value, torch.Tensor) and value.dim() > 0
            and value.shape[0] == n else value for key, value in model_kwargs.items()}


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool):
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        yield None
        return
    with tqdm(total=total, desc="sampling", unit="step") as bar:
        yield bar.update
