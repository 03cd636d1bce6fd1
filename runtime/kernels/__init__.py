"""Generated kernels: one module per schedule, written by ``lazyflow emit`` (``lazyflow.derive.codegen``).

The modules in this folder are the shipped presets; never edit them by hand (each header says how
to regenerate it, and ``tests/test_codegen.py`` fails on any difference).  A kernel holds one
schedule's closed forms with its parameters as keyword arguments; the runtime composes the
conversion between a model's source schedule and the sampling schedule from two kernels
(derive/MATH.md §3).  Every module is checked against :class:`Kernel` when it loads.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Protocol, get_type_hints

from ...errors import LazyflowError

__all__ = ["Kernel", "KernelError", "FORMAT", "shipped", "load_shipped", "load_file", "check"]

#: the kernel format this runtime reads (the generator writes it as ``FORMAT``)
FORMAT = 2


class KernelError(LazyflowError):
    """A module that is not a usable lazyflow kernel; the message lists what is missing or wrong."""


class Kernel(Protocol):
    """What a generated kernel module defines.  Every function takes tensors of any shape and the
    schedule's parameters (``PARAMS``) as keyword-only arguments; formulas in derive/MATH.md."""

    FORMAT: int
    NAME: str
    SPEC: dict                  # alpha, beta, sigma, data_var, params, ... as parsable strings
    PARAMS: dict                # parameter name -> default value
    PREDICTIONS: tuple
    DIFFUSION: str              # ode, optimal, lazy or sigma
    STOCHASTIC: bool            # eps != 0
    POINT_MASS: bool            # alpha_0 = beta_0 = 0: sampling starts at x = 0
    SINGULAR_START: bool        # eps infinite at t = 0 (eps* of a standard schedule)
    SNR_INVERSE: str            # "closed form" or "numeric"
    EXPONENTIAL: str            # "closed form" or why there is none
    schedule: Callable          # t -> (alpha, beta, alpha', beta', sigma)
    log_snr: Callable           # t -> log(beta / alpha)
    time_of_log_snr: Optional[Callable]   # lam -> t, or None (the runtime bisects)
    drift: Callable             # t -> (K_x, K_e): b = K_x x + K_e eta_X
    ode_drift: Callable         # the same for sigma = 0
    eta_velocity: Callable      # source time -> (p, q): eta_X = p x + q m
    eta_x: Callable
    eta_noise: Callable
    eta_score: Callable
    exponential: Optional[Callable]       # (t, t_next) -> (A, B, C), or None
    ode_exponential: Optional[Callable]


_CONTRACT = get_type_hints(Kernel)


def check(module: ModuleType) -> ModuleType:
    """``module`` if it satisfies :class:`Kernel`, else :class:`KernelError` listing every problem."""
    problems = []
    for name, hint in _CONTRACT.items():
        if not hasattr(module, name):
            problems.append(f"missing {name}")
            continue
        value = getattr(module, name)
        optional = getattr(hint, "__args__", None) is not None and type(None) in hint.__args__
        if hint is Callable or optional:
            if not (callable(value) or (optional and value is None)):
                problems.append(f"{name} is {type(value).__name__}, not a function")
        elif not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            problems.append(f"{name} is {type(value).__name__}, not {hint.__name__}")
    if not problems and module.FORMAT != FORMAT:
        problems.append(f"format {module.FORMAT}, this runtime reads format {FORMAT} (regenerate it with lazyflow emit)")
    if problems:
        where = getattr(module, "__file__", None) or module.__name__
        raise KernelError(f"{where} is not a lazyflow kernel: " + "; ".join(problems))
    return module


def shipped() -> list[str]:
    """Module names of the kernels shipped in this folder (``linear_sde``, ...)."""
    return list(_shipped())


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[str, ...]:
    """The folder is read once per process (the package never writes into it)."""
    return tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")))


@functools.lru_cache(maxsize=None)
def load_shipped(module_name: str) -> ModuleType:
    """A shipped kernel by module name, checked once per process (a shipped kernel never changes under a run)."""
    if module_name not in shipped():
        raise KernelError(f"no shipped kernel {module_name!r}; shipped: {', '.join(shipped())}")
    return check(importlib.import_module(f"{__name__}.{module_name}"))


_FILES: dict[tuple[str, float], ModuleType] = {}


def load_file(path: str | Path) -> ModuleType:
    """A kernel module from a file (runs the file: load only kernels you generated or trust)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise KernelError(f"kernel file {str(path)!r} does not exist")
    stamp = (str(path), path.stat().st_mtime)
    if stamp not in _FILES:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(f"lazyflow_kernel_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - whatever a file that is no kernel raises when it runs
            raise KernelError(f"{path} is not a lazyflow kernel: it does not import "
                              f"({type(err).__name__}: {' '.join(str(err).split())})") from None
        _FILES[stamp] = check(module)
    return _FILES[stamp]
