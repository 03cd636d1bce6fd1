"""The sampling core: schedules, frames, integrators (each step's coefficients and update), grids,
noise, the ``sample`` loop and its many-process and capture helpers."""
