"""lazyflow.runtime: sample pretrained flow models with generated kernels (PyTorch only, no SymPy).

    >>> import runtime
    >>> x = runtime.sample(model, (16, 64), schedule="pointmass", steps=8)

Names are imported on first use, so that ``lazyflow derive`` starts without loading torch.
"""
from importlib import import_module

__all__ = ["sample", "SamplingError", "make_grid", "Uniform", "SourceUniform", "LogSNR", "EDM", "ScheduleValues"]

_WHERE = {"sample": "sampler", "SamplingError": "tables", "make_grid": "grids", "Uniform": "grids",
          "SourceUniform": "grids", "LogSNR": "grids", "EDM": "grids", "ScheduleValues": "values"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
