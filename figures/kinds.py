"""The kinds of ``lazyflow plot``, each declared once: its help, its flags with their defaults and types.  The
command's parser is built from them (:mod:`lazyflow.parsers`) and :mod:`.catalog` fills a committed figure's
options from them, so the command line and ``lazyflow plot all`` draw with the same defaults
(:func:`.catalog.draw` calls the plot).  Imports nothing heavy: building the parser loads neither matplotlib nor
torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["Flag", "PlotKind", "PLOT_KINDS", "SCHEDULES"]


@dataclass(frozen=True)
class Flag:
    """One flag of a plot kind: ``--name`` (its value in ``dest``, default the name with ``_``), its default and type."""

    name: str
    default: Any = None
    type: Callable[[str], Any] = str
    help: str | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    dest: str = ""

    @property
    def key(self) -> str:
        """Where argparse puts its value."""
        return self.dest or self.name.replace("-", "_")


#: the flag of the kinds that draw several schedules (``--schedules``, or one given by the schedule flags)
SCHEDULES = Flag("schedules", "linear,vp,pointmass", help="comma-separated presets, .toml or kernel .py files")


@dataclass(frozen=True)
class PlotKind:
    """``lazyflow plot NAME``: its ``help`` and ``flags``; ``schedules``: it also takes :data:`SCHEDULES` and the
    schedule flags."""

    name: str
    help: str
    flags: tuple[Flag, ...] = ()
    schedules: bool = True

    @property
    def all_flags(self) -> tuple[Flag, ...]:
        return ((SCHEDULES,) if self.schedules else ()) + self.flags

    def options(self, given: Mapping[str, str]) -> dict[str, Any]:
        """``given`` (flag names as the command line spells them, values as text) typed as the parser types them,
        every other flag at its default."""
        flags = {f.name: f for f in self.all_flags}
        unknown = sorted(set(given) - set(flags))
        if unknown:
            raise ValueError(f"plot {self.name}: no flag {', '.join(unknown)}")
        return {f.key: f.type(given[f.name]) if f.name in given else f.default for f in flags.values()}


PLOT_KINDS: dict[str, PlotKind] = {kind.name: kind for kind in (
    PlotKind("schedules", "alpha, beta, log snr, sigma, eps*, time map, scale", (Flag("source", "linear"),)),
    PlotKind("drift", "Gaussian drift and drift norm along 2D paths", (Flag("steps", 64, int),)),
    PlotKind("trajectories", "2D sample paths side by side",
             (Flag("data", "gmm", choices=("gmm", "moons")), Flag("steps", 16, int))),
    PlotKind("samples", "digit grids: rows schedule/integrator, columns NFE",
             (Flag("model", "digits"), Flag("nfe", "2,4,8,16"), Flag("integrators", "euler,multistep-pc"))),
    PlotKind("patches", "samples of the photo-patch model beside held-out patches (needs scikit-image)",
             (Flag("model", "patches"), Flag("steps", 32, int), Flag("integrator", "multistep-pc")), schedules=False),
    PlotKind("bench", "quality against NFE from a bench JSON",
             (Flag("from", dest="source_json", required=True, help="JSON written by lazyflow bench --save"),),
             schedules=False),
)}
