"""Which grid and how many steps a run uses, decided in one place for every entry point: :func:`sample`, ``lazyflow
sample`` and :func:`~lazyflow.runtime.models.sampling.sample_to_file`, the diffusers scheduler, the bench, and the
samplers on the caller's own sigmas (k-diffusion's, ComfyUI's), which give their times and get the same refusals.

The rules (:func:`choose_grid`): text is read by :func:`~.grids.resolve_spec` (a name is checked); a tuned grid or
bespoke solver file (``.json`` text or any path) is read once as a :class:`~.gridfile.TunedGrid`; the steps are those given, else the
file's own or one fewer than explicit times, else :data:`.defaults.STEPS`; a tuned grid brings the diffusion scale
it was tuned at unless the caller gave one (:meth:`TunedGrid.schedule_for`), and a solver file its own integrator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import defaults
from .bespoke import integrator_for_grid, refuse_outside_sample
from .gridfile import TunedGrid
from .grids import GridSpec, make_grid, resolve_spec
from .integrators import get_integrator
from .plan import Integrator
from .schedule import Schedule, load_schedule

__all__ = ["GridChoice", "choose_grid", "own_steps"]


@dataclass(frozen=True)
class GridChoice:
    """A run's grid, decided: ``grid`` (a tuned grid read once, text parsed), ``steps``, the ``target`` schedule
    (at a tuned grid's diffusion scale), the ``integrator`` (a solver file's own) and ``notes`` for the user."""

    grid: GridSpec
    steps: int
    target: Schedule
    integrator: Integrator
    notes: tuple[str, ...] = ()

    def times(self, source: Any) -> torch.Tensor:
        """The ``steps + 1`` float64 times of ``target`` (:func:`~.grids.make_grid`; ``source``: the model's)."""
        return make_grid(self.target, load_schedule(source), self.steps, self.grid)


def own_steps(grid: GridSpec) -> int | None:
    """The steps a grid brings: a tuned grid file's, or one fewer than explicit times; None for a spaced grid."""
    grid = resolve_spec(grid)
    if isinstance(grid, TunedGrid):
        return grid.steps
    explicit = isinstance(grid, (list, tuple)) or (isinstance(grid, torch.Tensor) and grid.dim() == 1)
    return len(grid) - 1 if explicit and len(grid) >= 2 else None


def choose_grid(grid: GridSpec, steps: int | None, *, target: Any, integrator: str | Integrator,
                scale_given: bool = False, times_of: str | None = None) -> GridChoice:
    """The grid and steps of a run (the rules are in the module's docstring).  ``target``: the schedule asked for;
    ``scale_given``: the caller set its diffusion scale (a tuned grid's then does not replace it); ``times_of``:
    the integration whose caller gives the times (``grid`` is then those times, and a bespoke solver, which runs
    on its own, is refused naming it)."""
    method = get_integrator(integrator)
    if times_of is not None:
        refuse_outside_sample(method, times_of)
    grid = resolve_spec(grid)
    notes: list[str] = []
    target = load_schedule(target)
    if isinstance(grid, TunedGrid):
        target = grid.schedule_for(target, scale_given=scale_given)
        if grid.integrator and grid.integrator != method.name:
            notes.append(f"note: {grid.describe()} was tuned for {grid.integrator}, not {method.name}")
    own = own_steps(grid)
    steps = steps if steps is not None else own if own is not None else defaults.STEPS   # a wrong count: make_grid
    return GridChoice(grid, steps, target, integrator_for_grid(method, grid), tuple(notes))
