"""lazyflow.runtime: sample pretrained flow models with generated kernels (PyTorch only, no SymPy).

    >>> from lazyflow.runtime import sample, models
    >>> x = sample(models.load("digits"), (16, 1, 8, 8), schedule="pointmass", steps=8)

Names are imported on first use, so that ``lazyflow derive`` starts without loading torch.
"""
from importlib import import_module

_WHERE = {"sample": "sampler", "SamplingError": "errors", "LazyflowError": "errors", "load_schedule": "schedule",
          "Schedule": "schedule", "ScheduleValues": "schedule", "INTEGRATORS": "integrators", "StepInfo": "integrators",
          "guided": "guidance", "make_grid": "grids", "Uniform": "grids", "SourceUniform": "grids", "LogSNR": "grids", "EDM": "grids",
          "LogSNRRange": "grids", "TunedGrid": "gridfile", "load_grid_file": "gridfile", "tune_grid": "tune"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
