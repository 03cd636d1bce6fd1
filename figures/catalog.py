"""Every figure committed in ``figures/``, with the exact settings that drew it: ``lazyflow plot all`` redraws
them all, and tests/test_figures.py checks that the committed PNGs are what it draws.

Each entry is one ``lazyflow plot KIND`` command (its options as the command line spells them, the others at the
defaults :mod:`.kinds` declares for the parser too), drawn by :func:`draw` as the command is, so the command
printed for a figure and the call that draws it come from the same place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..errors import LazyflowError
from . import plots
from .kinds import PLOT_KINDS

__all__ = ["FIGURES_DIR", "BENCH_JSON", "FigureSpec", "CATALOG", "figure_spec", "DRAW", "draw", "draw_figure", "draw_all"]

#: the folder the figures are committed in (this package folder: read, never written by the library)
FIGURES_DIR = Path(__file__).resolve().parent
#: the bench result the quality figure is drawn from
BENCH_JSON = FIGURES_DIR / "bench_digits.json"


@dataclass(frozen=True)
class FigureSpec:
    """One committed figure: its file name, the plot kind and the options of ``lazyflow plot KIND``."""

    file: str
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def argv(self, out: str | Path) -> list[str]:
        """The command line (after ``lazyflow``) that draws this figure into ``out``."""
        flags = [item for name, value in self.options.items() for item in (f"--{name}", value)]
        return ["plot", self.kind, *flags, "--out", str(out)]

    @property
    def command(self) -> str:
        """The command as the docs print it, writing into figures/."""
        return "lazyflow " + " ".join(self.argv(f"figures/{self.file}"))


CATALOG: tuple[FigureSpec, ...] = (
    FigureSpec("schedules.png", "schedules", {"schedules": "linear,vp,pointmass,linear-sde,sd3,score-vp"}),
    FigureSpec("gaussian_drift.png", "drift", {"schedules": "linear,vp,pointmass,linear-sde"}),
    FigureSpec("trajectories_gmm.png", "trajectories", {"data": "gmm", "schedules": "linear,vp,pointmass",
                                                        "steps": "16"}),
    FigureSpec("trajectories_moons.png", "trajectories", {"data": "moons", "schedules": "linear,vp,pointmass",
                                                          "steps": "16"}),
    FigureSpec("digits_grid.png", "samples", {"schedules": "linear,vp,pointmass,linear-sde", "nfe": "2,4,8,16"}),
    FigureSpec("quality_vs_nfe.png", "bench", {"from": "figures/bench_digits.json"}),
    FigureSpec("patches_samples.png", "patches", {"model": "patches", "steps": "32", "integrator": "multistep-pc"}),
)


def figure_spec(file: str) -> FigureSpec:
    """The catalog entry of ``file`` (e.g. ``"schedules.png"``)."""
    for spec in CATALOG:
        if spec.file == file:
            return spec
    raise LazyflowError(f"--only: no committed figure {file!r}; choose from {', '.join(s.file for s in CATALOG)}")


def _names(options: Mapping[str, Any]) -> list[str]:
    return [name.strip() for name in options["schedules"].split(",") if name.strip()]


def _bench(source: str | Path | dict) -> dict:
    return source if isinstance(source, dict) else plots.read_bench_result(source)


#: each plot kind's call, on its options complete and typed (:meth:`.kinds.PlotKind.options`, argparse)
DRAW: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "schedules": lambda o: plots.plot_schedules(_names(o), source=o["source"]),
    "drift": lambda o: plots.plot_drift(_names(o), steps=o["steps"]),
    "trajectories": lambda o: plots.plot_trajectories(_names(o), data=o["data"], steps=o["steps"]),
    "samples": lambda o: plots.plot_samples(_names(o), [int(v) for v in o["nfe"].split(",")], model=o["model"],
                                            integrators=[i.strip() for i in o["integrators"].split(",")]),
    "bench": lambda o: plots.plot_bench(_bench(o["source_json"])),
    "patches": lambda o: plots.plot_patches(model=o["model"], steps=o["steps"], integrator=o["integrator"]),
}


def draw(kind: str, options: Mapping[str, Any]):
    """The figure of ``lazyflow plot KIND`` with ``options`` (every flag of :data:`.kinds.PLOT_KINDS`, typed: the
    parsed command line, or a catalog entry's through :meth:`~.kinds.PlotKind.options`)."""
    return DRAW[kind](options)


def draw_figure(spec: FigureSpec, out_dir: str | Path, bench: str | Path | dict = BENCH_JSON) -> Path:
    """Draw ``spec`` into ``out_dir/spec.file`` (the quality figure from ``bench``: a bench result or its file)."""
    options = PLOT_KINDS[spec.kind].options(spec.options)
    if spec.kind == "bench":
        options["source_json"] = _bench(bench)
    return plots.save_figure(draw(spec.kind, options), Path(out_dir) / spec.file)


def _writable_folder(out_dir: str | Path) -> Path:
    """``out_dir``, made if missing; refused before any drawing when it cannot be written."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LazyflowError(f"--out-dir {out_dir}: cannot make the folder ({err.strerror or err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LazyflowError(f"--out-dir {out_dir}: the folder cannot be written")
    return folder


def draw_all(out_dir: str | Path, only: Iterable[str] | None = None, bench: str | Path = BENCH_JSON,
             log: Callable[[str], None] | None = None) -> list[Path]:
    """Draw every catalog figure (or those named in ``only``) into ``out_dir``; returns the paths written.
    The names, the bench result and the folder are checked before the first figure is drawn."""
    specs = CATALOG if only is None else tuple(figure_spec(name) for name in only)
    result = plots.read_bench_result(bench) if any(spec.kind == "bench" for spec in specs) else None
    folder = _writable_folder(out_dir)
    written = []
    for spec in specs:
        written.append(draw_figure(spec, folder, result if result is not None else bench))
        if log is not None:
            log(f"wrote {written[-1]}  ({spec.command})")
    return written
