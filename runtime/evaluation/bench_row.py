"""One row of a bench, typed: a sampler (ours, a peer's or a baseline) at one NFE budget with each metric under
its own name, and the row of the bench's JSON it is written as.

The JSON format is older than this class and is kept as it is (the committed benches under ``figures/`` are
read by the plots and the tests): there a row's ``"fd"`` holds its *primary* metric, whatever that is (FD for
digits and the mixtures, ``path`` for a model file), beside each metric under its own name; the other keys
follow in the order the row recorded them.  :meth:`BenchRow.to_json` writes that row, :meth:`BenchRow.from_json`
reads it back given the bench's metrics (its ``"metrics"``, the first the primary)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

__all__ = ["BenchRow"]

#: the keys of a JSON row that are fields of the row itself (the rest are metrics or ``details``)
_FIELDS = ("method", "peer", "stochastic", "nfe", "budget", "fd", "seconds", "path_halves", "sample_args", "error",
           "grid", "stats")


@dataclass(frozen=True)
class BenchRow:
    """``method`` (its name in the tables) at ``budget`` network evaluations per sample, of which it made ``nfe``
    (what the call counter saw; nfe <= budget), in ``seconds``; ``scores``: each metric by its own name (None
    where it does not apply, e.g. ``path`` of a stochastic row; empty when the run failed with ``error``),
    ``primary`` the name of the one the tables rank by.  ``path_halves``: ``path`` on each half of the samples
    (a pilot's check); ``sample_args``: the ``lazyflow sample`` flags that reproduce a row of ours bit for bit;
    ``grid``: a peer's own grid; ``stats``: a data-frame row's statistics; ``details``: what else the row
    records (``start``, ``baseline``, ``tuned``, ``choice``, ...), in order."""

    method: str
    peer: bool
    stochastic: bool
    nfe: int
    budget: int
    primary: str
    seconds: float
    scores: Mapping[str, Any] = field(default_factory=dict)
    path_halves: tuple[float, float] | None = None
    sample_args: tuple[str, ...] | None = None
    error: str = ""
    grid: str | None = None
    stats: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def score(self, metric: str) -> Any:
        """The value of ``metric`` (None where the row has none)."""
        return self.scores.get(metric)

    @property
    def primary_score(self) -> Any:
        """The value of the primary metric (the JSON's ``"fd"``)."""
        return self.scores.get(self.primary)

    def with_details(self, **details: Any) -> BenchRow:
        """This row recording ``details`` too (after those it has; a key it has keeps its place)."""
        return replace(self, details={**self.details, **details})

    def to_json(self) -> dict[str, Any]:
        """The row of the bench's JSON: the fields, ``"fd"`` = the primary metric, each metric by its name."""
        row = {"method": self.method, "peer": self.peer, "stochastic": self.stochastic, "nfe": self.nfe,
               "budget": self.budget, "fd": self.primary_score, "seconds": self.seconds}
        for key, value in self.scores.items():
            row.setdefault(key, value)
        optional = {"path_halves": None if self.path_halves is None else list(self.path_halves),
                    "sample_args": None if self.sample_args is None else list(self.sample_args),
                    "error": self.error or None, "grid": self.grid, "stats": self.stats}
        row.update({key: value for key, value in optional.items() if value is not None})
        row.update(self.details)
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any], metrics: Sequence[str]) -> BenchRow:
        """The row of a bench's JSON whose ``"metrics"`` are ``metrics`` (the first is the primary)."""
        halves, args = row.get("path_halves"), row.get("sample_args")
        return cls(method=row["method"], peer=row["peer"], stochastic=row["stochastic"], nfe=row["nfe"],
                   budget=row["budget"], primary=metrics[0], seconds=row["seconds"],
                   scores={key: value for key, value in row.items() if key in metrics},
                   path_halves=None if halves is None else tuple(halves),
                   sample_args=None if args is None else tuple(args), error=row.get("error", ""),
                   grid=row.get("grid"), stats=row.get("stats"),
                   details={key: value for key, value in row.items() if key not in _FIELDS and key not in metrics})
