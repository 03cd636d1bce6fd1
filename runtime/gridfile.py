"""Tuned time grids as small JSON files (``lazyflow tune-grid`` writes them; ``sample(grid=...)``,
``lazyflow sample --grid FILE.json``, the bench's ``--grid-file`` and the diffusers scheduler read them).

A file holds the ``steps + 1`` times of one grid in the target schedule's own time (noise at 0, data
at 1), the schedule they are times of (``Schedule.describe()``) and what they were tuned for: model,
source, prediction, integrator, final step, NFE, the tuning seed and sample count, the losses before and
after, and the tuning cost.  Only ``times`` and ``schedule`` change how a run goes; the rest documents.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import LazyflowError

__all__ = ["TunedGrid", "load_grid_file", "save_grid_file", "FORMAT"]

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
    tuning: dict[str, Any] = field(default_factory=dict)
    path: str = field(default="", compare=False)

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    def describe(self) -> str:
        return (f"tuned grid {self.path or '(in memory)'}: {self.steps} steps of {self.schedule} for {self.integrator} "
                f"at {self.nfe} NFE on {self.model}")

    def to_json(self) -> dict[str, Any]:
        data = {"format": FORMAT, **asdict(self)}
        data.pop("path")
        data["times"] = list(self.times)
        return data


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
    return TunedGrid(times=times, schedule=data["schedule"], path=where if where != "(object)" else "", **rest)


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
    """Write ``grid`` as JSON (one small file) and return its path."""
    path = Path(path)
    if path.suffix != ".json":
        raise LazyflowError(f"a grid file ends in .json, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(grid.to_json(), indent=1) + "\n")
    return path
