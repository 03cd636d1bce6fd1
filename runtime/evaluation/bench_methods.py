"""Which rows the bench runs: the samplers of ours (:class:`OurMethod`: a schedule, an integrator, a grid, a
final step, a diffusion scale and the data frames' statistics), the default lists of them (:func:`our_methods`,
:func:`data_frame_methods`, :func:`diffusion_sweep`, :func:`open_start` for noise and score models) and the
``lazyflow sample`` flags that reproduce a row (:func:`sample_args`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.data_frame import stochastic_data_frame
from ..core.integrators import INTEGRATORS

__all__ = ["OurMethod", "our_methods", "data_frame_methods", "diffusion_sweep", "open_start", "sample_args",
           "BENCH_SCHEDULES", "BENCH_SKIPPED_INTEGRATORS", "DATA_FRAME_GRID", "BENCH_SDE_FRAMES",
           "BENCH_DIFFUSION_SCALES", "OPEN_GRID", "OPEN_REFERENCE_GRID", "STATS_FILE_MISSING"]

#: the frames the bench compares
BENCH_SCHEDULES = ("linear", "vp", "pointmass", "linear-sde", "vp-sde")
#: integrators left out of the bench because they lost where measured: multistep3(-pc) equal
#: multistep(-pc) at 4 NFE (no third-order step fits) and lose at 6 and 8 on gmm64 and digits in every frame
#: and grid but one tie (gmm64 logsnr pc at 8: 0.227 vs 0.230, floor 0.219); e.g. linear/uniform pc at 6 NFE:
#: gmm64 0.404 vs 0.320, digits 2.67 vs 2.01
BENCH_SKIPPED_INTEGRATORS = ("multistep3", "multistep3-pc")


@dataclass(frozen=True)
class OurMethod:
    """One sampler of ours the bench runs: a ``schedule`` to integrate in, an ``integrator``, a ``grid`` (a tuned
    grid file's path ending in .json), the ``final_step``, the ``diffusion`` scale and, for a data-frame
    integrator, the ``stats`` it runs with."""

    schedule: str
    integrator: str
    grid: str
    final_step: str | None = None
    diffusion: float = 1.0      # sigma = diffusion * the schedule's sigma (Schedule.with_diffusion_scale)
    stats: str | None = None    # the data-frame integrators' statistics kind (full, diag, ...)
    #: the schedule itself, where ``schedule`` (its ``describe()``) does not load it: a bespoke solver runs in the
    #: model's own schedule, and a discrete diffusion table has no name
    own: Any = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """``schedule[*scale]/integrator/grid[/final][[stats]]``; a tuned grid's file as ``tuned:FILE``."""
        last = f"/{self.final_step}" if self.final_step else ""
        scale = f"*{self.diffusion:g}" if self.diffusion != 1 else ""
        kind = f"[{self.stats}]" if self.stats else ""
        grid = f"tuned:{Path(self.grid).name}" if self.grid.endswith(".json") else self.grid
        return f"{self.schedule}{scale}/{self.integrator}/{grid}{last}{kind}"

    def target(self):
        """The schedule this method integrates in, with its diffusion scale."""
        from ..core.schedule import load_schedule

        schedule = load_schedule(self.schedule if self.own is None else self.own)
        return schedule if self.diffusion == 1 else schedule.with_diffusion_scale(self.diffusion)



def our_methods(full: bool = True) -> list[OurMethod]:
    """The samplers the bench compares: each schedule with each integrator and grid that applies."""
    methods = []
    for schedule in BENCH_SCHEDULES:
        for integrator, method in INTEGRATORS.items():
            if integrator in BENCH_SKIPPED_INTEGRATORS or not method.classic:
                continue   # the data-frame integrators need the data's statistics, which the bench does not give
            if schedule == "linear" and integrator == "exponential":
                continue  # identical to Euler on the linear schedule
            grids = ("uniform", "source", "logsnr") if full else ("uniform",)
            for grid in grids:
                if grid == "source" and schedule in ("linear", "linear-sde"):
                    continue  # the source frame itself: the same as uniform
                methods.append(OurMethod(schedule, integrator, grid))
    if full:  # the last step: a plain step or the denoised mean eta_X
        methods += [OurMethod("pointmass", integrator, grid, "denoise") for integrator in ("euler", "midpoint", "multistep-pc")
                    for grid in ("uniform", "logsnr")]
        methods += diffusion_sweep()
    return methods


def data_frame_methods(full: bool, kinds: tuple[str, ...]) -> list[OurMethod]:
    """The data-frame integrators (``needs_data_stats``) in each ODE frame of :data:`BENCH_SCHEDULES`, on the
    grids :func:`our_methods` uses, once per statistics kind in ``kinds``."""
    from ..core.schedule import load_schedule

    methods = []
    for kind in kinds:
        for schedule in BENCH_SCHEDULES:
            target = load_schedule(schedule)
            if target.point_mass:
                continue   # the data frames start from noise at t = 0
            for integrator, method in INTEGRATORS.items():
                if not method.needs_data_stats or stochastic_data_frame(method) != target.stochastic:
                    continue   # the ODE frames in the ODE schedules, data-sde* in the optimal-diffusion ones
                if target.stochastic:
                    if integrator in BENCH_SDE_FRAMES:
                        methods += [OurMethod(schedule, integrator, grid, None, scale, stats=kind)
                                    for scale in (1.0, *BENCH_DIFFUSION_SCALES)
                                    for grid in (("uniform", "logsnr") if full else ("uniform",))]
                    continue
                for grid in ("uniform", "source", "logsnr", DATA_FRAME_GRID) if full else ("uniform",):
                    if not (grid == "source" and schedule == "linear"):
                        methods.append(OurMethod(schedule, integrator, grid, stats=kind))
    return methods


#: a grid for the data frames' short budgets: a long first step (it makes no call: the residual is 0 at t = 0)
#: and a short last one (the t = 1 anchor's error grows with it; uniform grids leave samples between the
#: modes, nll_gap > 0).  Range chosen at 4 NFE on gmm:101/102 only, then measured on gmm:201/202 and gmm64
#: (docs/data-frames.md); a fixed log-snr range, so it does not converge as steps grow
DATA_FRAME_GRID = "logsnr:-1,2.5"


#: the stochastic data frames the bench runs (both registered ones)
BENCH_SDE_FRAMES = ("data-sde", "data-sde-multistep")


#: the diffusion strengths between the ODE (0) and the schedule's own (1) that the bench measures
BENCH_DIFFUSION_SCALES = (0.25, 0.5)


def diffusion_sweep() -> list[OurMethod]:
    """The stochastic samplers that did best at full diffusion, at weaker diffusion (on gmm64
    the linear-sde multistep-pc row at 4 NFE halves its FD at scale 0.25)."""
    return [OurMethod(schedule, integrator, grid, None, scale) for scale in BENCH_DIFFUSION_SCALES
            for schedule, integrator, grid in (("linear-sde", "multistep-pc", "uniform"),
                                               ("linear-sde", "multistep", "uniform"),
                                               ("pointmass", "multistep-pc", "source"),
                                               ("pointmass", "multistep-pc", "uniform"),
                                               ("pointmass", "midpoint", "uniform"))]


#: noise- and score-prediction models are undefined at snr = 0 (MATH.md §2): their runs use this grid, which
#: starts at log snr -5 (beta/alpha = 0.007; the start drops beta X) and was the best of -5/-7/-9 .. 3/4/5 on
#: gmm64 (vp multistep, 4 and 8 NFE); the references start at log snr -12 (equal to the velocity references)
OPEN_GRID = "logsnr-open:-5,3"
OPEN_REFERENCE_GRID = "logsnr-open:-12,12"


def open_start(methods: list[OurMethod]) -> list[OurMethod]:
    """Each method on :data:`OPEN_GRID` (once per schedule, integrator and final step; a method already on an open
    log-snr grid keeps it); point-mass methods are left out (a point mass starts at snr = 0, where a noise or score
    model says nothing)."""
    from ..core.schedule import load_schedule

    out: dict = {}
    for method in methods:
        if not load_schedule(method.schedule).point_mass:
            grid = method.grid if method.grid.startswith("logsnr-open:") else OPEN_GRID
            out.setdefault(replace(method, grid=grid), None)
    return list(out)


#: what a data-frame row's sample_args hold where its statistics file was not written
STATS_FILE_MISSING = "STATS_FILE_NOT_WRITTEN"


def sample_args(model_name: str, method: OurMethod, steps: int, n: int, seed: int,
                prediction: str | None = None, data_stats: str | None = None) -> list[str]:
    """The ``lazyflow sample`` flags that reproduce a bench run of ``method`` bit for bit (add ``--out``);
    ``data_stats``: the statistics file of a data-frame method."""
    own = [] if method.own is not None else ["--schedule", method.schedule]   # a solver's: the model's own
    args = ["--model", model_name, *own, "--integrator", method.integrator, "--steps", str(steps), "--grid", method.grid]
    if method.stats:
        args += ["--data-stats", data_stats or STATS_FILE_MISSING]
    if method.final_step:
        args += ["--final-step", method.final_step]
    if method.diffusion != 1:
        args += ["--diffusion-scale", f"{method.diffusion!r}"]
    if prediction:
        args += ["--prediction", prediction]
    return args + ["--seed", str(seed), "--num-samples", str(n)]
