"""What a kind of model is (:class:`ModelKind`: how it loads, what the bench needs of it) and what a loaded
model brings to a run (:class:`LoadedModel`).  The registry of kinds is :mod:`lazyflow.runtime.models.registry`."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

from ...errors import LazyflowError

__all__ = ["ModelKind", "LoadedModel", "Scorer", "data_shape_option"]


def data_shape_option(shape: str | Sequence[int] | None, flag: str | None = "--shape") -> tuple[int, ...] | None:
    """``"4,32,32"`` (or a sequence of integers) as a data shape of positive integers; None stays None.  The one
    reading of ``--shape``: the command line's type for the flag (``flag=None``: argparse names it) and the
    loaders' for a shape given in Python; anything else is refused in one line, prefixed with ``flag``."""
    if shape is None:
        return None
    try:
        values = tuple(int(v) for v in (shape.split(",") if isinstance(shape, str) else shape))
    except (TypeError, ValueError):
        values = ()
    if not values or min(values) < 1:
        raise LazyflowError(f"{flag + ': ' if flag else ''}cannot read {shape!r} as a data shape: comma-separated "
                            "positive integers, e.g. 1,8,8")
    return values


class Scorer(Protocol):
    """The bench's measure of a model's samples: ``metrics`` (the first is the primary) and ``score``.
    An exact kind's scorer also has ``floors(n, seed)`` (the metrics of n exact samples) and ``describe()``;
    a trained kind's has ``floor_fields(n, seed)`` (the result fields that give its floors)."""

    metrics: tuple[str, ...]

    def score(self, samples: Any) -> dict[str, float]: ...


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model ready for ``sample``: ``model(x, t, **model_kwargs)`` trained on ``source`` (a schedule
    name or :class:`~lazyflow.runtime.core.schedule.Schedule`) and returning ``prediction``.

    ``data_shape`` is None where the model does not record it; ``metadata`` is what the model file says
    of itself; ``note`` is what a run's printed line adds (e.g. the guidance).  ``view(source,
    prediction)``, for an exact model, returns the same model answering on another source schedule and
    prediction.  ``decode_images`` (latents to uint8 images (n, H, W, 3)) and ``decoder`` (its name, for
    the printed line) are set where the samples can be shown as images beside them.  ``diffusion`` is set for a
    network trained on a discrete diffusion schedule: the network as diffusers calls it, with its scheduler
    config (:class:`~lazyflow.runtime.models.diffusion_net.DiffusionNetwork`; the bench runs its peers on it),
    while ``model`` is it converted to the runtime's time on ``source``, its discrete schedule."""

    kind: str
    model: Callable[..., Any]
    data_shape: tuple[int, ...] | None
    source: Any = "linear"
    prediction: str = "velocity"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    view: Callable[[Any, str], Callable[..., Any]] | None = None
    decode_images: Callable[[Any], Any] | None = None
    decoder: str = ""
    diffusion: Any = None

    def answering(self, source: Any, prediction: str) -> "LoadedModel":
        """This model run on ``source`` with ``prediction``: an exact model (``view``) answers on them; a
        trained network is taken at its word (the sampler reads its output so)."""
        model = self.model if self.view is None else self.view(source, prediction)
        return replace(self, model=model, source=source, prediction=prediction)


@dataclass(frozen=True, kw_only=True)
class ModelKind:
    """One kind of model that ``lazyflow sample --model``/``--model-kind``, the bench and tune-grid load.

    ``load(spec, *, device, num_samples, **options)`` returns a :class:`LoadedModel`: ``spec`` is the
    kind's own name, ``NAME:ARGUMENT`` for a kind with an ``argument`` (e.g. ``gmm:101``; ``argument``
    says what follows the colon, e.g. ``SEED``), or the path of a file when ``takes_file`` (chosen with
    ``--model-kind``); ``device`` and ``num_samples`` are given to every loader, the other ``options``
    only when asked for and only those named in ``options`` (others are refused).  ``latents``: the
    samples are latents, never written as a ``.png``.  ``exact`` marks a model whose samples are exact
    (the bench measures floors from its exact samples and lets ``--prediction`` pick its output).

    The bench's measure of the samples is attached in the evaluation layer (a table kind name -> scorer
    there, :mod:`lazyflow.runtime.evaluation.scorers`), so models never import evaluation.  ``scorer``
    (``scorer(loaded, n)`` returns a :class:`Scorer`, or None where the loaded model cannot be scored)
    and its ``metrics`` are an optional override for a kind the table does not know, e.g. one
    registered by a user."""

    name: str
    description: str
    load: Callable[..., LoadedModel] = field(repr=False)
    options: tuple[str, ...] = ()
    argument: str = ""
    takes_file: bool = False
    latents: bool = False
    exact: bool = False
    scorer: Callable[[LoadedModel, int], Scorer | None] | None = field(default=None, repr=False)
    metrics: tuple[str, ...] = ()

    @property
    def usage(self) -> str:
        """How ``--model`` names this kind: ``NAME`` or ``NAME:ARGUMENT``."""
        return f"{self.name}:{self.argument}" if self.argument else self.name
