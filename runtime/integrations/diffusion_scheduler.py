"""lazyflow inside diffusers' diffusion pipelines: :class:`LazyDiffusionScheduler`, a drop-in for DDIM.

    from lazyflow.diffusers import LazyDiffusionScheduler
    pipe.scheduler = LazyDiffusionScheduler.from_config(pipe.scheduler.config)   # linear, multistep-pc

For DDPMPipeline / DDIMPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline and their img2img: the
network is a discrete diffusion model (noise, x or v prediction) on the table of the config's betas
(:func:`lazyflow.runtime.core.discrete_schedule.schedule_of_config`), converted by
:mod:`~lazyflow.runtime.integrations.diffusion_convention`.  Defaults: those of :func:`lazyflow.sample`
(schedule linear, integrator multistep-pc), on the pipeline's own timesteps.

Times.  The pipeline's n steps are DDIM's timesteps k_1 > ... > k_n (``timestep_spacing``, ``steps_offset``),
at source times t(k) = 1 - (k + 1) / M, followed by the end: the data (t = 1) if ``set_alpha_to_one``, else
timestep 0 (DDIM's final alpha abar_0: the run ends a little noisy, as DDIM's does).  They are mapped into the
target frame by equal log snr and that grid is integrated.  ``timesteps`` are the training timesteps of the
calls the loop makes, k(tau) (floats; exact integers at training timesteps; two-stage integrators call between
them, rounded to integers too if ``rounded_timesteps``).  The DDIM step (eta = 0) is the ``exponential``
integrator on these timesteps in any variance-preserving target (``vp`` or the table itself).

State and noise: as :class:`~lazyflow.runtime.integrations.diffusers.LazyFlowScheduler`
(:mod:`~lazyflow.runtime.integrations.scheduler_loop`): the latents are the state at the first call's
timestep; ``step`` returns the next call's network input; a stochastic schedule draws from ``seed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import LazyflowError
from ..core import defaults
from ..core.bespoke import holds_solver
from ..core.discrete_schedule import schedule_of_config, time_of_timestep, timestep_of_time
from ..core.frames import times_of_equal_log_snr
from ..core.grid_choice import choose_grid
from ..core.integrators import check_plan_options, get_integrator
from ..core.plan import Call
from ..core.sampler import check_seed
from ..core.schedule import Schedule
from .diffusion_convention import prediction_of, prediction_of_output, spaced_timesteps
from .scheduler_loop import IntegratorLoop, frame_statistics, scheduler_target

from diffusers.configuration_utils import ConfigMixin, register_to_config   # noqa: E402 - the caller checked it
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

__all__ = ["LazyDiffusionScheduler", "LazyDiffusionSchedulerOutput", "refuse_diffusion_config"]

WHO = "LazyDiffusionScheduler"
PIPELINE_GRID = "pipeline"
#: the config keys that make a scheduler config a discrete diffusion one (no flow-matching config has them)
DIFFUSION_KEYS = ("beta_schedule", "trained_betas", "prediction_type")


def refuse_diffusion_config(config: Any, who: str) -> None:
    """Refuse, in one line naming :class:`LazyDiffusionScheduler`, a diffusion scheduler's config given to the
    flow scheduler ``who``."""
    found = [key for key in DIFFUSION_KEYS if key in (config or {})]
    if found:
        raise LazyflowError(f"{who} serves flow-matching pipelines, and this is a diffusion scheduler's config "
                            f"({', '.join(found)}): use lazyflow.diffusers.LazyDiffusionScheduler.from_config"
                            "(pipe.scheduler.config)")


def _refuse_unsupported(thresholding: bool, timestep_type: str) -> None:
    """Config options a lazyflow run does not take, refused in one line."""
    if thresholding:
        raise LazyflowError(f"{WHO}: thresholding (dynamic thresholding of x0) is not supported; use clip_sample")
    if timestep_type != "discrete":
        raise LazyflowError(f"{WHO}: timestep_type {timestep_type!r} (a network called at log sigma) is not "
                            "supported; only discrete timesteps")


@dataclass
class LazyDiffusionSchedulerOutput(BaseOutput):
    """``prev_sample``: what the pipeline feeds the network next (the final samples after the last call)."""

    prev_sample: torch.Tensor


class LazyDiffusionScheduler(IntegratorLoop, SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that integrates a discrete diffusion pipeline in any lazyflow schedule.

    Config: DDIMScheduler's fields, read as DDIM reads them (``num_train_timesteps``, ``beta_start``,
    ``beta_end``, ``beta_schedule`` (linear, scaled_linear, squaredcos_cap_v2), ``trained_betas``,
    ``rescale_betas_zero_snr``: the network's schedule; ``prediction_type`` (epsilon, sample, v_prediction);
    ``timestep_spacing`` (leading, trailing, linspace) and ``steps_offset``: the pipeline's timesteps;
    ``set_alpha_to_one``: where the run ends; ``clip_sample`` with ``clip_sample_range``: the denoised
    eta_X is clamped before the step reads it (DDIM's ``use_clipped_model_output=True``); ``thresholding``
    must stay False), ``variance_type`` (DDPM's, not used), ``timestep_type`` (Euler's; must be discrete),
    and lazyflow's:

    - ``schedule``, ``schedule_params``, ``integrator``, ``final_step``, ``seed``, ``diffusion_scale``,
      ``data_stats``: as :class:`~lazyflow.runtime.integrations.diffusers.LazyFlowScheduler`;
    - ``grid``: ``"pipeline"`` (default: the pipeline's timesteps) or a bespoke solver's ``.json`` file fitted on
      this table (``lazyflow tune-grid --integrator bespoke``, with ``integrator="bespoke"``): its own steps and
      times, its first call at its own start (the table's timestep 999 for the fits of ``tune-grid``) from
      ``init_noise_sigma`` = alpha(t_0) times the pipeline's noise; img2img (a later start) is refused;
    - ``rounded_timesteps``: call the network at integer timesteps only (two-stage integrators' second calls).
    """

    _compatibles: list = []
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: list[float] | None = None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", rescale_betas_zero_snr: bool = False,
                 variance_type: str | None = None, timestep_type: str = "discrete",
                 schedule: str = defaults.SCHEDULE, schedule_params: dict | None = None,
                 integrator: str = defaults.INTEGRATOR, grid: str = PIPELINE_GRID, final_step: str = defaults.FINAL_STEP,
                 seed: int = 0, diffusion_scale: float = 1.0, data_stats: str | None = None,
                 rounded_timesteps: bool = False):
        _refuse_unsupported(thresholding, timestep_type)
        spaced_timesteps(num_train_timesteps, 1, timestep_spacing)            # refuses an unknown spacing
        if trained_betas is not None and not isinstance(trained_betas, list):
            self.register_to_config(trained_betas=[float(b) for b in trained_betas])   # the config is saved as JSON
        self.source: Schedule = schedule_of_config(self.config)
        prediction = prediction_of(prediction_type)
        self._prediction = "x" if clip_sample else prediction
        self.target: Schedule = scheduler_target(WHO, schedule, schedule_params, diffusion_scale)
        self.integrator = get_integrator(integrator)
        check_plan_options(self.target, self.integrator, final_step)
        self.data_stats, self.integrator = frame_statistics(WHO, data_stats, self.integrator)
        self._solver = None if grid == PIPELINE_GRID else self._solver_file(grid)
        if self.integrator.needs_solver_file and not holds_solver(self.integrator):
            raise LazyflowError(f"{WHO}: integrator 'bespoke' runs a fitted solver: give its file as "
                                "grid='solver.json' (lazyflow tune-grid --integrator bespoke on this table)")
        check_seed(seed)
        self.order = self.integrator.calls_per_step
        self.init_noise_sigma = 1.0
        self._seed = int(seed)
        table = self.source.kernel.alphas_cumprod
        self.alphas_cumprod = torch.tensor(table, dtype=torch.float32)
        self.final_alpha_cumprod = torch.tensor(1.0 if set_alpha_to_one else table[0])
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self.num_inference_steps: int | None = None
        self._times: torch.Tensor | None = None     # the target grid (float64, CPU)
        self._calls: torch.Tensor | None = None     # the source times of the calls (float64, CPU)
        self._offsets: list[int] = []
        self._reset_run()

    # --- timesteps -------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None) -> None:
        """Build the run: the pipeline's timesteps (``timestep_spacing``, or ``timesteps`` given, decreasing),
        their end, the target grid by equal log snr, the plan, and the ``timesteps`` of its network calls."""
        cfg = self.config
        if self._solver is not None:
            self._set_solver_run(num_inference_steps, timesteps, device)
            return
        if timesteps is not None:
            k = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1)
            if k.numel() < 1 or (k[1:] >= k[:-1]).any() or k[0] > cfg.num_train_timesteps - 1 or k[-1] < 0:
                raise LazyflowError(f"{WHO}: timesteps must decrease strictly within 0 .. "
                                    f"{cfg.num_train_timesteps - 1}, got {k.tolist()}")
        elif num_inference_steps is None:
            raise LazyflowError("set_timesteps needs num_inference_steps or timesteps")
        else:
            k = spaced_timesteps(cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset)
        end = torch.tensor([-1.0 if cfg.set_alpha_to_one or k[-1] == 0 else 0.0], dtype=torch.float64)
        t_src = time_of_timestep(self.source, torch.cat([k, end]))
        times = times_of_equal_log_snr(self.target, self.source, t_src)
        if (times[1:] <= times[:-1]).any():
            raise LazyflowError(f"{WHO}: the timesteps {k.tolist()} do not give an increasing grid in "
                                f"{self.target.describe()}")
        self._run_on(times, device)

    def _solver_file(self, grid: Any) -> Any:
        """A bespoke solver file instead of the pipeline's timesteps (:func:`~lazyflow.runtime.core.grid_choice.
        choose_grid`, the rules of every entry point): read now, run in the table itself with its own integrator;
        anything else is refused (a tuned grid of another integrator: the pipeline's timesteps are the grid)."""
        if not isinstance(grid, (str, os.PathLike)) or not str(grid).endswith(".json"):
            raise LazyflowError(f"{WHO}: grid is {PIPELINE_GRID!r} (the pipeline's timesteps, by timestep_spacing) "
                                f"or a bespoke solver's .json file, got {grid!r}")
        if isinstance(grid, os.PathLike):
            self.register_to_config(grid=os.fspath(grid))   # the config is saved as JSON
        choice = choose_grid(os.fspath(grid), None, target=self.source, integrator=self.integrator)
        if not holds_solver(choice.integrator):
            raise LazyflowError(f"{WHO}: {choice.grid.describe()} holds no bespoke solver; other grids run on the "
                                f"pipeline's timesteps (grid={PIPELINE_GRID!r})")
        self.target, self.integrator = choice.target, choice.integrator
        return choice

    def _set_solver_run(self, num_inference_steps: int | None, timesteps: Any, device: Any) -> None:
        """A bespoke solver's run: its own times and steps (``num_inference_steps`` must be its count), its first
        call where it was fitted to start, from alpha(t_0) times the pipeline's noise (``init_noise_sigma``)."""
        steps = self._solver.steps
        if timesteps is not None or num_inference_steps != steps:
            raise LazyflowError(f"{WHO}: the bespoke solver {self._solver.grid.path or ''} runs its own {steps} "
                                f"steps at its own times: call set_timesteps({steps}) (num_inference_steps={steps}), "
                                f"got {num_inference_steps if timesteps is None else 'timesteps'}")
        times = self._solver.times(self.source)
        self._run_on(times, device)
        self.init_noise_sigma = float(self.source.values(times[:1]).alpha[0])

    def _run_on(self, times: torch.Tensor, device: Any) -> None:
        """The run on the source ``times``: its plan, the source times of its calls and their ``timesteps``
        (k(tau), exact integers at training timesteps, rounded throughout with ``rounded_timesteps``)."""
        self._calls = self._set_run(times).call_times().to(torch.float64)
        calls = timestep_of_time(self.source, self._calls, rounded=self.config.rounded_timesteps)
        calls = torch.where((calls - calls.round()).abs() < 1e-6, calls.round(), calls)   # training timesteps exactly
        self.timesteps = calls.to(device=device, dtype=torch.float32)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The call index the run starts at (img2img's strength); a bespoke solver starts at its first only."""
        if self._solver is not None and begin_index:
            raise LazyflowError(f"{WHO}: a bespoke solver runs from its first time (its steps combine the start "
                                "state): img2img with strength < 1 is not for it; use an integrator on the "
                                f"pipeline's timesteps (grid={PIPELINE_GRID!r})")
        super().set_begin_index(begin_index)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Img2img's forward process: x = sqrt(abar) X + sqrt(1 - abar) noise at the source time of the run's
        first call (``begin_index``), beta X + alpha noise."""
        if self._calls is None:
            raise LazyflowError("call set_timesteps before add_noise")
        values = self.source.values(self._calls[self._first_call_indices(timesteps)])
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        alpha, beta = (v.reshape(shape).to(device=original_samples.device, dtype=original_samples.dtype)
                       for v in (values.alpha, values.beta))
        return beta * original_samples + alpha * noise

    # --- the run ---------------------------------------------------------------------------------
    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool | None = None, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> LazyDiffusionSchedulerOutput | tuple:
        """One network call: ``model_output`` is the network's output on what the previous step returned (on the
        pipeline's latents at the first call).  Returns the next call's network input, or the samples after the
        last call.  ``eta`` must be 0 (DDIM's own noise: choose a stochastic ``schedule`` instead) and
        ``variance_noise`` None; ``generator`` is not used (noise comes from ``seed``);
        ``use_clipped_model_output`` is accepted for DDIM's signature (the step always reads the clipped eta_X)."""
        self._check_timestep(timestep)
        if eta:
            raise LazyflowError(f"{WHO}: eta > 0 is DDIM's own stochastic step; choose a stochastic schedule "
                                "instead (schedule='vp-sde', 'linear-sde' or 'pointmass')")
        if variance_noise is not None:
            raise LazyflowError(f"{WHO} does not take variance_noise (its noise comes from seed)")
        out = self._advance(model_output, timestep, sample)
        if not return_dict:
            return (out,)
        return LazyDiffusionSchedulerOutput(prev_sample=out)

    def _as_prediction(self, output: torch.Tensor, x_in: torch.Tensor, call: Call) -> torch.Tensor:
        """The network's output as lazyflow's prediction (:mod:`.diffusion_convention`); with ``clip_sample``, the
        denoised eta_X = p x + q m clamped to +-clip_sample_range."""
        cfg = self.config
        tau = call.tau.to(torch.float64).reshape(-1)
        if cfg.prediction_type == "v_prediction" or cfg.clip_sample:
            values = self.source.values(tau)
            alpha, beta = (v.to(x_in.dtype) for v in (values.alpha, values.beta))
            output = prediction_of_output(output, x_in, alpha, beta, cfg.prediction_type)
        if not cfg.clip_sample:
            return output
        p, q = (v.to(x_in.dtype) for v in self.source.eta(prediction_of(cfg.prediction_type), tau))
        return (p * x_in + q * output).clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
