"""lazyflow.runtime: sample pretrained flow models with generated kernels (PyTorch only, no SymPy).

    >>> from lazyflow.runtime import sample, models
    >>> x = sample(models.load("digits"), (16, 1, 8, 8), schedule="pointmass", steps=8)

Subpackages by concern: ``core`` (schedules, frames, integrators, grids, noise, the sampling loop),
``models`` (embedded models, SiT, exact mixtures, training, guidance, adapters), ``evaluation`` (benches,
metrics, peers, grid tuning), ``integrations`` (diffusers).  Names are imported on first use, so that
``lazyflow derive`` starts without loading torch.
"""
from importlib import import_module

_WHERE = {"sample": ".core.sampler", "sample_batches": ".core.sampler", "SamplingError": "..errors",
          "LazyflowError": "..errors", "load_schedule": ".core.schedule", "Schedule": ".core.schedule",
          "ScheduleValues": ".core.schedule", "INTEGRATORS": ".core.integrators", "StepInfo": ".core.plan",
          "DataStats": ".core.data_stats",
          "discrete_schedule": ".core.discrete_schedule", "schedule_of_config": ".core.discrete_schedule",
          "guided": ".models.guidance", "make_grid": ".core.grids", "Uniform": ".core.grids",
          "SourceUniform": ".core.grids", "LogSNR": ".core.grids", "EDM": ".core.grids", "LogSNRRange": ".core.grids",
          "TunedGrid": ".core.gridfile", "load_grid_file": ".core.gridfile", "tune_grid": ".evaluation.tune"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
