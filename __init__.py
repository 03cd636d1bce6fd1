"""lazyflow: sample pretrained flow and diffusion models in fewer steps, in a lazy schedule.

    >>> from lazyflow import sample, load_schedule
    >>> from lazyflow.runtime import models
    >>> x = sample(models.load("digits"), (16, 1, 8, 8), schedule="pointmass", steps=8, integrator="multistep-pc")

Layers, each importing only the ones below it: ``lazyflow.derive`` (SymPy: formulas and code
generation) -> ``lazyflow.runtime`` (PyTorch: kernels, sampler) -> ``lazyflow.figures`` (plots) ->
``lazyflow.cli`` (the command-line shell).  Names here are imported on first use, so that
``import lazyflow`` loads neither SymPy nor torch.
"""
import sys
import types
from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "sample": "runtime.core.sampler", "sample_batches": "runtime.core.sampler", "SampleOptions": "runtime.core.options",
    "load_schedule": "runtime.core.schedule", "Schedule": "runtime.core.schedule",
    "ScheduleValues": "runtime.core.schedule", "SamplingError": "errors", "LazyflowError": "errors",
    "INTEGRATORS": "runtime.core.integrators", "StepInfo": "runtime.core.plan", "DataStats": "runtime.core.data_stats",
    "ConditionalStats": "runtime.core.data_stats", "stats_from_model": "runtime.core.model_stats",
    "discrete_schedule": "runtime.core.discrete_schedule", "schedule_of_config": "runtime.core.discrete_schedule",
}
__all__ = ["__version__", "derive", "runtime", "figures", *_WHERE]


def __getattr__(name: str):
    if name in ("derive", "runtime", "figures", "cli"):
        return import_module(f"{__name__}.{name}")
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _Alias(types.ModuleType):
    """A module whose names come, on first use, from another one: ``lazyflow.diffusers`` is
    ``lazyflow.runtime.integrations.diffusers`` (a folder named ``diffusers`` would shadow the real package for
    anyone running from the repository root)."""

    def __init__(self, name: str, target: str):
        super().__init__(name, f"Alias of {target}.")
        self.__target = target

    def __getattr__(self, attr: str):
        if attr.startswith("__"):   # tools that scan sys.modules (inspect, pickle) must not trigger the import
            raise AttributeError(attr)
        return getattr(import_module(self.__target), attr)

    def __dir__(self) -> list[str]:
        return dir(import_module(self.__target))


sys.modules.setdefault(f"{__name__}.diffusers", _Alias(f"{__name__}.diffusers", f"{__name__}.runtime.integrations.diffusers"))
sys.modules.setdefault(f"{__name__}.k_diffusion", _Alias(f"{__name__}.k_diffusion", f"{__name__}.runtime.integrations.k_diffusion_samplers"))
