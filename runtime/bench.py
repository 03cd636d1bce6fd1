"""The quality benchmark behind ``lazyflow bench``: every sampler at equal numbers of network
evaluations, ours and the peers' side by side on one model, from the same initial noise.  It returns
data (and formats tables); the command line prints and plots them."""
from __future__ import annotations

import datetime
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .integrators import INTEGRATORS

__all__ = ["CountingModel", "OurMethod", "our_methods", "run_quality_bench", "format_table", "best_by_kind",
           "BENCH_SCHEDULES"]

#: the frames the bench compares
BENCH_SCHEDULES = ("linear", "vp", "pointmass", "linear-sde", "vp-sde")


class CountingModel:
    """Wraps a model and counts its calls (network evaluations)."""

    def __init__(self, model: Callable):
        self.model, self.calls = model, 0

    def __call__(self, x, t, **kwargs):
        self.calls += 1
        return self.model(x, t, **kwargs)


@dataclass(frozen=True)
class OurMethod:
    schedule: str
    integrator: str
    grid: str
    final_step: str | None = None

    @property
    def name(self) -> str:
        last = f"/{self.final_step}" if self.final_step else ""
        return f"{self.schedule}/{self.integrator}/{self.grid}{last}"



def our_methods(full: bool = True) -> list[OurMethod]:
    """The samplers the bench compares: each schedule with each integrator and grid that applies."""
    methods = []
    for schedule in BENCH_SCHEDULES:
        for integrator in INTEGRATORS:
            if schedule == "linear" and integrator == "exponential":
                continue  # identical to Euler on the linear schedule
            grids = ("uniform", "source", "logsnr") if full else ("uniform",)
            for grid in grids:
                if grid == "source" and schedule in ("linear", "linear-sde"):
                    continue  # the source frame itself: the same as uniform
                methods.append(OurMethod(schedule, integrator, grid))
    if full:  # the last step: a plain step or the denoised mean eta_X
        methods += [OurMethod("pointmass", integrator, grid, "denoise") for integrator in ("euler", "midpoint", "multistep-pc")
                    for grid in ("uniform", "logsnr")]
    return methods


def _row(method: str, peer: bool, stochastic: bool, budget: int, nfe: int, fd: float | None, seconds: float,
         error: str = "") -> dict:
    """One bench row; ``nfe`` is what the counting wrapper saw, ``budget`` the column it competes in (nfe <= budget)."""
    row = {"method": method, "peer": peer, "stochastic": stochastic, "nfe": nfe, "budget": budget, "fd": fd,
           "seconds": round(seconds, 3)}
    if error:
        row["error"] = error
    return row


def run_quality_bench(model_name: str, nfes: list[int], n: int, seed: int, include_peers: bool = True,
                      full: bool = True, log=print) -> dict:
    """Every method at every NFE budget on ``n`` samples; FD against the digits dataset."""
    import torch

    from . import models
    from .errors import LazyflowError
    from .metrics import bootstrap_floor, digits_fd, split_floor
    from .peers import available_peers
    from .sampler import sample

    model = models.load(model_name)
    if tuple(getattr(model, "data_shape", ())) != (1, 8, 8):
        raise LazyflowError(f"the bench measures digits models (samples of shape (1, 8, 8), Fréchet distance in the "
                            f"digits classifier's features); {model_name!r} is not one")
    shape = (n, *model.data_shape)
    with torch.no_grad():
        rows = _run_all(model, shape, nfes, seed, include_peers, full, log)
    skipped = available_peers()[1] if include_peers else []
    reference = CountingModel(model)
    with torch.no_grad():
        ref = digits_fd(sample(reference, shape, schedule="linear", steps=250, integrator="heun", seed=seed))
    return {"rows": rows, "model": model_name, "n": n, "seed": seed, "nfe_budgets": nfes,
            "floor_split_fd": split_floor(), "floor_bootstrap_fd": bootstrap_floor(n, seed),
            "reference": {"method": "linear/heun/uniform", "nfe": reference.calls, "fd": ref},
            "skipped": skipped, "machine": machine(), "date": datetime.date.today().isoformat(),
            "command": "lazyflow " + " ".join(sys.argv[1:])}


def _run_all(model, shape, nfes, seed, include_peers, full, log) -> list[dict]:
    """One row per (method, budget): ours, then the installed peers from the same initial noise."""
    import torch

    from .errors import LazyflowError
    from .metrics import digits_fd
    from .noise import per_sample_normal
    from .peers import available_peers
    from .sampler import sample
    from .schedule import load_schedule

    n, rows = shape[0], []
    for method in our_methods(full):
        integrator = INTEGRATORS[method.integrator]
        for budget in nfes:
            counter = CountingModel(model)
            start = time.perf_counter()
            try:
                x = sample(counter, shape, schedule=method.schedule, steps=integrator.steps_for_nfe(budget),
                           integrator=method.integrator, grid=method.grid, final_step=method.final_step, seed=seed)
                fd, error = digits_fd(x), ""
            except LazyflowError as err:
                fd, error = None, str(err)
            rows.append(_row(method.name, False, load_schedule(method.schedule).stochastic, budget, counter.calls, fd,
                             time.perf_counter() - start, error))
        log(f"  {method.name}: " + ", ".join(f"{r['nfe']}->{_fmt(r['fd'])}" for r in rows[-len(nfes):]))
    if include_peers:
        peers = available_peers()[0]
        for name, (stochastic, fn) in peers.items():
            for budget in nfes:
                counter = CountingModel(model)
                x0 = per_sample_normal(seed, range(n), 1, shape[1:])[:, 0]  # the same start as ours: paired
                start = time.perf_counter()
                try:
                    x = fn(counter, x0, budget, seed)
                    fd, error = (digits_fd(x), "") if torch.isfinite(x).all() else (None, "non-finite samples")
                except Exception as err:  # noqa: BLE001 - a peer failing must not stop the bench
                    fd, error = None, f"{type(err).__name__}: {err}"
                rows.append(_row(name, True, stochastic, budget, counter.calls, fd, time.perf_counter() - start, error))
            log(f"  {name}: " + ", ".join(f"{r['nfe']}->{_fmt(r['fd'])}" for r in rows[-len(nfes):]))
    return rows


def machine() -> str:
    import torch

    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}"


def _fmt(value) -> str:
    return "  -  " if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def format_table(result: dict) -> str:
    """Rows = methods, columns = NFE budgets; each cell 'fd' (actual NFE when it differs from the budget)."""
    budgets = result["nfe_budgets"]
    by_method: dict[str, list[dict]] = {}
    for row in result["rows"]:
        by_method.setdefault((row["method"], row["peer"], row["stochastic"]), []).append(row)
    width = max(len(m[0]) for m in by_method) + 2
    header = f"{'method'.ljust(width)}{'peer':>5}{'sde':>5}" + "".join(f"{'nfe ' + str(b):>11}" for b in budgets)
    lines = [header, "-" * len(header)]
    for (method, peer, stochastic), rows in by_method.items():
        cells = []
        for budget, row in zip(budgets, rows):
            text = _fmt(row["fd"])
            if row["nfe"] != budget:
                text += f" ({row['nfe']})"
            cells.append(f"{text:>11}")
        lines.append(f"{method.ljust(width)}{'yes' if peer else '':>5}{'yes' if stochastic else '':>5}" + "".join(cells))
    ref = result["reference"]
    lines.append("")
    lines.append(f"FD on {result['n']} samples vs the 1,797 digits; floors: two dataset halves {result['floor_split_fd']:.3f}, "
                 f"{result['n']} images drawn from the dataset itself {result.get('floor_bootstrap_fd', float('nan')):.3f}; "
                 f"reference {ref['method']} at {ref['nfe']} NFE: {ref['fd']:.3f}")
    lines.append(f"machine: {result['machine']}; date {result['date']}")
    if result["skipped"]:
        lines.append("skipped peers: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


def best_by_kind(result: dict) -> str:
    """The best deterministic and stochastic sampler, ours and peers', at each budget."""
    lines = ["best FD per budget:      ours ODE | peer ODE | ours SDE | peer SDE"]
    for budget in result["nfe_budgets"]:
        cells = []
        for stochastic in (False, True):
            for peer in (False, True):
                rows = [r for r in result["rows"] if r["peer"] == peer and r["stochastic"] == stochastic
                        and r["fd"] is not None and r["budget"] == budget]
                best = min(rows, key=lambda r: r["fd"], default=None)
                cells.append(f"{_fmt(best['fd'])} {best['method']}" if best else "-")
        lines.append(f"  nfe {budget:>3}: " + " | ".join(cells))
    return "\n".join(lines)
