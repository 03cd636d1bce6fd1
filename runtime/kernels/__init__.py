"""Generated kernels, one module per (target schedule, source schedule); see ``lazyflow emit``.

Every module here is written by ``derive.codegen`` and carries the command that regenerates it.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__all__ = ["load", "available", "REQUIRED"]

#: names every kernel module defines
REQUIRED = ("NAME", "SOURCE", "STOCHASTIC", "POINT_MASS", "SINGULAR_START", "schedule", "log_snr",
            "source_schedule", "source_log_snr", "drift", "ode_drift", "time_map", "scale", "exponential",
            "ode_exponential", "EXPONENTIAL")


def available() -> list[str]:
    """Names of the kernel modules shipped in this folder."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def load(schedule: str | ModuleType) -> ModuleType:
    """A kernel module by schedule name (``linear-sde`` and ``linear_sde`` both work) or as given."""
    if isinstance(schedule, ModuleType):
        module = schedule
    elif isinstance(schedule, str):
        name = schedule.strip().replace("-", "_").lower()
        if name not in available():
            raise ValueError(f"unknown schedule {schedule!r}: no kernel runtime/kernels/{name}.py; "
                             f"available: {', '.join(available())} (make one with `lazyflow emit`)")
        module = importlib.import_module(f"{__name__}.{name}")
    else:
        raise TypeError(f"schedule must be a kernel name or module, got {type(schedule).__name__}")
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise ValueError(f"module {module.__name__} is not a lazyflow kernel: it lacks {', '.join(missing)}")
    return module
