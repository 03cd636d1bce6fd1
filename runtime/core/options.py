"""The options of a sampling run, declared once: :class:`SampleOptions` (a field, its default, its type and one
line of doc each).  :func:`~lazyflow.runtime.core.sampler.sample`, ``sample_batches``, ``SamplingRun.prepare``,
:func:`~lazyflow.runtime.models.sampling.sample_to_file` and ``lazyflow sample`` all read them from here, so a new
option is one field here plus its use.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Callable

import torch

from ...errors import LazyflowError
from . import defaults

if TYPE_CHECKING:
    from .data_stats import ConditionalStats, DataStats
    from .grids import GridSpec
    from .noise import NoiseSource
    from .plan import Callback, Integrator

__all__ = ["SampleOptions", "option_names"]


@dataclass(frozen=True, kw_only=True)
class SampleOptions:
    """Every option of :func:`~lazyflow.runtime.core.sampler.sample` with its default (``sample(model, shape,
    steps=8, ...)`` takes each by keyword; ``SampleOptions.of(**given)`` builds one and refuses an unknown name)."""

    schedule: Any = defaults.SCHEDULE
    """the schedule integrated in (default linear): what :func:`~lazyflow.load_schedule` resolves (a name, a Schedule)"""
    source: Any = "linear"
    """the schedule the model was trained on"""
    steps: int | None = None
    """steps of the grid (None: a tuned grid file's or explicit times' own, else 8, :data:`~.defaults.STEPS`)"""
    integrator: str | Integrator = defaults.INTEGRATOR
    """a registered integrator's name (default multistep-pc; :data:`~lazyflow.INTEGRATORS`) or an Integrator"""
    final_step: str | None = None
    """how a grid ends (None: euler, and a grid must end at t = 1; "denoise" returns eta_X at its last time)"""
    grid: GridSpec = defaults.GRID
    """a grid name or spec text (default uniform), a tuned grid or solver file (str or Path), a grid object or times"""
    prediction: str = "velocity"
    """what the model returns: velocity, x, noise or score"""
    data_stats: DataStats | ConditionalStats | Any = None
    """the data's statistics for the ``data-*`` integrators (or their file); None: N(E[X | c], I)"""
    seed: int = 0
    """the noise seed: sample i depends only on (seed, i)"""
    batch_size: int | None = None
    """samples per batch (None: all at once)"""
    device: torch.device | str | None = None
    """where the run goes (None: cpu)"""
    dtype: torch.dtype | str = torch.float32
    """the state's dtype (a half dtype: a half model with a float32 state)"""
    model_dtype: torch.dtype | str | None = None
    """the dtype the model is called in (None: its parameters' dtype, else ``dtype``)"""
    compile: bool = False
    """torch.compile each step's noise draw and updates"""
    model_kwargs: dict[str, Any] | None = None
    """keyword arguments of every model call (tensors of first dimension n follow their samples)"""
    initial: torch.Tensor | None = None
    """the start state instead of the seed's noise, of the samples' shape"""
    callback: Callback | None = None
    """called with a StepInfo at every step"""
    progress: bool = False
    """show a progress bar"""
    noise: Callable[..., NoiseSource] | None = None
    """a noise factory replacing CounterNormal"""
    distributed: Any = False
    """True or a process group: this rank runs its share of the samples"""
    capture: bool = False
    """record the loop as a CUDA graph and replay it (CUDA only)"""

    @classmethod
    def of(cls, base: "SampleOptions | None" = None, /, **given: Any) -> "SampleOptions":
        """``base`` (default: every default) with the ``given`` options; an unknown name is refused in one line."""
        unknown = sorted(set(given) - set(option_names()))
        if unknown:
            raise LazyflowError(f"unknown option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                                f"the options are {', '.join(option_names())}")
        return replace(base or cls(), **given)


def option_names() -> tuple[str, ...]:
    """The names of :class:`SampleOptions`' fields, in order."""
    return tuple(f.name for f in fields(SampleOptions))
