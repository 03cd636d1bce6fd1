"""What grid tuning (:mod:`.tune`) and bespoke fitting (:mod:`.bespoke_fit`) share: the softmax parameterisation
of a grid's interior times, the probability-flow ODE end points they are fitted against, and the checks of their
budget and held-out seed (their cost is counted by :class:`~lazyflow.runtime.core.call_counter.CallCounter`)."""
from __future__ import annotations

from typing import Any

import torch

from ...errors import LazyflowError
from ..core.schedule import Schedule, load_schedule

__all__ = ["times_from_logits", "logits_from_times", "reference_samples", "check_budget",
           "checked_holdout_seed"]


def times_from_logits(theta: torch.Tensor, t0: float) -> torch.Tensor:
    """t_k = t_0 + (1 - t_0) cumsum(softmax([theta, 0]))_k with t_N = 1 exactly (float64)."""
    u = torch.softmax(torch.cat([theta.to(torch.float64), torch.zeros(1, dtype=torch.float64)]), 0)
    inner = t0 + (1 - t0) * torch.cumsum(u, 0)[:-1]
    return torch.cat([torch.tensor([t0], dtype=torch.float64), inner, torch.ones(1, dtype=torch.float64)])


def logits_from_times(times: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`times_from_logits`: theta_j = log(h_j / h_N), h the increments."""
    h = times[1:] - times[:-1]
    return torch.log(h[:-1] / h[-1])


def reference_samples(model, shape: tuple[int, ...], target: Schedule, source: Schedule, prediction: str,
                      t0: float, seed: int, steps: int = 200, model_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """End points of the probability-flow ODE from the initial noise of ``seed``: Heun on ``steps`` steps
    uniform in the source's time from the source time of t_0's log snr to 1, in the frame of ``target`` when
    it is deterministic (so that the start alpha(t_0) Z is the same point), else of ``source``.  A discrete
    diffusion table's ODE is solved in vp time, as the bench's (:func:`.paths.reference_frame`): uniform steps
    in the table's own time cross log snr -inf to -2.7 (SD 1.x) in its first 1/1001 (measured on
    discrete:gmm4096: bespoke solvers fitted to 200 such steps from log snr -5 had paths 6.9 and 1.0 on their
    held-out noise at 4 and 6 NFE, 18.2 and 16.6 against the bench's vp reference)."""
    from ..core.sampler import sample
    from .paths import reference_frame

    frame = target if not target.stochastic else (source if not source.stochastic else load_schedule("linear"))
    clock, frame = reference_frame(source), reference_frame(frame)   # both the source itself but for a table
    lam0 = target.log_snr(torch.tensor([t0], dtype=torch.float64))
    tau0 = 0.0 if t0 <= 0 else float(clock.time_of_log_snr(lam0)[0])
    tau = torch.linspace(tau0, 1.0, steps + 1, dtype=torch.float64)
    times = tau if frame.same_path(clock) else frame.time_of_log_snr(clock.log_snr(tau))
    times[0], times[-1] = (0.0 if t0 <= 0 else times[0]), 1.0
    return sample(model, shape, schedule=frame, source=source, steps=steps, integrator="heun", grid=times,
                  prediction=prediction, seed=seed, model_kwargs=model_kwargs)


def check_budget(nfe: int, samples: int) -> None:
    """Refuses an ``nfe`` below 1 or ``samples`` below 2 (a bool is neither)."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise LazyflowError(f"nfe must be a positive integer, got {nfe!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise LazyflowError(f"samples must be an integer >= 2, got {samples!r}")


def checked_holdout_seed(seed: int, holdout_seed: int | None) -> int:
    """The held-out seed: ``seed + 1000`` unless given, and never ``seed`` itself."""
    holdout_seed = seed + 1000 if holdout_seed is None else holdout_seed
    if holdout_seed == seed:
        raise LazyflowError("holdout_seed must differ from seed (the held-out check needs other noise)")
    return holdout_seed
