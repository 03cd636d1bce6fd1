"""The defaults of a sampling run, the same for ``lazyflow sample``, :func:`lazyflow.sample` and the diffusers
scheduler (imports nothing, so that the command line's parsers read them without loading torch).

Chosen by measurement: ``linear/multistep-pc/uniform`` (the bench row of that name, 8 steps = 8 NFE, last step
euler) has the best mean rank among the general-purpose rows (those that need no data statistics) over the
committed benches ``figures/bench_{digits,gmm64,gmm101,gmm102,gmm4096}.json`` at 4 NFE and above: FD 6.55,
2.01, 1.82 at 4, 6, 8 NFE on digits (point-mass Euler, the old default: 17.2, 10.5, 6.92), 1.09, 0.32, 0.232
on gmm64 (5.60, 3.13, 2.05).  It is an ODE: the samples do not depend on the diffusion of the schedule.
"""

#: the schedule a run integrates in
SCHEDULE = "linear"
#: the integrator (one network call per step)
INTEGRATOR = "multistep-pc"
#: the time grid
GRID = "uniform"
#: the last step: a plain step (README: returning eta_X was worse for point-mass Euler, about equal elsewhere)
FINAL_STEP = "euler"
#: the number of steps
STEPS = 8

#: the integrator of a sampler over the caller's own sigmas (k-diffusion's ``sample_lazyflow``, the ComfyUI node):
#: DPM-Solver++(2M)'s rule with a corrector that reuses the next call (``data-2m-pc``) on the residual of the frame
#: N(E[X | c], SIGMAS_FRAME_VARIANCE I) when no statistics are given (the mean read from the first call), exact on
#: Gaussian data of that variance on any grid.  Chosen by measurement (path to the model's own ODE from the same
#: start state, ``python -m lazyflow.runtime.evaluation.sigmas_study``; k-diffusion's Karras sigmas, rho 7, 0.002
#: to 80 or 14.6, at 4, 6, 8 steps; docs/k-diffusion.md, "Which default"): the lowest geometric mean of the ratio
#: to sample_dpmpp_2m over a choice set of eight models (48 cells): 0.618, below it in all 48 (``data-2m``, the
#: default before, 0.748, 43 of 48).  With statistics the frame is theirs.  ``sample()`` keeps :data:`INTEGRATOR`,
#: chosen on the uniform grids it defaults to.
SIGMAS_INTEGRATOR = "data-2m-pc"
#: the variance of the frame N(E[X | c], v I) that :data:`SIGMAS_INTEGRATOR` integrates in without statistics
#: (pass ``data_stats=DataStats.isotropic(shape, var=...)`` for another)
SIGMAS_FRAME_VARIANCE = 0.03
