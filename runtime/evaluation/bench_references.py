"""What the bench's rows are measured against: x*, the model's own converged ODE solution from the bench's start
noise (:class:`PathReferences`: solved once per bench and per peer start, :mod:`.paths`), and the converged ODE
and SDE references that close the tables (:func:`converged_references`, :data:`REFERENCES`)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from ...predictions import SILENT_AT_SNR_0
from .bench_methods import OPEN_GRID, OPEN_REFERENCE_GRID, OurMethod
from .bench_report import short_score
from .bench_row import BenchRow
from .paths import PATH_REFERENCE_STEPS, PathReference, path_reference

__all__ = ["PathReferences", "converged_references", "open_start_state", "REFERENCES", "EXACT_REFERENCE_STEPS"]

#: the converged references: kind -> (method, steps); the exact models' steps were measured to converge
#: (MixtureScorer metrics unchanged to the printed digits between these and twice as many steps)
REFERENCES = {"ode": (OurMethod("linear", "heun", "uniform"), 250), "sde": (OurMethod("linear-sde", "euler", "uniform"), 1000)}
EXACT_REFERENCE_STEPS = {"ode": 100, "sde": 500}


class PathReferences:
    """x* of the ``velocity`` model on its ``source`` schedule from the bench's ``start`` noise: ``main`` (set by
    :meth:`solve` or read from a cache), and the x* of each peer that starts later (:meth:`from_start`), solved
    once per bench; ``options`` (batch_size, model_kwargs, device) batch and condition them as the rows are."""

    def __init__(self, velocity: Callable, source: Any, start: torch.Tensor, options: dict[str, Any],
                 prediction: str = "velocity"):
        self.velocity, self.source, self.start, self.options = velocity, source, start, options
        self.prediction = prediction
        self.main: PathReference | None = None
        self._started: dict[tuple[float, float], PathReference] = {}
        self._main_start = (0.0, 1.0)

    def solve(self, steps: int = PATH_REFERENCE_STEPS) -> PathReference:
        """x* from the start noise at ``steps`` steps, with its check at half of them (:func:`.paths.path_reference`);
        a trained noise or score model (undefined at snr = 0) from where :data:`~.bench_methods.OPEN_GRID` starts."""
        if self.prediction not in SILENT_AT_SNR_0:
            return path_reference(self.velocity, self.source, self.start, steps, **self.options)
        self._main_start = open_start_state(self.source)
        return path_reference(self.velocity, self.source, self.start, steps, t0=self._main_start[0],
                              prediction=self.prediction, **self.options)

    def from_start(self, t0: float, scale: float) -> PathReference | None:
        """x* of a peer that starts at the source time t0 from scale * x0 (:func:`.peers.peer_start`), with as many
        steps as ``main``: path_reference starts from alpha(t0) x0 (the source's alpha; 1 - t0 on the linear one),
        so its x0 is x0 scale / alpha(t0); ``main`` where that is the bench's own start (alpha(0) x0 at t = 0)."""
        alpha = float(self.source.values(torch.tensor([float(t0)], dtype=torch.float64)).alpha[0])
        if self.main is None or (t0 == 0 and scale == alpha) or (t0, scale) == self._main_start:
            return self.main
        if (t0, scale) not in self._started:
            x0 = self.start * (scale / alpha)
            self._started[(t0, scale)] = path_reference(self.velocity, self.source, x0, self.main.steps, t0=t0,
                                                        prediction=self.prediction, **self.options)
        return self._started[(t0, scale)]


def open_start_state(source: Any, grid: str = OPEN_GRID) -> tuple[float, float]:
    """(t0, alpha(t0)): where a run on the open log-snr ``grid`` starts on ``source`` (its first log snr), and the
    scale of its start state alpha(t0) x0 (in every frame: the frames meet at equal log snr)."""
    from ..core.grids import parse_grid

    t0 = source.time_of_log_snr(torch.tensor([parse_grid(grid).first], dtype=torch.float64))
    return float(t0[0]), float(source.values(t0).alpha[0])


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

