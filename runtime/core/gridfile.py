"""Tuned time grids as small JSON files (``lazyflow tune-grid`` writes them; ``sample(grid=...)``,
``lazyflow sample --grid FILE.json``, the bench's ``--grid-file`` and the diffusers scheduler read them).

A file holds the ``steps + 1`` times of one grid in the target schedule's own time (noise at 0, data
at 1), the schedule they are times of (``Schedule.describe()``) and what they were tuned for: model,
source, prediction, integrator, final step, NFE, the tuning seed and sample count, the losses before and
after, and the tuning cost.  Only ``times``, ``schedule`` and ``diffusion_scale`` change how a run goes; the
rest documents.  ``diffusion_scale`` (lambda in sigma = lambda * sigma, ``tune-grid --diffusion-scale``) is also
in the schedule string (``linear-sde(diffusion*0.25)``); a file whose two disagree is refused, and an older file
without the field takes it from its schedule string.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...atomic_write import write_text_atomic
from ...errors import LazyflowError

if TYPE_CHECKING:
    from .schedule import Schedule

__all__ = ["TunedGrid", "is_grid_file", "load_grid_file", "save_grid_file", "FORMAT"]

#: the ``format`` field of a grid file
FORMAT = "lazyflow-grid/1"


@dataclass(frozen=True)
class TunedGrid:
    """One tuned grid: ``times`` (t_0 < ... < t_N = 1 of ``schedule``) and how it was obtained."""

    times: tuple[float, ...]
    schedule: str
    integrator: str = ""
    final_step: str = "euler"
    model: str = ""
    source: str = ""
    prediction: str = "velocity"
    nfe: int = 0
    diffusion_scale: float = 1.0
    tuning: dict[str, Any] = field(default_factory=dict)
    #: a bespoke solver's weights (:mod:`.bespoke`): per call k, a_k and the row w_k0 ... w_kk; empty for a grid
    x0_weights: tuple[float, ...] = ()
    call_weights: tuple[tuple[float, ...], ...] = ()
    path: str = field(default="", compare=False)

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    @property
    def base_schedule(self) -> str:
        """The schedule string without its diffusion scale (``linear-sde(diffusion*0.25)`` -> ``linear-sde``)."""
        return _base_and_scale(self.schedule)[0]

    def schedule_for(self, target: "Schedule", *, scale_given: bool) -> "Schedule":
        """The schedule a run on this grid integrates in: ``target`` at the diffusion scale the grid was
        tuned at, unless the caller gave a scale of its own (``scale_given``); refused when the grid's
        times are not times of that schedule.  The one rule for ``sample``, the CLI, the scheduler and
        the bench."""
        if not scale_given and self.diffusion_scale != 1 and self.base_schedule == target.describe():
            target = target.with_diffusion_scale(self.diffusion_scale)
        if self.schedule != target.describe():
            raise LazyflowError(f"{self.describe()}: its times are times of {self.schedule}, not of "
                                f"{target.describe()}; sample with schedule {self.schedule!r} or tune a grid for it")
        return target

    def describe(self) -> str:
        return (f"tuned grid {self.path or '(in memory)'}: {self.steps} steps of {self.schedule} for {self.integrator} "
                f"at {self.nfe} NFE on {self.model}")

    def to_json(self) -> dict[str, Any]:
        data = {"format": FORMAT, **asdict(self)}
        data.pop("path")
        data["times"] = list(self.times)
        if not self.x0_weights:
            data.pop("x0_weights"), data.pop("call_weights")
        else:
            data["x0_weights"], data["call_weights"] = list(self.x0_weights), [list(r) for r in self.call_weights]
        return data


_SCALE = re.compile(r"(?:, )?diffusion\*([^,)]+)")


def _base_and_scale(schedule: str) -> tuple[str, float | None]:
    """``schedule`` without its ``diffusion*X`` part, and X (None when it has none)."""
    found = _SCALE.search(schedule)
    if not found:
        return schedule, None
    base = schedule[:found.start()] + schedule[found.end():]
    base = base.replace("(, ", "(").replace("()", "")
    try:
        return base, float(found.group(1))
    except ValueError:
        return base, math.nan


def _fail(where: str, what: str) -> LazyflowError:
    return LazyflowError(f"grid file {where}: {what}")


def from_json(data: Any, where: str = "(object)") -> TunedGrid:
    """Check a parsed grid file and build its :class:`TunedGrid` (every problem is a LazyflowError)."""
    if not isinstance(data, dict):
        raise _fail(where, f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise _fail(where, f"format must be {FORMAT!r} (written by lazyflow tune-grid), got {data.get('format')!r}")
    for key in ("times", "schedule"):
        if key not in data:
            raise _fail(where, f"missing field {key!r}")
    times = data["times"]
    if not isinstance(times, list) or len(times) < 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in times):
        raise _fail(where, f"'times' must be a list of at least two numbers, got {times!r}")
    times = tuple(float(v) for v in times)
    if not all(math.isfinite(v) for v in times):
        raise _fail(where, "'times' must be finite")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise _fail(where, f"'times' must be strictly increasing, got {list(times)}")
    if times[0] < 0 or times[-1] != 1.0:
        raise _fail(where, f"'times' must start at or after 0 and end at 1, got [{times[0]}, ..., {times[-1]}]")
    if not isinstance(data["schedule"], str) or not data["schedule"]:
        raise _fail(where, "'schedule' must be the name of the schedule the times belong to")
    known = {f for f in TunedGrid.__dataclass_fields__ if f != "path"} | {"format"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(unknown)}")
    rest = {k: data[k] for k in known - {"format", "times", "schedule"} if k in data}
    nfe = rest.get("nfe", 0)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 0:
        raise _fail(where, f"'nfe' must be a non-negative integer, got {nfe!r}")
    if not isinstance(rest.get("tuning", {}), dict):
        raise _fail(where, "'tuning' must be an object")
    in_name = _base_and_scale(data["schedule"])[1]
    scale = rest.get("diffusion_scale", 1.0 if in_name is None else in_name)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise _fail(where, f"'diffusion_scale' must be a finite number >= 0, got {scale!r}")
    if f"{float(scale):g}" != (f"{in_name:g}" if in_name is not None else "1"):
        raise _fail(where, f"'diffusion_scale' {scale!r} disagrees with the schedule {data['schedule']!r} "
                           "(its diffusion*X part, none meaning 1)")
    rest["diffusion_scale"] = float(scale)
    rest.update(_solver_weights(data, len(times) - 1, where))
    return TunedGrid(times=times, schedule=data["schedule"], path=where if where != "(object)" else "", **rest)


def is_grid_file(grid: Any) -> bool:
    """Whether ``grid`` is a tuned grid or names its file (a path, or text ending in ``.json``): the one test
    every entry point uses."""
    return isinstance(grid, (TunedGrid, os.PathLike)) or (isinstance(grid, str) and grid.strip().endswith(".json"))


def load_grid_file(grid: str | os.PathLike | TunedGrid | dict) -> TunedGrid:
    """A :class:`TunedGrid` from a path, a parsed JSON dict or a TunedGrid (returned as is)."""
    if isinstance(grid, TunedGrid):
        return grid
    if isinstance(grid, dict):
        return from_json(grid)
    path = Path(grid)
    if not path.is_file():
        raise LazyflowError(f"grid file {str(path)!r} does not exist (lazyflow tune-grid writes one)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(str(path), f"not readable as JSON ({err})") from None
    return from_json(data, str(path))


def save_grid_file(grid: TunedGrid, path: str | os.PathLike) -> Path:
    """Write ``grid`` as JSON (one small file, atomically) and return its path."""
    path = Path(path)
    if path.suffix != ".json":
        raise LazyflowError(f"a grid file ends in .json, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(grid.to_json(), indent=1) + "\n")


def _solver_weights(data: dict, steps: int, where: str) -> dict[str, tuple]:
    """A bespoke solver's ``x0_weights`` (one per call) and ``call_weights`` (row k: k + 1 finite numbers),
    both or neither."""
    if "x0_weights" not in data and "call_weights" not in data:
        return {}
    a, w = data.get("x0_weights"), data.get("call_weights")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not (isinstance(a, list) and len(a) == steps and all(map(number, a))):
        raise _fail(where, f"'x0_weights' must be {steps} finite numbers (one per call)")
    if not (isinstance(w, list) and len(w) == steps and all(
            isinstance(row, list) and len(row) == k + 1 and all(map(number, row)) for k, row in enumerate(w))):
        raise _fail(where, f"'call_weights' must be {steps} rows, row k of k + 1 finite numbers")
    return {"x0_weights": tuple(float(v) for v in a), "call_weights": tuple(tuple(float(v) for v in row) for row in w)}
