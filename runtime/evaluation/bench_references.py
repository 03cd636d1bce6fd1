"""What the bench's rows are measured against: x*, the model's own converged ODE solution from the bench's start
noise (:class:`PathReferences`: solved once per bench and per peer start, :mod:`.paths`), and the converged ODE
and SDE references that close the tables (:func:`converged_references`, :data:`REFERENCES`)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from .bench_methods import OPEN_REFERENCE_GRID, OurMethod
from .bench_report import short_score
from .bench_row import BenchRow
from .paths import PATH_REFERENCE_STEPS, PathReference, path_reference

__all__ = ["PathReferences", "converged_references", "REFERENCES", "EXACT_REFERENCE_STEPS"]

#: the converged references: kind -> (method, steps); the exact models' steps were measured to converge
#: (MixtureScorer metrics unchanged to the printed digits between these and twice as many steps)
REFERENCES = {"ode": (OurMethod("linear", "heun", "uniform"), 250), "sde": (OurMethod("linear-sde", "euler", "uniform"), 1000)}
EXACT_REFERENCE_STEPS = {"ode": 100, "sde": 500}


class PathReferences:
    """x* of the ``velocity`` model on its ``source`` schedule from the bench's ``start`` noise: ``main`` (set by
    :meth:`solve` or read from a cache), and the x* of each peer that starts later (:meth:`from_start`), solved
    once per bench; ``options`` (batch_size, model_kwargs, device) batch and condition them as the rows are."""

    def __init__(self, velocity: Callable, source: Any, start: torch.Tensor, options: dict[str, Any]):
        self.velocity, self.source, self.start, self.options = velocity, source, start, options
        self.main: PathReference | None = None
        self._started: dict[tuple[float, float], PathReference] = {}

    def solve(self, steps: int = PATH_REFERENCE_STEPS) -> PathReference:
        """x* from the start noise at ``steps`` steps, with its check at half of them (:func:`.paths.path_reference`)."""
        return path_reference(self.velocity, self.source, self.start, steps, **self.options)

    def from_start(self, t0: float, scale: float) -> PathReference | None:
        """x* of a peer that starts at the source time t0 from scale * x0 (:func:`.peers.peer_start`; a linear
        source), with as many steps as ``main``: path_reference starts from alpha(t0) x0 = (1 - t0) x0."""
        if t0 == 0 or self.main is None:
            return self.main
        if (t0, scale) not in self._started:
            x0 = self.start * (scale / (1 - t0))
            self._started[(t0, scale)] = path_reference(self.velocity, self.source, x0, self.main.steps, t0=t0,
                                                        **self.options)
        return self._started[(t0, scale)]


def converged_references(run_one: Callable[[OurMethod, int, int], BenchRow], exact: bool, open_grid: bool,
                         log: Callable[[str], None]) -> list[dict]:
    """The converged ODE and SDE references (:data:`REFERENCES`; an exact model converges in fewer steps, a noise
    or score model starts on :data:`~.bench_methods.OPEN_REFERENCE_GRID`), each run by ``run_one(method, steps,
    budget)``: its JSON row without peer and budget, after its ``kind``."""
    references = []
    for kind, (method, steps) in REFERENCES.items():
        steps = EXACT_REFERENCE_STEPS[kind] if exact else steps
        method = replace(method, grid=OPEN_REFERENCE_GRID) if open_grid else method
        with torch.no_grad():
            row = run_one(method, steps, 0)
        references.append({"kind": kind, **{k: v for k, v in row.to_json().items() if k not in ("peer", "budget")}})
        log(f"  reference {kind} {method.name} at {row.nfe} NFE: {short_score(row.primary_score)}")
    return references

