"""lazyflow.runtime: sample pretrained flow models with generated kernels (PyTorch only, no SymPy).

    >>> import runtime
    >>> x = runtime.sample(model, (16, 64), schedule="pointmass", steps=8)
"""
from .grids import EDM, LogSNR, SourceUniform, Uniform, make_grid
from .sampler import SamplingError, sample
from .values import ScheduleValues

__all__ = ["sample", "SamplingError", "make_grid", "Uniform", "SourceUniform", "LogSNR", "EDM", "ScheduleValues"]
