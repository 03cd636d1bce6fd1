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

#: the integrator of a sampler over the caller's own sigmas (k-diffusion's ``sample_lazyflow``, the ComfyUI node),
#: in the frame N(E[X | c], I) when no statistics are given (the mean read from the first call): exact on
#: Gaussian data of unit variance on any grid.  Chosen by measurement (path to the model's own ODE from the same
#: start state; ``python -m lazyflow.runtime.evaluation.sigmas_study``), on k-diffusion's Karras sigmas (rho 7,
#: 0.002 to 80 or 14.6) at 4, 6, 8 steps: below sample_dpmpp_2m on gmm64 (4.18/1.55/0.93 against 4.49/2.97/1.49
#: from 80).  ``data-2m`` (DPM-Solver++(2M)'s rule on the frame's residual) was chosen over it on gmm64, gmm:101,
#: gmm:102 and gmm:2601,dim=1024 (below sample_dpmpp_2m in 22 of 24 cells) but lost to it without statistics
#: on every learned model reported (digits, patches, cond-mlp, bn-unet; docs/k-diffusion.md), so the default
#: stays; with statistics data-2m is the one to pass.  On uniform grids data-euler is first order and loses, so
#: ``sample()`` keeps :data:`INTEGRATOR`
SIGMAS_INTEGRATOR = "data-euler"
