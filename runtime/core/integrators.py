"""The registry of integrators and :func:`build_plan`, which turns one into a run's :class:`Plan`
(derive/MATH.md §6).  The integrators themselves, each a table class whose step reads as its formula:

- :mod:`~lazyflow.runtime.core.single_step`: ``euler``, ``heun``, ``midpoint``, ``exponential``, ``exp-midpoint``
- :mod:`~lazyflow.runtime.core.multistep`: ``multistep``, ``multistep-pc``, ``multistep3``, ``multistep3-pc``
- :mod:`~lazyflow.runtime.core.data_frame`: the ``data-*`` frames exact for the data's Gaussian
- :mod:`~lazyflow.runtime.core.bespoke`: ``bespoke``, a solver fitted to one model

A new integrator is a :class:`~lazyflow.runtime.core.plan.Tables` subclass (its named coefficients and its
``step``), a builder ``BuildContext -> tables`` and one :func:`register_integrator` call
(tests/test_new_integrator.py writes Ralston's method so).

``final_step="denoise"`` makes the last step return eta_X.  Where eps is infinite at t = 0 (eps* of a
standard schedule) the first step is the probability-flow ODE step; a point-mass run starts at x = 0.
"""
from __future__ import annotations

import torch

from ...errors import LazyflowError, SamplingError
from ...predictions import SILENT_AT_SNR_0
from . import data_frame
from .bespoke import BESPOKE_PLACEHOLDER
from .data_stats import ConditionalStats, DataStats
from .frames import Frame
from .multistep import multistep, multistep3
from .plan import BuildContext, Integrator, Plan, Tables
from .schedule import Schedule
from .single_step import euler, exp_midpoint, exponential, heun, midpoint

__all__ = ["INTEGRATORS", "FINAL_STEPS", "build_plan", "check_plan_options", "get_integrator", "register_integrator"]

FINAL_STEPS = ("euler", "denoise")


# --- the registry ------------------------------------------------------------------------------

INTEGRATORS: dict[str, Integrator] = {}


def register_integrator(integrator: Integrator, *, replace_existing: bool = False) -> Integrator:
    """Add ``integrator`` to :data:`INTEGRATORS`, which ``sample``, the CLI's choices, the bench and the
    diffusers scheduler read; a name already taken is refused unless ``replace_existing``."""
    if not isinstance(integrator, Integrator):
        raise LazyflowError(f"register_integrator takes an Integrator, got {type(integrator).__name__}")
    if integrator.name in INTEGRATORS and not replace_existing:
        raise LazyflowError(f"an integrator named {integrator.name!r} is registered already")
    INTEGRATORS[integrator.name] = integrator
    return integrator


for _integrator in (
    Integrator(name="euler", order=1, build=euler, description="Euler / Euler-Maruyama"),
    Integrator(name="heun", order=2, build=heun, calls_per_step=2, plain_last_step=True,
               description="Heun (trapezoidal predictor-corrector), plain last step"),
    Integrator(name="midpoint", order=2, build=midpoint, calls_per_step=2, description="explicit midpoint"),
    Integrator(name="exponential", order=1, build=exponential, exponential=True,
               description="exact linear part with eta_X frozen (DDIM for VP, Brownian bridge for the point mass)"),
    Integrator(name="exp-midpoint", order=2, build=exp_midpoint, calls_per_step=2, exponential=True,
               description="two-stage exponential, midpoint in log snr"),
    Integrator(name="multistep", order=2, build=multistep, exponential=True, history=2,
               description="exponential with eta_X extrapolated linearly in log snr, exact weight"),
    Integrator(name="multistep-pc", order=2, build=multistep, exponential=True, history=2, corrector=True,
               description="multistep plus a corrector that reuses the next call (as UniPC)"),
    Integrator(name="multistep3", order=3, build=multistep3, exponential=True, history=3,
               description="exponential with eta_X extrapolated quadratically in log snr, exact weights"),
    Integrator(name="multistep3-pc", order=3, build=multistep3, exponential=True, history=3, corrector=True,
               description="multistep3 plus a third-order corrector that reuses the next call"),
    *data_frame.DATA_FRAME_INTEGRATORS,
    BESPOKE_PLACEHOLDER,
):
    register_integrator(_integrator)
del _integrator


def get_integrator(name: str | Integrator) -> Integrator:
    if isinstance(name, Integrator):
        return name
    try:
        return INTEGRATORS[name]
    except (KeyError, TypeError):
        raise LazyflowError(f"unknown integrator {name!r}; choose one of {', '.join(INTEGRATORS)}") from None


def build_plan(target: Schedule, source: Schedule, times: torch.Tensor, *, integrator: str | Integrator,
               final_step: str, prediction: str, device: torch.device | str | None, dtype: torch.dtype,
               data_stats: DataStats | ConditionalStats | None = None) -> Plan:
    """Coefficient tables for ``integrator`` on ``times`` (float64 math, cast to ``dtype`` on ``device``);
    ``data_stats`` for the data-frame integrators."""
    method = get_integrator(integrator)
    check_plan_options(target, method, final_step)
    work = torch.float64 if torch.device(device or "cpu").type != "mps" else torch.float32
    t = times.to(device=device, dtype=work)
    if not method.skips_first_call(t.numel() - 1):   # a data frame that makes no call at t = 0 reads no output there
        _check_informative_start(target, prediction, t)
    # where eps is infinite at t = 0 (eps* of a standard schedule) the first step is the ODE step
    ode = (t[:-1] <= 0) & target.singular_start
    context = BuildContext(target, source, prediction, t, ode, method, data_stats)
    now = context.now
    coefficients = method.build(context)
    if final_step == "denoise":
        coefficients = coefficients.denoised(now)
    coefficients = coefficients.at_point_mass_start(now.zero)
    _check_finite(coefficients, now, times, method.name)
    cast = coefficients.map(lambda v: v.to(dtype))
    _check_finite(cast, now, times, method.name, after=f"the cast to {dtype}")
    return Plan(method, times, now.map_tensors(lambda v: v.to(dtype)), cast)


def check_plan_options(target: Schedule, integrator: Integrator, final_step: str) -> None:
    """Refuse an unknown ``final_step`` or an exponential integrator on a schedule without an exact step
    (the checks :func:`build_plan` makes, for callers that settle these before they have a grid)."""
    if final_step not in FINAL_STEPS:
        raise LazyflowError(f"unknown final_step {final_step!r}; choose one of {', '.join(FINAL_STEPS)}")
    if integrator.exponential and not target.has_exponential:
        raise LazyflowError(f"integrator {integrator.name!r}: {target.kernel.EXPONENTIAL}")
    if integrator.needs_data_stats and final_step != "euler":
        raise LazyflowError(f"integrator {integrator.name!r} ends with its own last step (anchored at t = 1): "
                            f"final_step {final_step!r} does not apply")


def _check_informative_start(target: Schedule, prediction: str, t: torch.Tensor) -> None:
    """Refuse a run whose first call is at snr = 0 with a noise or score model: there I = alpha Z, the
    output is a function of x alone and eta_X = E[X] cannot be read from it (p, q hold 1/beta; MATH.md §2)."""
    if prediction not in SILENT_AT_SNR_0 or not bool(target.log_snr(t[:1]).isneginf().all()):
        return
    if target.point_mass:
        fix = ("a point-mass schedule must start there, so sample this model with a standard schedule "
               "(e.g. schedule='linear' or 'vp', --schedule linear) and a grid starting at t_0 > 0")
    else:
        fix = (f"start the grid after t = {t[0].item():g}, e.g. grid=[0.01, ...] (--grid 0.01,...,1: explicit "
               "times; the run then starts from alpha(t_0) Z), or grid='logsnr-open:-6,8' (--grid logsnr-open:-6,8)")
    raise SamplingError(f"a {prediction}-prediction model does not determine eta_X at snr = 0 (t = {t[0].item():g}, "
                        f"where this grid starts): its output there carries no information on the data; {fix}")


def _check_finite(coefficients: Tables, now: Frame, times: torch.Tensor, integrator: str,
                  after: str = "") -> None:
    """One host synchronisation per run, before the loop: refuse non-finite coefficients (``after`` names
    the cast that made a finite float64 value overflow); second-stage tables count only where used."""
    mask = torch.tensor(coefficients.two_stage, device=now.t.device)
    used = {"model time": now.tau, "input scale": now.in_scale}
    for name, values in coefficients.tables().items():
        if name.split(".")[0].split("[")[0] in coefficients.SECOND:
            values = torch.where(mask.reshape(-1, *[1] * (values.dim() - 1)), values, torch.zeros_like(values))
        used[name] = values
    steps = now.t.numel()
    for name, values in used.items():
        bad = ~torch.isfinite(values)
        if bad.any():
            k = int(bad.nonzero()[0, 0])
            if after:
                raise SamplingError(f"{integrator} coefficient {name!r} at step {k} (t = {times[k].item():.6g}) "
                                    f"overflows after {after}; sample with dtype=torch.float64 or another grid")
            last = k == times.numel() - 2   # the last step: returning eta_X there needs no drift
            fix = ("return the denoised mean there instead, final_step='denoise' (--final-step denoise), or use a "
                   "grid that avoids that time") if last else "use a grid that avoids that time"
            raise SamplingError(f"{integrator} coefficient {name!r} is not finite at step {k} "
                                f"(t = {times[k].item():.6g} -> {times[min(k + 1, steps)].item():.6g}): the schedule "
                                f"is singular there; {fix}")
