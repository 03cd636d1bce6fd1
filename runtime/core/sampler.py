"""``sample``: run a pretrained model under any schedule.

The model was trained on a ``source`` schedule; the run integrates in the ``schedule`` frame with one
of the registered integrators (:mod:`lazyflow.runtime.core.integrators`).  Each step is one affine update
from a coefficient table built before the loop, so the loop has no host synchronisation and no
branching on tensor values; NaN or inf from the model is reported after the loop, naming the step.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from ...errors import LazyflowError, SamplingError
from .grid_choice import choose_grid
from .capture import captured_loop
from .data_frame import frame_for_run
from .data_stats import ConditionalStats, checked_data_stats
from .distributed import Ranks, gather_batches, local_device, ranks_of, share
from .integrators import build_plan
from .options import SampleOptions
from .limits import check_memory, check_steps
from .plan import EAGER, Call, Callback, Plan, compiled_ops, drive
from .noise import CounterNormal, NoiseSource
from .progress import progress_bar
from .schedule import Schedule, load_schedule
from . import defaults

__all__ = ["sample", "sample_batches", "SamplingRun", "check_seed", "per_sample_kwargs", "run_plan", "resolve_device", "resolve_dtype", "resolve_dtypes",
           "SamplingWarning", "DEFAULT_FINAL_STEP"]

#: the default last step (:mod:`.defaults`: the run's defaults, shared with the CLI and the diffusers scheduler)
DEFAULT_FINAL_STEP = defaults.FINAL_STEP
#: seeds are counters of the noise generator: integers in [0, 2^64)
SEED_RANGE = 2**64

Model = Callable[..., torch.Tensor]



class _Evaluator:
    """Calls the model on each :class:`Call`'s input in the model's dtype, checks the output's shape and
    dtype, and records per call whether the output is finite and how large the state is (read after the loop)."""

    def __init__(self, model: Model, plan: Plan, model_kwargs: dict[str, Any], model_dtype: torch.dtype):
        self.model, self.plan, self.kwargs, self.model_dtype = model, plan, model_kwargs, model_dtype
        self.finite: list[torch.Tensor] = []   # one 0-d flag per call
        self.size: list[torch.Tensor] = []     # root mean square of the state at each call
        self.steps: list[int] = []

    def __call__(self, call: Call) -> torch.Tensor:
        x, step = call.x, call.step
        out = self.model(*call.model_input(self.model_dtype), **self.kwargs)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SamplingError(f"model output at step {step} (t = {self.plan.times[step].item():.6g}) has shape {got}, "
                                f"expected {tuple(x.shape)}")
        if not out.dtype.is_floating_point:
            raise SamplingError(f"model output at step {step} has dtype {out.dtype}: a real floating-point tensor is needed")
        out = out.to(x.dtype)   # the state's precision (documented: the model's output is cast)
        self.finite.append(torch.isfinite(out).all())
        self.size.append(torch.linalg.vector_norm(x) / x.numel() ** 0.5)
        self.steps.append(step)
        return out

    def raise_if_bad(self) -> None:
        """The one host synchronisation after the loop: NaN/inf from the model names its step."""
        if not self.finite:
            return
        flags = torch.stack(self.finite).cpu()
        if not bool(flags.all()):
            k = self.steps[int((~flags).nonzero()[0, 0])]
            raise SamplingError(f"the model returned NaN or inf at step {k} (t = {self.plan.times[k].item():.6g}, "
                                f"model time {self.plan.tau[k].item():.6g})")

    def warn_if_blown_up(self, x: torch.Tensor, limit: float = 100.0) -> None:
        """Warn when the samples end far beyond unit scale (``limit`` times), naming the step where the
        state first grew past that: the sign of a diverging integrator or a degenerate schedule."""
        end = x.pow(2).mean().sqrt()
        sizes = torch.stack([*self.size, end]).cpu()
        if sizes[-1] <= limit:
            return
        first = int((sizes > limit).nonzero()[0, 0])   # sizes[i]: the state at call i (the last: the end)
        if first == 0:
            where = "the start"
        else:
            k = self.steps[first - 1]                   # the step whose update made it grow
            where = f"step {k} (t = {self.plan.times[k].item():.6g} -> {self.plan.times[k + 1].item():.6g})"
        warnings.warn(f"the samples' root mean square is {sizes[-1].item():.3g}, over {limit:g} times the unit scale "
                      f"of the data; the state first grew past that in {where}: the integrator or the schedule "
                      "diverges there (use more steps, another integrator or grid)", SamplingWarning, stacklevel=5)


#: how a captured loop is recorded: None = a CUDA graph (tests substitute a re-run on the CPU)
_recorder = None


class SamplingWarning(UserWarning):
    """A run that finished but whose samples look wrong (for instance far beyond the data's scale)."""


def run_plan(model: Model, x: torch.Tensor, plan: Plan, noise: Callable[[int], torch.Tensor], *,
             model_kwargs: dict[str, Any] | None = None, model_dtype: torch.dtype | None = None, compile: bool = False,
             callback: Callback | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Integrate from ``x`` along ``plan``; ``noise(k)`` is step k's xi (zeros for an ODE).  The state
    and its updates stay in ``x``'s dtype; the model is called in ``model_dtype`` (default: the same)."""
    x, evaluate = _integrate(model, x, plan, noise, model_kwargs or {}, model_dtype or x.dtype, compile,
                             callback, progress)
    return _checked(x, evaluate)


def _integrate(model, x, plan, noise, model_kwargs, model_dtype, compile, callback, progress):
    """The loop itself: no host synchronisation, no branch on tensor values (capturable)."""
    evaluate = _Evaluator(model, plan, model_kwargs, model_dtype)
    ops = compiled_ops() if compile else EAGER
    return drive(plan.loop(x, noise, ops, callback, progress), evaluate), evaluate


def _checked(x: torch.Tensor, evaluate: _Evaluator) -> torch.Tensor:
    """After the loop: NaN or inf names its step; non-finite samples are refused; blow-up is warned."""
    evaluate.raise_if_bad()
    if not torch.isfinite(x).all():
        raise SamplingError("the samples are not finite after the last step (the integrator diverged); "
                            "use more steps, another integrator or a logsnr grid")
    evaluate.warn_if_blown_up(x)
    return x


_DTYPES = {"float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
           "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16}
_HALF = (torch.bfloat16, torch.float16)


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


def resolve_dtypes(dtype: torch.dtype | str, model_dtype: torch.dtype | str | None,
                   model: Model | None = None) -> tuple[torch.dtype, torch.dtype]:
    """(state dtype, model-call dtype).  A half ``dtype`` (bfloat16, float16) means a half model with a
    float32 state; the model is called in ``model_dtype`` if given, else its floating parameters' dtype
    (a module with one), else the state's."""
    dtype = resolve_dtype(dtype)
    model_dtype = None if model_dtype is None else resolve_dtype(model_dtype)
    if dtype in _HALF:
        return torch.float32, model_dtype or dtype
    if model_dtype is None and isinstance(model, torch.nn.Module):
        kinds = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
        if len(kinds) == 1:
            model_dtype = kinds.pop()
    return dtype, model_dtype or dtype


def resolve_device(device: torch.device | str | None) -> torch.device:
    """A torch device that this build and machine can use, else one specific error."""
    try:
        device = local_device(torch.device(device if device is not None else "cpu"))
    except (RuntimeError, TypeError):
        raise LazyflowError(f"unknown device {device!r} (use cpu, cuda, cuda:N or mps)") from None
    if device.type not in ("cpu", "cuda", "mps"):   # meta, lazy, xla, ...: tensors without values or a backend
        raise LazyflowError(f"device {str(device)!r}: lazyflow samples on cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LazyflowError(f"device {str(device)!r}: this torch build or machine has no CUDA "
                                f"(torch {torch.__version__}); use device='cpu' (--device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LazyflowError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise LazyflowError("device 'mps' is not available on this machine")
    return device


def sample(model: Model, shape: Sequence[int], *, options: SampleOptions | None = None, **given: Any) -> torch.Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` from a pretrained ``model``.

    Every option is a field of :class:`~lazyflow.runtime.core.options.SampleOptions` (its default and meaning
    there), given by keyword (``sample(model, shape, steps=8, integrator="multistep-pc")``) or as ``options``
    (the keywords then replace its fields); an unknown keyword is refused in one line naming the options.

    ``model(x, t, **model_kwargs)`` is the network trained on the ``source`` schedule, t of shape
    (batch,) in the source's time, returning a ``prediction`` (velocity, x, noise or score).  The run
    integrates in the ``schedule`` frame over a ``grid`` of ``steps`` steps with ``integrator`` (defaults:
    linear, multistep-pc, uniform, 8 steps, last step euler, as on the command line and in the diffusers
    scheduler: :mod:`lazyflow.runtime.core.defaults` names the bench row that chose them; ``steps`` of a
    tuned grid file or of explicit times is read from them).  A grid ends at t = 1 unless ``final_step`` is given (it says how the run ends); the
    ``data-*`` integrators integrate in the frame exact for the data's Gaussian, ``data_stats``
    (:class:`~lazyflow.runtime.core.data_stats.DataStats`, per label :class:`~lazyflow.runtime.core.data_stats.ConditionalStats`,
    or the path of their file; without them N(E[X | c], I), the mean read from the first call: exact on
    Gaussian data of unit variance on any grid).
    ``schedule`` and ``source`` are anything :func:`load_schedule` resolves (a preset name, a .toml or
    kernel path, a :class:`Schedule` such as ``load_schedule("sd3", shift=1.7)``).  Sample i depends
    only on (seed, i).  Tensors in ``model_kwargs`` whose first dimension is ``shape[0]`` are
    per-sample conditioning and follow their samples into each batch.  ``callback(StepInfo)`` sees
    every step (t, x, eta_X, drift).

    Precision: the state and its affine updates run in ``dtype`` (float32, or float64 when asked); the
    model is called in ``model_dtype`` (default: its parameters' dtype for a module, else ``dtype``) and
    its output is cast back to ``dtype``.  A half ``dtype`` (bfloat16, float16) means a half model with a
    float32 state.  The samples come back in the state's dtype.

    Bad input raises :class:`LazyflowError`; a run that meets NaN or inf raises :class:`SamplingError`
    naming the step; samples far beyond the data's scale give a :class:`SamplingWarning`.  The other
    options (``initial``, ``noise``, ``compile``, ``capture``, ``distributed``) are those of
    :func:`sample_batches`; with ``distributed`` every rank gets all the samples.
    """
    run = SamplingRun.prepare(model, shape, SampleOptions.of(options, **given))
    run.check_memory(kept=run.shape[0])
    pieces = [x for _, x in run.batches()]
    return gather_batches(pieces, run.shape[0], run.shape[1:], run.ranks, device=run.device, dtype=run.dtype)


def sample_batches(model: Model, shape: Sequence[int], *, options: SampleOptions | None = None,
                   **given: Any) -> Iterator[tuple[range, torch.Tensor]]:
    """:func:`sample`, one batch at a time: yields (sample indices, samples) as each batch finishes, so
    that a caller can keep the finished batches of a long run.  Everything is checked when this is
    called, before the first batch runs.

    ``initial`` (optional, shape ``shape``) replaces each sample's first standard-normal draw: a standard
    schedule starts from x_0 = alpha_0 * initial; a point-mass run (which starts from 0) uses it as the
    noise of its first step.  Without it the draws come from ``seed``.

    Noise: draw d of sample i (d = 0 the start, d = 1 + k step k's increment) is drawn on ``device``
    when the step needs it, a pure function of (seed, i, d) (:mod:`lazyflow.runtime.core.noise`), so samples
    do not depend on ``batch_size``, chunking or the number of processes.  ``noise`` replaces the
    default :class:`~lazyflow.runtime.core.noise.CounterNormal` factory: ``noise(seed, indices, data_shape,
    device=..., dtype=...)`` returns ``draw -> tensor (len(indices), *data_shape)``.

    ``compile=True`` runs each step's noise draw and affine updates through ``torch.compile``d kernels
    (the draws then equal the eager ones to float rounding, about 1e-5): it fuses some thirty small
    kernels per step into two, which pays where kernel launches dominate (small models on a GPU, the
    noise of large CPU batches) and costs the compilation (seconds) on the first run; it does not pay
    on the CPU for small states.  ``capture=True`` (CUDA only) records the whole loop, model included,
    as a CUDA graph on the first chunk and replays it for the others and for later calls with the same
    settings (:mod:`lazyflow.runtime.core.capture`): for small models whose time is launch overhead.

    ``distributed``: ``True`` (the default process group, joined from torchrun's environment if
    needed) or a process group: this rank yields only its contiguous share of the indices
    (:mod:`lazyflow.runtime.core.distributed`); :func:`sample` gathers all of them on every rank."""
    return SamplingRun.prepare(model, shape, SampleOptions.of(options, **given)).batches()


@dataclass(frozen=True)
class SamplingRun:
    """One checked run: its plan, shape, dtypes, noise and this rank's chunks (every check is in
    :meth:`prepare`; :meth:`batches` only runs).  :func:`sample_batches` is ``prepare(...).batches()``;
    a caller that keeps finished batches (``lazyflow sample --resume``) runs only the chunks still to do
    with ``dataclasses.replace(run, chunks=pending).batches()``."""

    model: Model
    shape: tuple[int, ...]
    target: Schedule
    plan: Plan
    plan_key: tuple
    seed: int
    chunks: list[range]
    device: torch.device
    dtype: torch.dtype
    call_dtype: torch.dtype
    ranks: Ranks
    factory: Callable[..., NoiseSource]
    model_kwargs: dict[str, Any] | None
    initial: torch.Tensor | None
    callback: Callback | None
    progress: bool
    compile: bool
    capture: bool
    #: the coefficient tables have a value per element (a data frame's), not per step
    per_element_tables: bool = False

    def check_memory(self, kept: int) -> None:
        """The run's planned memory with ``kept`` samples held at its end (``sample``'s gather, a file's output)
        within the bound of :mod:`.limits`, before a batch runs."""
        _check_run_memory(self.plan.steps, self.shape, len(self.chunks[0]) if self.chunks else 0, self.dtype,
                          self.per_element_tables, kept)

    @classmethod
    def prepare(cls, model: Model, shape: Sequence[int], options: SampleOptions = SampleOptions()) -> "SamplingRun":
        """Every check of a run of ``options`` (:class:`~.options.SampleOptions`), then its plan and chunks."""
        o = options
        choice = choose_grid(o.grid, o.steps, target=o.schedule, integrator=o.integrator)
        target, src = choice.target, load_schedule(o.source)
        shape = _checked_shape(model, shape)
        batch_size = None if o.batch_size is None else _count(o.batch_size, "batch_size")
        check_seed(o.seed)
        _check_loop_options(o, shape)
        device = resolve_device(o.device)
        dtype, call_dtype = resolve_dtypes(o.dtype, o.model_dtype, model)
        ranks = ranks_of(o.distributed, device)
        check_steps(choice.steps)
        _check_run_memory(choice.steps, shape, min(batch_size or shape[0], shape[0]), dtype, o.data_stats is not None)
        times = choice.times(src)
        _check_grid_end(times, o.final_step)
        data_stats = checked_data_stats(o.data_stats, shape, o.model_kwargs)
        if o.capture and isinstance(data_stats, ConditionalStats):
            raise LazyflowError("capture=True records one loop for every batch; per-label statistics change the "
                                "tables with each batch's labels (sample without capture)")
        method, data_stats = frame_for_run(choice.integrator, data_stats, t0=float(times[0]), data_shape=shape[1:])
        final_step = DEFAULT_FINAL_STEP if o.final_step is None else o.final_step
        plan = _plan(target, src, times, method, final_step, o.prediction, device, dtype, data_stats)
        plan_key = (target, src, tuple(times.tolist()), method, final_step, o.prediction, o.compile, data_stats)
        local, chunk = share(shape[0], ranks), batch_size or shape[0]   # all of range(n) in one process
        chunks = [range(s, min(s + chunk, local.stop)) for s in range(local.start, local.stop, chunk)]
        return cls(model, shape, target, plan, plan_key, int(o.seed), chunks, device, dtype, call_dtype, ranks,
                   CounterNormal if o.noise is None else o.noise, o.model_kwargs, o.initial, o.callback, o.progress,
                   o.compile, o.capture, per_element_tables=data_stats is not None)

    def batches(self) -> Iterator[tuple[range, torch.Tensor]]:
        """Run the chunks in order, yielding (indices, samples) as each finishes."""
        steps = self.plan.steps
        with progress_bar(steps * len(self.chunks), enabled=self.progress, desc="sampling") as update, \
                torch.no_grad():
            for indices in self.chunks:
                yield indices, self._chunk(indices, update)

    def _chunk(self, indices: range, update: Callable[[int], None] | None) -> torch.Tensor:
        """One chunk: its noise, its start state in the schedule's own way, then the loop (or its capture)."""
        draws = self.factory(self.seed, indices, self.shape[1:], device=self.device, dtype=self.dtype)
        if self.compile and isinstance(draws, CounterNormal):
            draws = draws.compiled()
        first = None if self.initial is None else \
            self.initial[indices.start:indices.stop].to(device=self.device, dtype=self.dtype)
        t0 = float(self.plan.times[0])
        like = torch.empty((len(indices), *self.shape[1:]), device=self.device, dtype=self.dtype)
        x = self.target.initial_state(t0, (lambda: draws(0)) if first is None else (lambda: first), like)
        kwargs = per_sample_kwargs(self.model_kwargs, self.shape[0], indices)
        if not self.capture:
            plan = self.plan.for_batch(kwargs)
            return run_plan(self.model, x, plan, self.target.step_noise(t0, draws, first, x), model_kwargs=kwargs,
                            model_dtype=self.call_dtype, compile=self.compile, callback=self.callback, progress=update)

        def loop(x, rows, first, kwargs, draws=draws):
            noise = self.target.step_noise(t0, draws.with_rows(rows), first, x)
            return _integrate(self.model, x, self.plan, noise, kwargs, self.call_dtype, self.compile, None, None)

        out, evaluate = captured_loop((self.model, self.plan_key, self.call_dtype), loop, x, draws.rows, first, kwargs,
                                      recorder=_recorder)
        if update is not None:
            update(self.plan.steps)
        return _checked(out.clone(), evaluate)


def _check_loop_options(options: SampleOptions, shape: tuple[int, ...]) -> None:
    """``initial`` of the samples' shape; ``capture`` only with the default noise and no callback."""
    initial = options.initial
    if initial is not None and (not isinstance(initial, torch.Tensor) or tuple(initial.shape) != shape):
        got = tuple(initial.shape) if isinstance(initial, torch.Tensor) else type(initial).__name__
        raise LazyflowError(f"initial must be a tensor of the samples' shape {shape}, got {got}")
    if options.capture and (options.noise is not None or options.callback is not None):
        raise LazyflowError("capture=True records the loop once: it needs the default noise and no callback")


def _check_run_memory(steps: int, shape: tuple[int, ...], batch: int, dtype: torch.dtype, per_element: bool,
                      kept: int = 0) -> None:
    """:func:`.limits.check_memory` of a run: ``steps`` rows of tables (a value per element where
    ``per_element``), batches of ``batch`` samples of ``shape[1:]`` in ``dtype``, ``kept`` samples at the end."""
    size = math.prod(shape[1:])
    check_memory(steps=steps, table_elements=size if per_element else 1, batch=batch, sample_elements=size,
                 itemsize=dtype.itemsize, gathered=kept)


_PLANS: "OrderedDict[tuple, Plan]" = OrderedDict()


def _plan(target, src, times, method, final_step, prediction, device, dtype, data_stats) -> Plan:
    """:func:`build_plan`, remembered for the last 16 settings: repeated calls (a loop over batches, a
    benchmark) skip rebuilding the coefficient tables (read-only once built)."""
    key = (target, src, tuple(times.tolist()), method, final_step, prediction, str(device), dtype, data_stats)
    plan = _PLANS.get(key)
    if plan is None:
        plan = build_plan(target, src, times, integrator=method, final_step=final_step, prediction=prediction,
                          device=device, dtype=dtype, data_stats=data_stats)
        _PLANS[key] = plan
        while len(_PLANS) > 16:
            _PLANS.popitem(last=False)
    _PLANS.move_to_end(key)
    return plan


def check_seed(seed: Any) -> None:
    """A seed is an integer in [0, 2^64) (a counter of the noise generator: no wrapping)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise LazyflowError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed < SEED_RANGE:
        raise LazyflowError(f"seed must be in [0, 2^64), got {seed}")


def _check_grid_end(times: torch.Tensor, final_step: str | None) -> None:
    """A grid that stops short of t = 1 (the data) leaves noise in the samples: refused unless the caller
    says how it ends (``final_step`` given: "denoise" returns the denoised mean eta_X at the grid's last time,
    "euler" the state there)."""
    end = float(times[-1])
    if end < 1 and final_step is None:
        raise LazyflowError(f"the grid ends at t = {end:g}, not at t = 1 (the data), so the samples would keep "
                            "noise; end it at 1, or say how the run ends: final_step='denoise' (--final-step "
                            "denoise) returns the denoised mean at its last time, final_step='euler' the noisy "
                            "state there")


def _checked_shape(model: Model, shape: Any) -> tuple[int, ...]:
    """(n, *data_shape) of positive integers that fits the model's ``data_shape`` where it has one."""
    try:
        shape = tuple(_count(s, "shape entries") for s in shape)
    except TypeError:
        raise LazyflowError(f"shape must be a sequence of positive integers, got {shape!r}") from None
    if len(shape) < 2:
        raise LazyflowError(f"shape must be (n, *data_shape) with positive sizes, got {shape}")
    data_shape = getattr(model, "data_shape", None)
    if data_shape is not None and tuple(data_shape) != shape[1:]:
        raise LazyflowError(f"shape {shape} does not fit the model: its samples have shape {tuple(data_shape)}, "
                            f"so shape must be (n, {', '.join(map(str, data_shape))})")
    return shape


def _count(value: Any, what: str) -> int:
    """A positive integer (Python or NumPy), else a specific error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise LazyflowError(f"{what} must be positive integers, got {value!r}")
    return int(value)


def per_sample_kwargs(model_kwargs: dict[str, Any] | None, n: int, rows: range | slice | torch.Tensor) -> dict[str, Any]:
    """The conditioning of some of ``n`` samples: tensors whose first dimension is n (per-sample conditioning)
    cut to ``rows`` (a range, a slice or an index tensor), everything else as it is."""
    if not model_kwargs:
        return {}
    if isinstance(rows, range):
        if len(rows) == n:
            return dict(model_kwargs)
        rows = slice(rows.start, rows.stop)
    return {key: value[rows] if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n
            else value for key, value in model_kwargs.items()}
