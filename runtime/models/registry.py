"""The registry of model kinds: what ``lazyflow sample --model``/``--model-kind``, ``lazyflow bench`` and
``lazyflow tune-grid`` load, and the one rule for the source schedule and prediction a model runs on.

    >>> from lazyflow.runtime.models.registry import load_model
    >>> loaded = load_model("gmm64", prediction="x")      # an exact mixture answers with its x prediction
    >>> loaded = load_model("gmm:101", dim=64)            # a kind with an argument: NAME:ARGUMENT

A new kind is one :func:`register_model_kind` call (see :class:`~lazyflow.runtime.models.kind.ModelKind`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import LazyflowError
from .builtin import BUILTIN_KINDS, FILE_KIND
from .kind import LoadedModel, ModelKind

__all__ = ["MODEL_KINDS", "register_model_kind", "unregister_model_kind", "model_kind", "model_kind_for",
           "model_names", "load_model", "load_measured", "describe_kinds"]

MODEL_KINDS: dict[str, ModelKind] = {}


def _key(name: str) -> str:
    """A kind's name with case and separators ignored (``SiT-XL-2`` is ``sit-xl/2``)."""
    return re.sub(r"[\s_/-]", "", str(name).lower())


def register_model_kind(kind: ModelKind, *, replace_existing: bool = False) -> ModelKind:
    """Add ``kind`` to :data:`MODEL_KINDS` (read by the CLI's ``sample``, ``bench`` and ``tune-grid``); a name
    already taken (also with other case or separators) is refused unless ``replace_existing``."""
    if not isinstance(kind, ModelKind):
        raise LazyflowError(f"register_model_kind takes a ModelKind, got {type(kind).__name__}")
    taken = [name for name in MODEL_KINDS if _key(name) == _key(kind.name)]
    if taken and not replace_existing:
        raise LazyflowError(f"a model kind named {taken[0]!r} is registered already")
    for name in taken:
        del MODEL_KINDS[name]
    MODEL_KINDS[kind.name] = kind
    return kind


def unregister_model_kind(name: str) -> ModelKind:
    """Remove the kind ``name`` from :data:`MODEL_KINDS` and return it."""
    if name not in MODEL_KINDS:
        raise LazyflowError(f"no model kind {name!r} is registered")
    return MODEL_KINDS.pop(name)


def model_kind(name: str) -> ModelKind:
    """The registered kind ``name`` (case and separators ignored)."""
    found = MODEL_KINDS.get(name) or next((k for k in MODEL_KINDS.values() if _key(k.name) == _key(name)), None)
    if found is None:
        files = [k.name for k in MODEL_KINDS.values() if k.takes_file]
        raise LazyflowError(f"unknown model kind {name!r}; choose one of {', '.join(files)}")
    return found


def model_names() -> list[str]:
    """The models loaded by name (``--model digits``, ``--model gmm:SEED``): the kinds that do not take a file."""
    return [k.usage for k in MODEL_KINDS.values() if not k.takes_file]


def _with_argument(model: str) -> ModelKind | None:
    """The kind with an argument that ``NAME:ARGUMENT`` names (None if ``model`` is not of that form)."""
    name, colon, _ = str(model).partition(":")
    found = MODEL_KINDS.get(name)
    return found if colon and found is not None and found.argument else None


def model_kind_for(model: str, kind: str | None = None) -> ModelKind:
    """The kind that loads ``--model model``: ``kind`` when given (a file of that kind), else the named
    model (``NAME`` or, for a kind with an argument, ``NAME:ARGUMENT``), else a model file (which must exist)."""
    if kind is not None:
        found = model_kind(kind)
        if not found.takes_file:
            raise LazyflowError(f"--model-kind {kind}: {found.name!r} is a model name, not a kind of file; "
                                f"use --model {found.name}")
        return found
    if _with_argument(model) is not None:
        return _with_argument(model)
    if str(model) in MODEL_KINDS and not MODEL_KINDS[str(model)].takes_file:
        found = MODEL_KINDS[str(model)]
        if found.argument:
            raise LazyflowError(f"--model {found.name} takes an argument: --model {found.usage}")
        return found
    if not Path(model).exists():
        raise LazyflowError(f"no model {str(model)!r}: not a model name ({', '.join(model_names())}) "
                            "nor an existing file")
    return MODEL_KINDS[FILE_KIND]


def _flags(options: list[str]) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in options)


def _checked_options(found: ModelKind, options: dict[str, Any], kind_given: bool) -> None:
    """Refuses options the kind does not take, naming them as the command's flags."""
    unknown = [name for name in options if name not in found.options]
    if not unknown:
        return
    if kind_given:
        raise LazyflowError(f"{_flags(unknown)}: not options of model kind {found.name!r} (it takes "
                            f"{_flags(list(found.options)) or 'none'})")
    takers = [k.name for k in MODEL_KINDS.values() if k.takes_file and set(unknown) <= set(k.options)]
    raise LazyflowError(f"{_flags(unknown)} need --model-kind (a kind that takes them: {', '.join(takers) or 'none'})")


def load_model(model: str, *, kind: str | None = None, device: Any = None, num_samples: int = 1,
               source: Any = None, source_params: dict[str, float] | None = None, prediction: str | None = None,
               **options: Any) -> LoadedModel:
    """``model`` (a name, or a file of ``kind``) loaded on ``device``, run on ``source`` (default: the
    schedule the model was trained on; ``source_params`` bind its parameters) with ``prediction``
    (default: the model's own): an exact model answers on them, a trained one is taken at its word.
    ``options`` go to the kind's loader (those it does not name are refused; ``num_samples`` sizes
    per-sample conditioning)."""
    from ..core.sampler import resolve_device
    from ..core.schedule import load_schedule

    found = model_kind_for(model, kind)
    _checked_options(found, options, kind is not None)
    loaded = found.load(str(model), device=resolve_device(device), num_samples=num_samples, **options)
    source = load_schedule(loaded.source if source is None else source, **(source_params or {}))
    return loaded.answering(source, prediction or loaded.prediction)


def load_measured(model: str, prediction: str | None = None) -> tuple[ModelKind, LoadedModel]:
    """A model for a measurement (the bench, tune-grid), with its kind: ``prediction`` picks an exact
    model's output; a trained model predicts what it was trained to."""
    found = model_kind_for(model)
    loaded = load_model(model, prediction=prediction if found.exact else None)
    if not found.exact and prediction not in (None, loaded.prediction):
        exact = [k.name for k in MODEL_KINDS.values() if k.exact and not k.takes_file]
        raise LazyflowError(f"--prediction selects the output of an exact model ({', '.join(exact)}); "
                            f"{model!r} predicts what it was trained to")
    return found, loaded


def describe_kinds(*, files: bool) -> str:
    """``name (description)`` of each kind that takes a file (``files``) or is loaded by name."""
    return "; ".join(f"{k.usage} ({k.description})" for k in MODEL_KINDS.values() if k.takes_file == files)


for _kind in BUILTIN_KINDS:
    register_model_kind(_kind)
del _kind
