"""lazyflow inside diffusers pipelines: :class:`LazyFlowScheduler`, a drop-in for FlowMatchEuler (and, from
:mod:`~lazyflow.runtime.integrations.diffusion_scheduler`, :class:`LazyDiffusionScheduler` for DDPM/DDIM and
Stable Diffusion 1.x / 2.x / SDXL pipelines).

    from lazyflow.diffusers import LazyFlowScheduler
    pipe.scheduler = LazyFlowScheduler.from_config(pipe.scheduler.config)   # linear, multistep-pc

Defaults: those of :func:`lazyflow.sample` and ``lazyflow sample`` (:mod:`lazyflow.runtime.core.defaults`:
schedule linear, integrator multistep-pc, last step euler, the best general-purpose row of the committed
benches), except the grid: a pipeline chooses its steps and sigmas (its shift, its ``mu``), so the default
grid is the pipeline's own (``grid="pipeline"``; ``grid="uniform"`` gives :func:`lazyflow.sample`'s).

The scheduler drives the same integrator loop as :func:`lazyflow.sample` (the generator loops of
:mod:`lazyflow.runtime.core.integrators`): ``set_timesteps`` builds the plan and each ``step`` is one
network call that the pipeline made; nothing of the integrators is re-implemented here.

Times.  The network is a linear-schedule flow model in diffusers' convention (source time
tau = 1 - sigma, output minus our velocity: :mod:`lazyflow.runtime.integrations.flow_convention`).
The pipeline's ``sigmas`` (shifted by
``shift``, or by ``mu`` with dynamic shifting, exactly as FlowMatchEulerDiscreteScheduler shifts them)
are the network times of a one-call-per-step run; they are mapped into the target frame by equal log
snr, t_k = target.time_of_log_snr(source.log_snr(1 - sigma_k)), with t = 1 appended, and that grid is
integrated.  ``timesteps`` are the network times of the calls the loop makes, 1000 (1 - tau), in order:
one per ``step``, so a two-stage integrator (heun, midpoint, exp-midpoint) has ``order = 2`` and its
intermediate calls appear as extra timesteps (as FlowMatchHeun's do).  Without ``sigmas`` the default
grid is linspace(1, 1/num_train_timesteps) shifted once (FlowMatchEuler shifts its end twice, diffusers
issue 13243).

State.  The scheduler owns the state: the first ``step`` reads the pipeline's latents, later ones use the
loop's own state (the ``sample`` argument must be what the previous ``step`` returned).  ``step``
returns what the pipeline feeds the network next (the state divided by the frame's scale c), and the
final state after the last call.  The pipeline's latents are the source-frame state at the first call's
sigma: the target-frame state is c(t_0) * latents (the latents themselves for a standard target started
at sigma = 1).  A point-mass target started at sigma = 1 (t_0 = 0) starts from x = 0 and uses the
latents as its first noise draw, so the run is fixed by the pipeline's generator; its first network call
was made by the pipeline on those latents at sigma = 1 (snr = 0, where the denoiser does not depend on
its input), and the scheduler converts that output to the denoiser there: eta_X = latents - output.
A run that starts below sigma = 1 (img2img, ``strength`` < 1) starts from c(t_0) * latents in any frame,
the point mass included (its state at t_0 > 0 is an ordinary noisy state).

Noise.  Pipelines call ``step`` without a generator; in a stochastic schedule, step k of sample i uses
draw 1 + k of :class:`~lazyflow.runtime.core.noise.CounterNormal` (``seed`` in the config, or
:meth:`LazyFlowScheduler.set_seed`), drawn on the latents' device as :func:`lazyflow.sample` draws it
with ``initial=latents``, so a run in a pipeline equals ``sample(..., seed=seed, initial=latents)`` on
the same model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import LazyflowError
from ..core import defaults

try:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as _err:  # diffusers is an optional extra
    raise LazyflowError("lazyflow.diffusers (LazyFlowScheduler) needs diffusers, an optional extra: "
                        "pip install 'lazyflow[peers]' (or pip install diffusers)") from _err

from ..core.grid_choice import choose_grid
from ..core.bespoke import holds_solver
from ..core.integrators import check_plan_options, get_integrator
from ..core.plan import Call
from ..core.frames import times_of_equal_log_snr
from ..core.sampler import check_seed
from .flow_convention import sigma_of_time, time_of_sigma, timestep_of_time, velocity_of_output
from ..core.schedule import Schedule, load_schedule
from .diffusion_scheduler import LazyDiffusionScheduler, LazyDiffusionSchedulerOutput, refuse_diffusion_config
from .scheduler_loop import IntegratorLoop, frame_statistics, scheduler_target

__all__ = ["LazyFlowScheduler", "LazyFlowSchedulerOutput", "LazyDiffusionScheduler", "LazyDiffusionSchedulerOutput",
           "SOURCE"]

#: the network's own schedule: diffusers flow transformers are linear-schedule velocity models
SOURCE = "linear"
PIPELINE_GRID = "pipeline"
_EULER_FIELDS = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                 "base_image_seq_len", "max_image_seq_len", "shift_terminal", "use_karras_sigmas",
                 "use_exponential_sigmas", "use_beta_sigmas", "time_shift_type")


def _refuse_flow_match_options(invert_sigmas: bool, stochastic_sampling: bool) -> None:
    """FlowMatchEuler's own options that a lazyflow run does not take, refused in one line."""
    if invert_sigmas:
        raise LazyflowError("LazyFlowScheduler: invert_sigmas (Mochi's inverted sigmas) is not supported")
    if stochastic_sampling:
        raise LazyflowError("LazyFlowScheduler: stochastic_sampling is FlowMatchEuler's own SDE; choose a "
                            "stochastic schedule instead (schedule='pointmass' or 'linear-sde')")


@dataclass
class LazyFlowSchedulerOutput(BaseOutput):
    """``prev_sample``: what the pipeline feeds the network next (the final samples after the last call)."""

    prev_sample: torch.Tensor


class LazyFlowScheduler(IntegratorLoop, SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that integrates a flow-matching pipeline in any lazyflow schedule.

    Config: FlowMatchEulerDiscreteScheduler's fields (``shift``, ``use_dynamic_shifting``, ``base_shift``,
    ``max_shift``, ``base_image_seq_len``, ``max_image_seq_len``, ``num_train_timesteps``,
    ``shift_terminal``, ``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``,
    ``time_shift_type``; ``invert_sigmas`` and ``stochastic_sampling`` must stay False: choose a
    stochastic ``schedule`` instead) and lazyflow's:

    - ``schedule``: the target schedule, any name :func:`lazyflow.load_schedule` resolves (a preset, a
      ``.toml`` or kernel ``.py`` path), with ``schedule_params`` (a dict) bound;
    - ``integrator``: a name of :data:`lazyflow.INTEGRATORS`; ``order`` is its calls per step;
    - ``grid``: ``"pipeline"`` (default: the pipeline's sigmas mapped by equal log snr) or a lazyflow grid
      name (``uniform``, ``source``, ``logsnr``, ``edm``, ``logsnr:FIRST,LAST``) of ``num_inference_steps``
      steps, or the path of a tuned grid's ``.json`` file (``lazyflow tune-grid``; num_inference_steps must be
      its steps), which then replaces the pipeline's sigmas, shift and ``mu``;
    - ``final_step``: ``euler`` or ``denoise``;
    - ``seed``: the per-sample noise streams of a stochastic schedule;
    - ``data_stats``: the path of a data statistics file (``lazyflow stats``) for the ``data-*``
      integrators, which integrate in the frame exact for the data's Gaussian (they call the network at
      the first sigma too, as the pipeline does); statistics with the first call's mean (``lazyflow stats
      --condition first-call``) take each sample's mean from that call, so they follow prompts and guidance;
    - ``diffusion_scale``: sigma = diffusion_scale * the schedule's sigma (0: its ODE; a stochastic schedule);
      a tuned grid file tuned at a scale brings its own when this is left at 1.
    """

    _compatibles: list = []
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: float | None = 0.5, max_shift: float | None = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, invert_sigmas: bool = False, shift_terminal: float | None = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 time_shift_type: str = "exponential", stochastic_sampling: bool = False,
                 schedule: str = defaults.SCHEDULE, schedule_params: dict | None = None,
                 integrator: str = defaults.INTEGRATOR, grid: str = PIPELINE_GRID, final_step: str = defaults.FINAL_STEP,
                 seed: int = 0, diffusion_scale: float = 1.0,
                 data_stats: str | None = None):
        _refuse_flow_match_options(invert_sigmas, stochastic_sampling)
        self.target: Schedule = scheduler_target("LazyFlowScheduler", schedule, schedule_params, diffusion_scale)
        self.source: Schedule = load_schedule(SOURCE)
        self.integrator = get_integrator(integrator)
        check_plan_options(self.target, self.integrator, final_step)
        self.data_stats, self.integrator = frame_statistics("LazyFlowScheduler", data_stats, self.integrator)
        self._grid = None if grid == PIPELINE_GRID else self._chosen_grid(grid, diffusion_scale != 1)
        if self.integrator.needs_solver_file and not holds_solver(self.integrator):
            raise LazyflowError("LazyFlowScheduler: integrator 'bespoke' runs a fitted solver: give its file as "
                                "grid='solver.json' (lazyflow tune-grid --integrator bespoke, or bench --bespoke)")
        check_seed(seed)
        # the pipeline's sigmas come from FlowMatchEuler itself (its shift, dynamic shift, terminal stretch,
        # Karras/exponential/beta spacing), always given explicitly so that the shift is applied once
        self._sigma_maker = FlowMatchEulerDiscreteScheduler(**{k: getattr(self.config, k) for k in _EULER_FIELDS})
        self.order = self.integrator.calls_per_step
        self.init_noise_sigma = 1.0
        self._seed = int(seed)
        self.timesteps = self._sigma_maker.timesteps.clone()
        self.sigmas = self._sigma_maker.sigmas.clone()
        self.sigma_min, self.sigma_max = float(self.sigmas[-1]), float(self.sigmas[0])
        self.num_inference_steps: int | None = None
        self._times: torch.Tensor | None = None     # the target grid (float64, CPU)
        self._offsets: list[int] = []                # call index of each step's first call
        self._reset_run()

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' ``from_config``; a diffusion scheduler's config (DDIM's: betas, prediction_type) is refused
        in one line naming :class:`LazyDiffusionScheduler`."""
        refuse_diffusion_config(config, "LazyFlowScheduler")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # --- what diffusers pipelines read ------------------------------------------------------------
    @property
    def shift(self) -> float:
        return self._sigma_maker.shift

    def set_shift(self, shift: float) -> None:
        self._sigma_maker.set_shift(shift)

    # --- timesteps -------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | None = None, mu: float | None = None,
                      timesteps: list[float] | None = None) -> None:
        """Build the run: the target grid from the pipeline's sigmas (or ``grid``), the plan, and the
        ``timesteps`` of its network calls (diffusers' 0..num_train_timesteps scale)."""
        cfg = self.config
        if num_inference_steps is None and sigmas is None and timesteps is None:
            raise LazyflowError("set_timesteps needs num_inference_steps, sigmas or timesteps")
        if cfg.grid == PIPELINE_GRID:
            if cfg.use_dynamic_shifting and mu is None:
                raise LazyflowError("`mu` must be passed when use_dynamic_shifting is True (the pipeline computes it "
                                    "from the image size)")
            if sigmas is None and timesteps is None:
                # once-shifted default grid (FlowMatchEuler shifts its already shifted ends again: issue 13243)
                sigmas = np.linspace(1.0, 1.0 / cfg.num_train_timesteps, int(num_inference_steps))
            self._sigma_maker.set_timesteps(num_inference_steps=num_inference_steps, sigmas=sigmas, mu=mu,
                                            timesteps=timesteps)
            sigma = self._sigma_maker.sigmas[:-1].to(torch.float64).cpu()
            times = self._target_times(torch.cat([time_of_sigma(sigma), torch.ones(1, dtype=torch.float64)]))
        else:
            steps = num_inference_steps or len(sigmas if sigmas is not None else timesteps)
            times = choose_grid(self._grid, int(steps), target=self.target, integrator=self.integrator).times(self.source)
        calls = self._set_run(times).call_times()
        self.timesteps = timestep_of_time(calls, cfg.num_train_timesteps).to(device=device, dtype=torch.float32)
        self.sigmas = torch.cat([sigma_of_time(calls), torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
        self.sigma_min, self.sigma_max = float(self.sigmas[-2]), float(self.sigmas[0])

    def _chosen_grid(self, grid: Any, scale_given: bool) -> Any:
        """A lazyflow grid instead of the pipeline's (:func:`~lazyflow.runtime.core.grid_choice.choose_grid`, the
        rules of every entry point): a tuned grid file read now, its schedule and a solver file's integrator taken;
        a grid that starts after t = 0 is refused (a pipeline starts from pure noise)."""
        if isinstance(grid, os.PathLike):
            self.register_to_config(grid=os.fspath(grid))   # the config is saved as JSON
        try:
            choice = choose_grid(grid, None, target=self.target, integrator=self.integrator, scale_given=scale_given)
        except LazyflowError as err:
            if not str(err).startswith("unknown grid"):
                raise
            raise LazyflowError(f"{err}; or {PIPELINE_GRID!r} (the pipeline's sigmas)") from None
        self.target, self.integrator = choice.target, choice.integrator
        if getattr(choice.grid, "open", False) or getattr(choice.grid, "times", (0.0,))[0] > 0:
            raise LazyflowError(f"grid {grid!r} starts after t = 0: a pipeline starts from pure noise, so its "
                                "grid must start at 0 (use logsnr:FIRST,LAST)")
        return choice.grid

    def _target_times(self, t_src: torch.Tensor) -> torch.Tensor:
        """Network times -> target times by equal log snr (the identity for the same path); ``t_src`` ends at 1."""
        times = times_of_equal_log_snr(self.target, self.source, t_src)
        if not torch.isfinite(times).all() or (times[1:] <= times[:-1]).any() or times[0] < 0 or times[-1] > 1:
            raise LazyflowError(f"the pipeline's sigmas do not give an increasing grid in [0, 1] for "
                                f"{self.target.describe()}: sigmas must decrease strictly from at most 1 to above 0 "
                                f"(got network times {t_src.tolist()})")
        return times

    def scale_noise(self, sample: torch.Tensor, timestep: float | torch.Tensor,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
        """Img2img's forward process, as FlowMatchEuler's: sigma noise + (1 - sigma) sample at the
        network time of the run's first call (``begin_index``)."""
        if noise is None:
            raise LazyflowError("scale_noise needs the noise tensor")
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        sigma = sigmas[self._first_call_indices(timestep)].flatten()
        while sigma.dim() < sample.dim():
            sigma = sigma.unsqueeze(-1)
        return sigma * noise + (1.0 - sigma) * sample

    # --- the run ---------------------------------------------------------------------------------
    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, per_token_timesteps: torch.Tensor | None = None,
             return_dict: bool = True) -> LazyFlowSchedulerOutput | tuple:
        """One network call: ``model_output`` is the network's output (Z - X) on what the previous step
        returned (on the pipeline's latents at the first call).  Returns the next call's network input,
        or the samples after the last call.  ``generator`` is not used (noise comes from ``seed``);
        ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise`` are accepted for FlowMatchEuler's signature and
        ignored; ``per_token_timesteps`` is refused."""
        self._check_timestep(timestep)
        if per_token_timesteps is not None:
            raise LazyflowError("LazyFlowScheduler does not support per_token_timesteps")
        out = self._advance(model_output, timestep, sample)
        if not return_dict:
            return (out,)
        return LazyFlowSchedulerOutput(prev_sample=out)

    def _as_prediction(self, output: torch.Tensor, x_in: torch.Tensor, call: Call) -> torch.Tensor:
        """Our velocity X - Z from the network's Z - X."""
        return velocity_of_output(output)
