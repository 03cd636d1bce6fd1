"""How the bench scores each model kind: a table kind name -> (scorer factory, metrics), attached here in
the evaluation layer so that the models never import it (layers: core -> models -> evaluation).

A kind's own ``ModelKind.scorer`` (with its ``metrics``), where set, overrides the table: that is how a
kind registered by a user (see ``tests/test_registries.py``) is measured.  Every model is also measured
by :data:`PATH_METRIC` (the pathwise error of deterministic samplers, :mod:`.paths`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..models.builtin import DIGITS_SHAPE, DISCRETE_MIXTURE_KIND, FILE_KIND
from ..models.gmm import NAMES as MIXTURE_NAMES
from ..models.gmm import RANDOM_KIND
from ..models.kind import LoadedModel, ModelKind, Scorer

#: the samples the patches measure (pixel FD against held-out photo patches, :mod:`.patch_metrics`) takes
PATCHES_SHAPE = (1, 32, 32)

__all__ = ["DigitsScorer", "PATCHES_SHAPE", "ScorerEntry", "SCORERS", "PATH_METRIC", "scorer_factory", "kind_metrics"]

#: the metric every bench row of a deterministic sampler carries (None for stochastic ones)
PATH_METRIC = "path"


class DigitsScorer:
    """Fréchet distance in the digits classifier's features (the embedded digits model's measure)."""

    metrics = ("fd",)

    def score(self, samples) -> dict[str, float]:
        from .metrics import digits_fd

        return {"fd": digits_fd(samples)}

    def floor_fields(self, n: int, seed: int) -> dict[str, float]:
        """The FD of two halves of the digits dataset, and of n images drawn from the dataset itself."""
        from .metrics import bootstrap_floor, split_floor

        return {"floor_split_fd": split_floor(), "floor_bootstrap_fd": bootstrap_floor(n, seed)}


def _digits(loaded: LoadedModel, n: int) -> Scorer | None:
    return DigitsScorer() if loaded.data_shape == DIGITS_SHAPE else None


def _patches(loaded: LoadedModel, n: int) -> Scorer | None:
    from .patch_metrics import PatchesScorer

    return PatchesScorer() if loaded.data_shape == PATCHES_SHAPE else None


def _by_shape(loaded: LoadedModel, n: int) -> Scorer | None:
    """A model file: the digits' measure for (1, 8, 8) samples, the patches' for (1, 32, 32)."""
    return _digits(loaded, n) or _patches(loaded, n)


def _mixture(loaded: LoadedModel, n: int) -> Scorer:
    from .gmm_metrics import MixtureScorer

    return MixtureScorer(loaded.model, n)


@dataclass(frozen=True)
class ScorerEntry:
    """``factory(loaded, n)`` -> a scorer (None where the loaded model cannot be scored) and its ``metrics``
    (the first is the primary)."""

    factory: Callable[[LoadedModel, int], Scorer | None]
    metrics: tuple[str, ...]


_MIXTURE_METRICS = ("fd", "sw", "weight_tv", "nll_gap")

#: the built-in kinds' scorers, by kind name
SCORERS: dict[str, ScorerEntry] = {
    "digits": ScorerEntry(_digits, ("fd",)),
    "patches": ScorerEntry(_patches, ("fd",)),
    FILE_KIND: ScorerEntry(_by_shape, ("fd",)),    # a digits or patches model file
    **{name: ScorerEntry(_mixture, _MIXTURE_METRICS) for name in (*MIXTURE_NAMES, RANDOM_KIND, DISCRETE_MIXTURE_KIND)},
}


def scorer_factory(kind: ModelKind) -> Callable[[LoadedModel, int], Scorer | None] | None:
    """The kind's own scorer if it sets one, else the table's (None: the bench does not measure it)."""
    if kind.scorer is not None:
        return kind.scorer
    entry = SCORERS.get(kind.name)
    return None if entry is None else entry.factory


def kind_metrics(kind: ModelKind) -> tuple[str, ...]:
    """The metrics the bench measures ``kind`` by: its scorer's (the first is the primary), then
    :data:`PATH_METRIC`; () where nothing scores it."""
    if kind.scorer is not None:
        return (*kind.metrics, PATH_METRIC)
    entry = SCORERS.get(kind.name)
    return () if entry is None else (*entry.metrics, PATH_METRIC)
