"""``sample``: run a pretrained model under any schedule.

The model was trained on a ``source`` schedule; the run integrates in the ``schedule`` frame with one
of the registered integrators (:mod:`lazyflow.runtime.integrators`).  Each step is one affine update
from a coefficient table built before the loop, so the loop has no host synchronisation and no
branching on tensor values; NaN or inf from the model is reported after the loop, naming the step.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import torch

from .errors import LazyflowError, SamplingError
from .grids import GridSpec, make_grid
from .integrators import Callback, Plan, build_plan, get_integrator
from .noise import per_sample_normal
from .progress import progress_bar
from .schedule import Schedule, load_schedule

__all__ = ["sample", "run_plan", "resolve_device", "resolve_dtype", "DEFAULT_FINAL_STEP"]

#: the default last step, chosen by measurement on the digits model (README: a plain step was better
#: than returning eta_X for point-mass Euler, 8.7 against 13.4 FD at 8 NFE, and about equal elsewhere)
DEFAULT_FINAL_STEP = "euler"

Model = Callable[..., torch.Tensor]


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


def run_plan(model: Model, x: torch.Tensor, plan: Plan, noise: Callable[[int], torch.Tensor], *,
             model_kwargs: dict[str, Any] | None = None, compile: bool = False, callback: Callback | None = None,
             progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Integrate from ``x`` along ``plan``; ``noise(k)`` is step k's xi (zeros for an ODE)."""
    evaluate = _Evaluator(model, plan, model_kwargs or {})
    ops = _compiled_ops() if compile else (_affine, _two_point)
    x = plan.integrator.run(evaluate, x, plan, noise, ops, callback, progress)
    evaluate.raise_if_bad()
    if not torch.isfinite(x).all():
        raise SamplingError("the samples are not finite after the last step (the integrator diverged); "
                            "use more steps, another integrator or a logsnr grid")
    return x


def _affine(x, m, a, b, c, xi):
    """x' = a x + b m + c xi."""
    return a * x + b * m + c * xi


def _two_point(x, m, x2, m2, a, b, d, e, c, xi):
    """x' = a x + b m + d x~ + e m~ + c xi."""
    return a * x + b * m + d * x2 + e * m2 + c * xi


def _compiled_ops():
    return torch.compile(_affine), torch.compile(_two_point)


_DTYPES = {"float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
           "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from a dtype or its name (``"float64"``, ``"torch.bfloat16"``, ...)."""
    if isinstance(dtype, str):
        key = dtype.strip().removeprefix("torch.")
        if key not in _DTYPES:
            raise LazyflowError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise LazyflowError(f"dtype must be a floating-point torch dtype (float32, float64, bfloat16, float16), "
                            f"got {dtype!r}")
    return dtype


def resolve_device(device: torch.device | str | None) -> torch.device:
    """A torch device that this build and machine can use, else one specific error."""
    try:
        device = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError):
        raise LazyflowError(f"unknown device {device!r} (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LazyflowError(f"device {str(device)!r}: this torch build or machine has no CUDA "
                                f"(torch {torch.__version__}); use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LazyflowError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise LazyflowError("device 'mps' is not available on this machine")
    return device


def _check_model_dtype(model: Model, dtype: torch.dtype) -> None:
    """A module whose floating parameters have another dtype than the run's cannot take its inputs."""
    if not isinstance(model, torch.nn.Module):
        return
    kinds = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    if kinds and dtype not in kinds:
        have = ", ".join(sorted(str(k).removeprefix("torch.") for k in kinds))
        raise LazyflowError(f"dtype {str(dtype).removeprefix('torch.')} does not match the model's parameters ({have}): "
                            f"pass that dtype, or convert the model with model.to(torch.{str(dtype).removeprefix('torch.')})")


def sample(model: Model, shape: Sequence[int], *, schedule: Any = "pointmass", source: Any = "linear", steps: int = 8,
           integrator: str = "euler", final_step: str | None = None, grid: GridSpec = "uniform",
           prediction: str = "velocity", seed: int = 0, batch_size: int | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype | str = torch.float32, compile: bool = False,
           model_kwargs: dict[str, Any] | None = None, callback: Callback | None = None,
           progress: bool = False) -> torch.Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` from a pretrained ``model``.

    ``model(x, t, **model_kwargs)`` is the network trained on the ``source`` schedule, t of shape
    (batch,) in the source's time, returning a ``prediction`` (velocity, x, noise or score).  The run
    integrates in the ``schedule`` frame over a ``grid`` of ``steps`` steps with ``integrator``.
    ``schedule`` and ``source`` are anything :func:`load_schedule` resolves (a preset name, a .toml or
    kernel path, a :class:`Schedule` such as ``load_schedule("sd3", shift=1.7)``).  Sample i depends
    only on (seed, i).  Tensors in ``model_kwargs`` whose first dimension is ``shape[0]`` are
    per-sample conditioning and follow their samples into each batch.  ``callback(StepInfo)`` sees
    every step (t, x, eta_X, drift).  Bad input raises :class:`LazyflowError`; a run that meets NaN or
    inf raises :class:`SamplingError` naming the step.
    """
    target, src = load_schedule(schedule), load_schedule(source)
    method = get_integrator(integrator)
    try:
        shape = tuple(_count(s, "shape entries") for s in shape)
    except TypeError:
        raise LazyflowError(f"shape must be a sequence of positive integers, got {shape!r}") from None
    if len(shape) < 2:
        raise LazyflowError(f"shape must be (n, *data_shape) with positive sizes, got {shape}")
    if batch_size is not None:
        batch_size = _count(batch_size, "batch_size")
    final_step = DEFAULT_FINAL_STEP if final_step is None else final_step
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    _check_model_dtype(model, dtype)
    times = make_grid(target, src, steps, grid)
    steps = times.numel() - 1
    plan = build_plan(target, src, times, integrator=method, final_step=final_step, prediction=prediction,
                      device=device, dtype=dtype)
    n, data_shape = shape[0], shape[1:]
    start_scale = float(target.values(times[:1]).alpha[0])
    chunk = batch_size or n
    draws = (0 if target.point_mass else 1) + (steps if target.stochastic else 0)
    outputs = []
    with progress_bar(steps * ((n + chunk - 1) // chunk), enabled=progress, desc="sampling") as update, torch.no_grad():
        for start in range(0, n, chunk):
            indices = range(start, min(start + chunk, n))
            draws_dev = per_sample_normal(seed, indices, max(draws, 1), data_shape).to(device=device, dtype=dtype)
            if target.point_mass:
                x = torch.zeros((len(indices), *data_shape), device=device, dtype=dtype)
                step_noise = draws_dev
            else:  # I_t0 = alpha(t0) Z (exact at t0 = 0; the data term beta(t0) X is dropped if t0 > 0)
                x, step_noise = draws_dev[:, 0] * start_scale, draws_dev[:, 1:]
            if target.stochastic:
                noise = (lambda k, s=step_noise: s[:, k])
            else:
                zeros = torch.zeros_like(x)
                noise = (lambda k, z=zeros: z)
            outputs.append(run_plan(model, x, plan, noise, model_kwargs=_chunk_kwargs(model_kwargs, n, indices),
                                    compile=compile, callback=callback, progress=update))
    return torch.cat(outputs)


def _count(value: Any, what: str) -> int:
    """A positive integer (Python or NumPy), else a specific error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise LazyflowError(f"{what} must be positive integers, got {value!r}")
    return int(value)


def _chunk_kwargs(model_kwargs: dict[str, Any] | None, n: int, indices: range) -> dict[str, Any]:
    """Per-sample conditioning: tensors whose first dimension is n are cut to the chunk's samples."""
    if not model_kwargs:
        return {}
    if len(indices) == n:
        return dict(model_kwargs)
    return {key: value[indices.start:indices.stop] if isinstance(value, torch.Tensor) and value.dim() > 0
            and value.shape[0] == n else value for key, value in model_kwargs.items()}
