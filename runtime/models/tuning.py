"""A grid tuned for a registered model and saved as a file: what ``lazyflow tune-grid`` runs (the tuning
itself is :func:`lazyflow.runtime.evaluation.tune.tune_grid`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...errors import LazyflowError
from ..core.gridfile import TunedGrid
from .registry import load_measured

__all__ = ["tune_grid_file"]


def tune_grid_file(model: str, out: str | Path, *, schedule: Any, prediction: str | None = None,
                   log: Callable[[str], None] | None = None, **tuning: Any) -> tuple[Path, TunedGrid]:
    """Tune a grid for ``model`` (from the model registry; ``prediction`` picks an exact model's output) in
    ``schedule`` and write it to ``out`` (a ``.json`` file, refused before any work otherwise); ``tuning``
    are the settings of :func:`~lazyflow.runtime.evaluation.tune.tune_grid` (integrator, nfe, init, ...)."""
    from ..core.gridfile import save_grid_file
    from ..evaluation.tune import tune_grid

    if not str(out).endswith(".json"):
        raise LazyflowError(f"--out must end in .json, got {str(out)!r}")
    loaded = load_measured(model, prediction)[1]
    grid = tune_grid(loaded.model, model_name=model, schedule=schedule, source=loaded.source,
                     prediction=loaded.prediction, log=log, **tuning)
    return save_grid_file(grid, out), grid
