"""Resource bounds checked before a run starts: a run that cannot fit is refused in one line that names the
limit and its override, instead of being killed by the kernel (or running for days) half-way.

- steps: at most :data:`MAX_STEPS` (a converged reference takes a few thousand; every step keeps a row in
  each coefficient table, a float in the run's manifest and a progress tick);
- memory: the coefficient tables (float64 while built, one row per step and table, one value per element
  where the statistics are per element) plus a batch's working set (the state, the model's input, a
  multistep history, the noise: about :data:`WORKING_COPIES` copies of a batch) plus, for :func:`sample`,
  the gathered samples, must fit in :data:`MEMORY_SHARE` of the memory the system reports available.

- disk: a run written to a file keeps its finished batches and then the output, twice the samples' bytes,
  which must fit in the free space of the output's folder (no override: free some space).

Overrides (environment): ``LAZYFLOW_MAX_STEPS`` (an integer) and ``LAZYFLOW_MAX_MEMORY_GB`` (the memory a
run may plan for, in GiB, instead of the available share).
"""
from __future__ import annotations

import os

from ...errors import LazyflowError

__all__ = ["MAX_STEPS", "MEMORY_SHARE", "WORKING_COPIES", "TABLES_PER_STEP", "check_steps", "check_memory",
           "check_disk", "available_memory"]

#: the most steps a run takes unless ``LAZYFLOW_MAX_STEPS`` says otherwise
MAX_STEPS = 100_000
#: the share of the available memory a run may plan for
MEMORY_SHARE = 0.8
#: copies of one batch a step holds at once (state, model input and output, history, noise, temporaries)
WORKING_COPIES = 12
#: coefficient tables an integrator keeps per step, at most (with their float64 build copies)
TABLES_PER_STEP = 32


def _env_number(name: str, kind: type) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise LazyflowError(f"{name}={text!r} is not a number") from None
    if not value > 0:
        raise LazyflowError(f"{name} must be positive, got {text}")
    return value


def check_steps(steps: int) -> None:
    """Refuse more than :data:`MAX_STEPS` steps (``LAZYFLOW_MAX_STEPS`` overrides)."""
    limit = _env_number("LAZYFLOW_MAX_STEPS", int) or MAX_STEPS
    if steps > limit:
        raise LazyflowError(f"{steps:,} steps is more than the limit of {int(limit):,} (a converged reference takes a "
                            f"few thousand); set LAZYFLOW_MAX_STEPS to allow more")


def available_memory() -> int | None:
    """Bytes the system reports available (``MemAvailable`` on Linux, else physical memory); None if unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(*, steps: int, table_elements: int, batch: int, sample_elements: int, itemsize: int,
                 gathered: int = 0) -> None:
    """Refuse a run whose planned memory exceeds :data:`MEMORY_SHARE` of the available memory
    (``LAZYFLOW_MAX_MEMORY_GB`` overrides): ``steps`` rows of :data:`TABLES_PER_STEP` float64 tables of
    ``table_elements`` values each, :data:`WORKING_COPIES` copies of a ``batch`` of ``sample_elements``-element
    samples of ``itemsize`` bytes, and ``gathered`` samples kept in memory at the end."""
    tables = steps * TABLES_PER_STEP * table_elements * 8
    working = WORKING_COPIES * batch * sample_elements * itemsize
    kept = gathered * sample_elements * itemsize
    need = tables + working + kept
    given = _env_number("LAZYFLOW_MAX_MEMORY_GB", float)
    if given is not None:
        limit, where = given * 2 ** 30, "LAZYFLOW_MAX_MEMORY_GB"
    else:
        free = available_memory()
        if free is None:
            return
        limit, where = MEMORY_SHARE * free, f"{MEMORY_SHARE:.0%} of the {free / 2 ** 30:.1f} GiB available"
    if need > limit:
        parts = ", ".join(f"{name} {value / 2 ** 30:.2f} GiB" for name, value in
                          (("coefficient tables", tables), ("a batch's working set", working), ("the samples", kept))
                          if value)
        raise LazyflowError(f"this run needs about {need / 2 ** 30:.1f} GiB ({parts}), more than {where}; use fewer "
                            f"steps or samples, a smaller batch_size (--batch-size), sample_to_file (lazyflow sample "
                            f"writes batches as they finish), or set LAZYFLOW_MAX_MEMORY_GB")


def check_disk(folder: str | os.PathLike, need: int) -> None:
    """Refuse writing ``need`` bytes into ``folder`` (its nearest existing parent) when its disk has less free."""
    import shutil
    from pathlib import Path

    where = Path(folder).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise LazyflowError(f"this run writes about {need / 2 ** 30:.1f} GiB (its batches, then the output) into "
                            f"{where}, which has {free / 2 ** 30:.1f} GiB free; ask for fewer samples or write elsewhere")
