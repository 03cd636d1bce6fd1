"""What lazyflow's diffusers schedulers share (imports no diffusers): the target, the data statistics, and
:class:`IntegratorLoop`, which drives the integrator loop of :func:`lazyflow.sample` one network call per
``step``.

The scheduler owns the state: the first ``step`` reads the pipeline's latents (the state in the network's
frame at the first call: the target-frame state is c(t_0) * latents; a point-mass target started at t_0 = 0
starts from x = 0 and takes the latents as its first noise draw), later ones use the loop's own state (the
``sample`` argument must be what the previous ``step`` returned).  ``step`` returns what the pipeline feeds
the network next (the state times the frame's input scale), and the final state after the last call.  A
subclass says what the network's output is in lazyflow's terms (``_prediction`` and ``_as_prediction``) and
how the pipeline's steps become a grid (``set_timesteps``, which calls ``_set_run``).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ...errors import LazyflowError
from ..core.data_frame import without_skip
from ..core.data_stats import DataStats
from ..core.integrators import build_plan
from ..core.noise import CounterNormal
from ..core.plan import Call, Integrator, Plan
from ..core.sampler import check_seed
from ..core.schedule import Schedule, load_schedule

__all__ = ["IntegratorLoop", "scheduler_target", "frame_statistics"]


def scheduler_target(who: str, schedule: str | os.PathLike, schedule_params: dict | None,
                     diffusion_scale: float) -> Schedule:
    """The target schedule of scheduler ``who``: a name or a path (it is saved in the config) with
    ``schedule_params`` bound and sigma = ``diffusion_scale`` * its sigma."""
    if not isinstance(schedule, (str, os.PathLike)):
        raise LazyflowError(f"{who}: schedule must be a name or a path (it is saved in the config), "
                            f"got {type(schedule).__name__}")
    target = load_schedule(os.fspath(schedule), **(schedule_params or {}))
    return target if diffusion_scale == 1 else target.with_diffusion_scale(diffusion_scale)


def frame_statistics(who: str, data_stats: str | None, integrator: Integrator) -> tuple[DataStats | None, Integrator]:
    """The statistics in the file ``data_stats`` and the integrator that runs on them: a data frame needs them
    and makes the call at the pipeline's first time, as the pipeline does; per-label statistics are refused
    (a scheduler never sees the labels)."""
    stats = None if data_stats is None else DataStats.load(data_stats)
    if not isinstance(stats, (DataStats, type(None))):
        raise LazyflowError(f"{who}: {data_stats} holds statistics per class label, which a "
                            "scheduler cannot match to its samples (it never sees the labels); give statistics "
                            "with the first call's mean (lazyflow stats --condition first-call), which read each "
                            "sample's condition from the pipeline's first network call (prompts, guidance)")
    if not integrator.needs_data_stats:
        return stats, integrator
    if stats is None:
        raise LazyflowError(f"integrator {integrator.name!r} integrates in the data's frame: give "
                            "data_stats (the path of a file written by lazyflow stats)")
    return stats, without_skip(integrator)   # the pipeline makes the call at its first sigma: so does the frame


class IntegratorLoop:
    """The run of a lazyflow scheduler: the plan of a grid, its calls' indices, and the loop stepped once
    per network call.  The subclass sets ``target``, ``source``, ``integrator``, ``data_stats``, ``_seed`` and
    ``timesteps`` and defines ``_prediction`` and :meth:`_as_prediction`."""

    _prediction: str = "velocity"

    def _as_prediction(self, output: torch.Tensor, x_in: torch.Tensor, call: Call) -> torch.Tensor:
        """The network's ``output`` on ``x_in`` at ``call`` as the ``_prediction`` the plan reads."""
        raise NotImplementedError

    def _reset_run(self) -> None:
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._loop = None
        self._call: Call | None = None
        self._last: torch.Tensor | None = None
        self._first_shift: torch.Tensor | None = None

    # --- what diffusers pipelines read ------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        """The index of the next network call (one per ``step``), or None before the first step."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The call index the run starts at, set by the pipeline with :meth:`set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = int(begin_index)

    @property
    def seed(self) -> int:
        return self._seed

    def set_seed(self, seed: int) -> None:
        """Seed the per-sample noise streams of the next runs (overrides the config's ``seed``)."""
        check_seed(seed)
        self._seed = int(seed)

    @property
    def times(self) -> torch.Tensor:
        """The grid the run integrates, in the target schedule's time (float64)."""
        if self._times is None:
            raise LazyflowError("call set_timesteps first")
        return self._times.clone()

    @property
    def nfe(self) -> int:
        """Network calls of a whole run (one per timestep)."""
        return len(self.timesteps)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """The call index of ``timestep``: of two equal timesteps (a two-stage step's end and the next
        step's start) the second, as diffusers' schedulers choose; the nearest one if none is equal."""
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        timestep = torch.as_tensor(timestep, device=schedule_timesteps.device, dtype=schedule_timesteps.dtype)
        indices = (schedule_timesteps == timestep).nonzero()
        if len(indices) == 0:
            return int((schedule_timesteps - timestep).abs().argmin())
        return int(indices[1 if len(indices) > 1 else 0])

    def _first_call_indices(self, timestep: Any) -> list[int]:
        """The call index of each of ``timestep``'s entries at which a run is started (img2img's noising): the
        begin index, else the current step, else the index of each timestep."""
        timestep = torch.as_tensor(timestep).reshape(-1)
        if self.begin_index is None:
            return [self.index_for_timestep(t.to(self.timesteps.device)) for t in timestep]
        if self.step_index is not None:
            return [self.step_index] * timestep.shape[0]
        return [self.begin_index] * timestep.shape[0]

    # --- the run ---------------------------------------------------------------------------------
    def _set_run(self, times: torch.Tensor) -> Plan:
        """Settle the grid ``times`` (float64, CPU) for the next run: its call offsets and steps; returns its
        CPU float64 plan (for the subclass's ``timesteps``)."""
        steps = times.numel() - 1
        plan = self._plan(times, "cpu", torch.float64)
        self._offsets = [0]
        for k in range(steps - 1):
            self._offsets.append(self._offsets[-1] + 1 + int(plan.two_stage[k]))
        self._times = times
        self.num_inference_steps = steps
        self._reset_run()
        return plan

    def _plan(self, times: torch.Tensor, device, dtype) -> Plan:
        return build_plan(self.target, self.source, times, integrator=self.integrator,
                          final_step=self.config.final_step, prediction=self._prediction, device=device, dtype=dtype,
                          data_stats=self.data_stats)

    @staticmethod
    def _check_timestep(timestep: Any) -> None:
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise LazyflowError("step() takes one of scheduler.timesteps as timestep, not an integer index")

    def _advance(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """One network call of the run: ``model_output`` on ``sample`` (what the previous step returned, or the
        pipeline's latents at the first call) -> the next call's network input, or the samples after the last."""
        if self._times is None:
            raise LazyflowError("call set_timesteps before step")
        first = self._step_index is None
        if first:
            self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index
            self._start(sample)
        elif self._loop is None:
            raise LazyflowError("the run has ended (every timestep was stepped); call set_timesteps again")
        elif sample is not self._last and not torch.equal(sample, self._last):
            raise LazyflowError(f"the latents passed to step() are not those the previous step returned: "
                                f"{type(self).__name__} keeps the state of its integrator, so a pipeline that edits "
                                "the latents between steps (inpainting, callbacks) is not supported")
        m = self._as_prediction(model_output.to(self._dtype), sample.to(self._dtype), self._call)
        if first and self._first_shift is not None:
            m = m + self._first_shift * sample.to(self._dtype)
        try:
            self._call = self._loop.send(m)
            out = self._call.x * self._call.in_scale
        except StopIteration as done:
            out, self._loop = done.value, None
        self._step_index += 1
        out = out.to(model_output.dtype)
        self._last = out
        return out

    def _start(self, sample: torch.Tensor) -> None:
        """Start the integrator loop at the call ``step_index`` from the pipeline's latents ``sample``."""
        begin = self._step_index
        if begin not in self._offsets:
            raise LazyflowError(f"the run starts at call {begin}, which is not the first call of a step "
                                f"(steps start at calls {self._offsets}); with a two-stage integrator start at a "
                                "step, or use a one-call integrator (euler, exponential, multistep, multistep-pc)")
        k0 = self._offsets.index(begin)
        self._dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        device = sample.device
        plan = self._plan(self._times[k0:], device, self._dtype)
        latents = sample.to(self._dtype)
        t0 = float(self._times[k0])
        draws = CounterNormal(self._seed, range(latents.shape[0]), tuple(latents.shape[1:]), device=device,
                              dtype=self._dtype)
        self._first_shift = None
        if self.target.starts_at_point(t0):
            # x = 0; the latents are the first noise draw (as sample(..., initial=latents)).  The pipeline
            # called the network on the latents, not on 0: eta_X = p x_in + q m there
            x = self.target.initial_state(t0, lambda: latents, latents)
            p, q = self.source.eta(self._prediction, plan.tau[:1].to(torch.float64).cpu())
            self._first_shift = (p / q).to(device=device, dtype=self._dtype)
        else:            # the latents are the state in the network's frame at the first call: x = c(t_0) latents
            x = latents / plan.in_scale[0]
        self._loop = plan.loop(x, self.target.step_noise(t0, draws, latents, x))
        self._call = next(self._loop)   # the first call: the pipeline has made it already
