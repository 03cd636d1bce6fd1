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
