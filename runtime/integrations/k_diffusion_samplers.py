"""k-diffusion's sampler signature over lazyflow's schedules and integrators (imports no k-diffusion).

    from lazyflow.k_diffusion import sample_lazyflow
    x0 = sample_lazyflow(denoiser, x, sigmas, parameterization="diffusion", schedule="pointmass",
                         integrator="multistep-pc")

``denoiser(x, sigma * s_in, **extra_args)`` returns the data estimate E[X | x] (k-diffusion's and ComfyUI's
denoisers), in one of two conventions, chosen with ``parameterization``:

- ``"diffusion"`` (k-diffusion's own, the default): x = X + sigma Z, sigma in [0, inf).  On lazyflow's
  linear schedule I_t = (1 - t) Z + t X this is the time t = 1 / (1 + sigma), with I_t = t x;
- ``"flow"`` (rectified flow; ComfyUI's CONST models): x = (1 - sigma) X + sigma Z, sigma in [0, 1]:
  t = 1 - sigma and I_t = x.

The denoiser is the linear schedule's x-prediction model (:func:`from_denoiser`), and ``sigmas`` fix
the grid: their source times t_k are mapped into the target ``schedule`` by equal log snr (both
conventions have snr = beta / alpha = 1 / sigma and (1 - sigma) / sigma), and the plan of
:func:`lazyflow.runtime.core.integrators.build_plan` is run by the sampler's own loop
(:func:`lazyflow.runtime.core.sampler.run_plan`).  Every network call is made at a source time the
plan computes in float64; where that is one of the given sigmas the denoiser gets that sigma exactly.
A final sigma of 0 is t = 1 (the data); a last sigma above 0 returns the state there, in the caller's
convention.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...errors import LazyflowError, SamplingError
from ..core import defaults
from ..core.data_frame import frame_for_run
from ..core.data_stats import ConditionalStats, DataStats, checked_data_stats
from ..core.frames import conversion, times_of_equal_log_snr
from ..core.grid_choice import choose_grid
from ..core.integrators import build_plan
from ..core.noise import CounterNormal
from ..core.plan import Integrator, Plan, StepInfo
from ..core.progress import progress_bar
from ..core.sampler import check_seed, run_plan
from ..core.schedule import Schedule, load_schedule

__all__ = ["sample_lazyflow", "sample_lazyflow_ode", "sample_lazyflow_sde", "from_denoiser", "load_k_diffusion_sampling",
           "resolved_integrator",
           "PARAMETERIZATIONS",
           "SOURCE", "resolved_target", "source_time_of_sigma", "sigma_of_source_time", "state_scale"]

PARAMETERIZATIONS = ("diffusion", "flow")
#: the denoiser's schedule in lazyflow's terms: both conventions are the linear schedule, rescaled
SOURCE = "linear"
#: a k-diffusion callback: it gets {"x", "i", "sigma", "sigma_hat", "denoised"}
KCallback = Callable[[dict[str, Any]], None]


def _checked_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise LazyflowError(f"unknown parameterization {parameterization!r}; choose 'diffusion' (x = x0 + sigma n) "
                            "or 'flow' (x = (1 - sigma) x0 + sigma n)")
    return parameterization


def source_time_of_sigma(sigma: Any, parameterization: str) -> Any:
    """t = 1 / (1 + sigma) (diffusion) or t = 1 - sigma (flow): the linear schedule's time of equal snr."""
    return 1 / (1 + sigma) if _checked_parameterization(parameterization) == "diffusion" else 1 - sigma


def sigma_of_source_time(t: Any, parameterization: str) -> Any:
    """sigma = (1 - t) / t (diffusion) or sigma = 1 - t (flow)."""
    return (1 - t) / t if _checked_parameterization(parameterization) == "diffusion" else 1 - t


def state_scale(t: Any, parameterization: str) -> Any:
    """s with x = s I_t: 1 / t (diffusion, x = X + sigma Z = I_t / t) or 1 (flow, x = I_t)."""
    if _checked_parameterization(parameterization) == "diffusion":
        return 1 / t
    return torch.ones_like(t) if isinstance(t, torch.Tensor) else 1.0


class _Denoiser:
    """A k-diffusion denoiser as lazyflow's x-prediction model on the linear schedule: at time t the
    state I_t is the denoiser's x = state_scale(t) I_t at sigma = sigma_of_source_time(t)."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], parameterization: str,
                 extra_args: dict[str, Any] | None, dtype: torch.dtype | None):
        self.denoiser, self.parameterization = denoiser, _checked_parameterization(parameterization)
        self.extra_args, self.dtype = dict(extra_args or {}), dtype

    def at(self, x: torch.Tensor, t: float, sigma: float) -> torch.Tensor:
        """E[X | I_t = x] at one time t (float64 host numbers: no rounding of sigma)."""
        dtype = self.dtype or x.dtype
        s_in = torch.full((x.shape[0],), sigma, dtype=dtype, device=x.device)
        return self.denoiser((x * state_scale(t, self.parameterization)).to(dtype), s_in, **self.extra_args)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        t = t.to(torch.float64).reshape(-1, *[1] * (x.dim() - 1))
        dtype = self.dtype or x.dtype
        sigma = sigma_of_source_time(t, self.parameterization).reshape(-1).to(dtype)
        x_in = (x.to(torch.float64) * state_scale(t, self.parameterization)).to(dtype)
        return self.denoiser(x_in, sigma, **{**self.extra_args, **kwargs})


def from_denoiser(denoiser: Callable[..., torch.Tensor], parameterization: str = "diffusion", *,
                  extra_args: dict[str, Any] | None = None,
                  dtype: torch.dtype | None = None) -> Callable[..., torch.Tensor]:
    """A k-diffusion denoiser as a lazyflow model: use it with ``sample(..., source="linear", prediction="x")``.

    ``model(I_t, t)`` = ``denoiser(s(t) I_t, sigma(t) * s_in, **extra_args)`` with sigma(t) and s(t) of
    :func:`sigma_of_source_time` and :func:`state_scale`; ``dtype``: the denoiser's input dtype (default:
    the state's)."""
    return _Denoiser(denoiser, parameterization, extra_args, dtype)


def _checked_sigmas(sigmas: Any, parameterization: str) -> torch.Tensor:
    """The sigmas as float64 on the CPU, refused unless 1-D, finite, strictly decreasing and >= 0 (<= 1 for flow)."""
    try:
        values = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise LazyflowError(f"sigmas must be a 1-D tensor or sequence of numbers, got "
                            f"{type(sigmas).__name__}") from None
    if values.dim() != 1 or values.numel() < 1:
        raise LazyflowError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise LazyflowError(f"sigmas must be finite and >= 0, got {values.tolist()}")
    if (values[1:] >= values[:-1]).any():
        raise LazyflowError(f"sigmas must decrease strictly (from noise to data), got {values.tolist()}")
    if parameterization == "flow" and values[0] > 1:
        raise LazyflowError(f"flow sigmas lie in [0, 1] (x = (1 - sigma) x0 + sigma n), got sigma_max = "
                            f"{values[0].item():g}; use parameterization='diffusion' for x = x0 + sigma n")
    return values


def _target_times(target: Schedule, source: Schedule, t_src: torch.Tensor) -> torch.Tensor:
    """Source times -> target times by equal log snr (the identity for the same path; 0 and 1 stay)."""
    times = times_of_equal_log_snr(target, source, t_src)
    if not torch.isfinite(times).all() or (times[1:] <= times[:-1]).any():
        raise LazyflowError(f"the sigmas give no strictly increasing grid on {target.describe()} (times "
                            f"{times.tolist()}); sigmas too close together for float64")
    return times


def resolved_target(schedule: Any, schedule_params: dict[str, float] | None, diffusion_scale: float) -> Schedule:
    """The target schedule with its parameters bound and sigma = diffusion_scale * its sigma."""
    target = load_schedule(schedule, **(schedule_params or {}))
    return target if diffusion_scale == 1 else target.with_diffusion_scale(diffusion_scale)


def resolved_integrator(integrator: str | Integrator, data_stats: DataStats | ConditionalStats | None,
                        times: torch.Tensor, target: Schedule, data_shape: tuple[int, ...],
                        times_of: str = "sample_lazyflow") -> tuple[Integrator, DataStats | ConditionalStats | None]:
    """The integrator on the caller's ``times`` (:func:`~lazyflow.runtime.core.grid_choice.choose_grid`: a
    bespoke solver is refused) and its data statistics (checked by :func:`.checked_data_stats`); a data frame
    that starts after t = 0, or reads its mean from its first call, makes that call (it skips it only at t = 0,
    where its residual vanishes with the statistics' mean).  Without statistics the frame is N(E[X | c], v I):
    v = :data:`~lazyflow.runtime.core.defaults.SIGMAS_FRAME_VARIANCE` for an ODE data frame (measured), 1 for a
    stochastic one (``data-sde*``: its frame before that measurement, not re-measured)."""
    method = choose_grid(times, None, target=target, integrator=integrator, times_of=times_of).integrator
    variance = 1.0 if method.stochastic else defaults.SIGMAS_FRAME_VARIANCE
    return frame_for_run(method, data_stats, t0=float(times[0]), data_shape=data_shape, variance=variance)


class _CallSequence:
    """The plan's network calls in the order the loop makes them, each at its exact float64 source time
    (``times``) and sigma; ``first``, when given, is what the first call sees instead of the state (the
    caller's noise at a point-mass start, where the state is 0 and the denoiser's output does not
    depend on its input)."""

    def __init__(self, denoiser: _Denoiser, times: list[float], sigmas: list[float], first: torch.Tensor | None):
        self.denoiser, self.times, self.sigmas, self.first = denoiser, times, sigmas, first
        self.count = 0

    def __call__(self, x: torch.Tensor, tau: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        j = self.count
        if j >= len(self.times):
            raise SamplingError(f"the loop made more network calls than its plan's {len(self.times)}")
        self.count += 1
        if j == 0 and self.first is not None:
            x = self.first.to(x.dtype)
        return self.denoiser.at(x, self.times[j], self.sigmas[j])


def _call_points(exact: Plan, t_src: torch.Tensor, sigmas: torch.Tensor, parameterization: str):
    """(source time, sigma) of each network call of the float64 plan: the given sigma where the call is at
    a grid time (to float64 rounding), else sigma_of_source_time."""
    times, values = [], []
    for tau in exact.call_times().tolist():
        k = int(torch.argmin((t_src - tau).abs()))
        if abs(float(t_src[k]) - tau) <= 1e-12:
            times.append(float(t_src[k]))
            values.append(float(sigmas[k]))
        else:
            times.append(tau)
            values.append(float(sigma_of_source_time(tau, parameterization)))
    return times, values


def _step_noise(target: Schedule, t0: float, state: torch.Tensor, first: torch.Tensor | None, sigmas: Any,
                noise_sampler: Callable[..., torch.Tensor] | None, seed: int | None) -> Callable[[int], torch.Tensor]:
    """Step k's standard normal xi: ``noise_sampler(sigmas[k], sigmas[k+1])`` (k-diffusion's), else draw 1 + k
    of sample i's own stream of ``seed`` (:func:`_seeded_draws`), else ``torch.randn_like``; zeros for an
    ODE; at a point-mass start step 0 uses the caller's noise ``first``."""
    if noise_sampler is not None:
        def draws(d: int) -> torch.Tensor:
            return noise_sampler(sigmas[d - 1], sigmas[d]).to(device=state.device, dtype=state.dtype)
    elif seed is not None:
        draws = _seeded_draws(seed, state)
    else:
        def draws(d: int) -> torch.Tensor:
            return torch.randn_like(state)
    return target.step_noise(t0, draws, first, state)


def _seeded_draws(seed: Any, state: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """Draw d of each sample: an integer seed gives sample i the stream (seed, i) (:class:`CounterNormal`);
    a sequence of one integer per sample gives sample i the stream (seed_i, 0), so that it can be redrawn alone."""
    shape, options = tuple(state.shape[1:]), dict(device=state.device, dtype=state.dtype)
    seeds = [seed] if isinstance(seed, int) else list(seed) if isinstance(seed, (list, tuple, range)) else [None]
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or \
            (not isinstance(seed, int) and len(seeds) != state.shape[0]):
        raise LazyflowError(f"seed must be an integer or a sequence of one integer per sample ({state.shape[0]}), "
                            f"got {seed!r}")
    for one in seeds:
        check_seed(one)   # in [0, 2^64) as everywhere: no wrap
    if isinstance(seed, int):
        return CounterNormal(seed, range(state.shape[0]), shape, **options)
    # a stream is its per-sample key (its row): one generator over the rows of (seed_i, 0) draws them all at once
    rows = torch.cat([CounterNormal(s, range(1), shape, **options).rows for s in seeds])
    return CounterNormal(seeds[0], range(len(seeds)), shape, **options).with_rows(rows)


def _k_callback(callback: KCallback | None, factors: torch.Tensor, sigmas: Any, first: torch.Tensor | None,
                dtype: torch.dtype) -> Callable[[StepInfo], None] | None:
    """lazyflow's per-step :class:`StepInfo` as k-diffusion's dict: x in the caller's convention
    (the state times factors[k] = in_scale s(t)), i, sigma = sigma_hat = sigmas[i], denoised = eta_X."""
    if callback is None:
        return None

    def observe(info: StepInfo) -> None:
        k = info.step
        x = first if (k == 0 and first is not None) else info.x * factors[k]
        callback({"x": x.to(dtype), "i": k, "sigma": sigmas[k], "sigma_hat": sigmas[k],
                  "denoised": info.eta_x.to(dtype)})

    return observe


def _show_progress(disable: bool | None) -> bool:
    """k-diffusion's ``disable``: True hides the bar, False shows it, None shows it on a terminal (as tqdm)."""
    return not disable and (disable is False or sys.stderr.isatty())


def sample_lazyflow(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: Any,
                    extra_args: dict[str, Any] | None = None, callback: KCallback | None = None,
                    disable: bool | None = None, *, parameterization: str = "diffusion",
                    schedule: Any = defaults.SCHEDULE,
                    integrator: str | Integrator = defaults.SIGMAS_INTEGRATOR, diffusion_scale: float = 1.0,
                    final_step: str = "euler", schedule_params: dict[str, float] | None = None,
                    data_stats: Any = None, noise_sampler: Callable[..., torch.Tensor] | None = None,
                    seed: int | None = None) -> torch.Tensor:
    """k-diffusion's sampler signature: integrate from ``x`` (the state at ``sigmas[0]``) down ``sigmas``
    with lazyflow's ``integrator`` in the ``schedule`` frame.

    ``model(x, sigma * s_in, **extra_args)`` returns the data estimate; ``parameterization``:
    ``"diffusion"`` (default, x = x0 + sigma n) or ``"flow"`` (x = (1 - sigma) x0 + sigma n).  The grid is
    t_k = t_target(log snr(sigma_k)); ``schedule`` (with ``schedule_params`` and sigma =
    ``diffusion_scale`` * its sigma), ``integrator``, ``final_step`` and ``data_stats`` (a
    :class:`~lazyflow.DataStats` or its file, for the ``data-*`` integrators) are :func:`lazyflow.sample`'s.
    ``schedule="linear", integrator="euler"`` is k-diffusion's ``sample_euler`` step for step.

    Noise of a stochastic schedule (pointmass, linear-sde, vp-sde; a diffusion scale > 0): step k uses
    ``noise_sampler(sigmas[k], sigmas[k + 1])`` (k-diffusion's, e.g. ``BrownianTreeNoiseSampler``), else
    with ``seed`` draw 1 + k of each sample's own stream: an integer gives sample i the stream (seed, i),
    independent of the batch size; a list of one integer per sample gives sample i the stream (seed_i, 0),
    else ``torch.randn_like(x)`` (the global generator, as k-diffusion's default).  A point-mass run from
    sigma = 1 (flow) starts at 0 and uses ``x`` as its first step's noise.  ``callback`` gets
    k-diffusion's dict once per step: x (at sigma_i, in the caller's convention), i, sigma, sigma_hat
    (= sigma) and denoised.  ``disable`` hides the progress bar."""
    parameterization = _checked_parameterization(parameterization)
    sig = _checked_sigmas(sigmas, parameterization)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise LazyflowError(f"x must be a floating-point tensor of shape (batch, ...), got {type(x).__name__}")
    if sig.numel() == 1:
        return x
    data_stats = checked_data_stats(data_stats, tuple(x.shape), extra_args, where="extra_args")
    run = _Run.prepare(x, sig, parameterization, resolved_target(schedule, schedule_params, diffusion_scale),
                       integrator, final_step, data_stats)
    given = sigmas if isinstance(sigmas, torch.Tensor) else sig
    calls = _CallSequence(_Denoiser(model, parameterization, extra_args, x.dtype),
                          *_call_points(run.exact, run.t_src, sig, parameterization),
                          first=run.first if run.exact.coefficients.first_call == 0 else None)
    noise = _step_noise(run.target, float(run.exact.times[0]), run.state, run.first, given, noise_sampler, seed)
    start = None if run.first is None else run.first * float(state_scale(run.t_src[0], parameterization))
    observe = _k_callback(callback, run.factors, given, start, x.dtype)
    plan = run.plan.for_batch(extra_args or {})    # per-label statistics: each sample's label (extra_args[key])
    with progress_bar(run.plan.steps, enabled=_show_progress(disable), desc="lazyflow") as update, torch.no_grad():
        out = run_plan(calls, run.state, plan, noise, model_dtype=run.state.dtype, callback=observe,
                       progress=update)
    return (out * run.end_factor).to(x.dtype)


@dataclass(frozen=True)
class _Run:
    """Everything a run needs before its loop: the target, the source times of the sigmas, the float64 CPU
    plan (exact call times) and the working plan (the state's dtype on x's device), the start state (and
    the caller's noise at a point-mass start), and the factors that take a state back to the caller's
    convention: per step (x_caller = factors[k] x) and at the end."""

    target: Schedule
    t_src: torch.Tensor
    exact: Plan
    plan: Plan
    state: torch.Tensor
    first: torch.Tensor | None
    factors: torch.Tensor
    end_factor: float

    @classmethod
    def prepare(cls, x: torch.Tensor, sig: torch.Tensor, parameterization: str, target: Schedule, integrator: Any,
                final_step: str, data_stats: Any) -> "_Run":
        source = load_schedule(SOURCE)
        t_src = source_time_of_sigma(sig, parameterization)
        times = _target_times(target, source, t_src)
        method, stats = resolved_integrator(integrator, data_stats, times, target, tuple(x.shape[1:]))
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        options = dict(integrator=method, final_step=final_step, prediction="x", data_stats=stats)
        exact = build_plan(target, source, times, device="cpu", dtype=torch.float64, **options)
        plan = exact if (x.device.type == "cpu" and dtype == torch.float64) else \
            build_plan(target, source, times, device=x.device, dtype=dtype, **options)
        x_lin = x.to(dtype) / float(state_scale(t_src[0], parameterization))     # I_t0 of the linear schedule
        at_point = target.starts_at_point(float(times[0]))
        state = torch.zeros_like(x_lin) if at_point else x_lin / float(exact.in_scale[0])
        factors = exact.in_scale * state_scale(t_src[:-1], parameterization)
        c_end = 1.0 if float(times[-1]) >= 1 else float(conversion(target, source, times[-1:])[1][0])
        return cls(target, t_src, exact, plan, state, x_lin if at_point else None,
                   factors.to(device=x.device, dtype=dtype), float(state_scale(t_src[-1], parameterization)) / c_end)


def sample_lazyflow_ode(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: Any,
                        extra_args: dict[str, Any] | None = None, callback: KCallback | None = None,
                        disable: bool | None = None, **options: Any) -> torch.Tensor:
    """:func:`sample_lazyflow` with the deterministic defaults: the probability-flow ODE in the frame exact for
    N(E[X | c], v I) (``data-2m-pc``; without statistics v = :data:`~lazyflow.runtime.core.defaults.SIGMAS_FRAME_VARIANCE`,
    exact on Gaussian data of that variance on any sigmas)."""
    options = {"schedule": "linear", "integrator": defaults.SIGMAS_INTEGRATOR, **options}
    return sample_lazyflow(model, x, sigmas, extra_args, callback, disable, **options)


def sample_lazyflow_sde(model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: Any,
                        extra_args: dict[str, Any] | None = None, callback: KCallback | None = None,
                        disable: bool | None = None, **options: Any) -> torch.Tensor:
    """:func:`sample_lazyflow` with the stochastic defaults: the statistically optimal SDE (``linear-sde``) with its
    Gaussian part's transition exact in the frame of N(E[X | c], I) (``data-sde`` without statistics: exact in law
    on Gaussian data of unit variance on any sigmas)."""
    options = {"schedule": "linear-sde", "integrator": "data-sde", **options}
    return sample_lazyflow(model, x, sigmas, extra_args, callback, disable, **options)


_K_TEMPORARY = ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling", "torchvision", "torchvision.transforms",
                "torchvision.transforms.functional")


def load_k_diffusion_sampling():
    """k-diffusion's ``k_diffusion.sampling`` module (its samplers, ``get_sigmas_karras``, ...) from an install
    made with ``pip install --no-deps k-diffusion==0.1.1.post1``: the package's ``__init__`` (which imports
    clip, kornia, wandb, scikit-image and torchvision, none of them installed then) is not run, and where
    torchvision is absent an empty stand-in serves ``k_diffusion.utils``' import of it (used by its image
    helpers only).  The samplers need scipy, torchsde, torchdiffeq and tqdm (the ``test`` extra).
    ``sys.modules`` is left as it was found."""
    import importlib
    import importlib.util
    import os
    import types

    missing = [name for name in ("scipy", "torchsde", "torchdiffeq", "tqdm") if importlib.util.find_spec(name) is None]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.origin is None:
        raise LazyflowError("k-diffusion is not installed (python -m pip install --no-deps k-diffusion==0.1.1.post1)")
    if missing:
        raise LazyflowError(f"k-diffusion's samplers need {', '.join(missing)} (python -m pip install {' '.join(missing)})")
    saved = {name: sys.modules.get(name) for name in _K_TEMPORARY}
    package = types.ModuleType("k_diffusion")
    package.__path__ = [os.path.dirname(spec.origin)]
    sys.modules["k_diffusion"] = package
    if importlib.util.find_spec("torchvision") is None:
        vision, transforms, functional = (types.ModuleType(name) for name in _K_TEMPORARY[3:])
        vision.transforms, transforms.functional = transforms, functional
        sys.modules.update(dict(zip(_K_TEMPORARY[3:], (vision, transforms, functional))))
    try:
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
