"""``lazyflow plot``: pictures that compare schedules and samplers.

Each plot is a function returning a matplotlib Figure (tests inspect its axes and lines); ``lazyflow plot``
calls them and :func:`save_figure` writes them.  Every plot draws under matplotlib's default style (a user's
matplotlibrc never changes a figure) and its PNG carries no software version, so that the same command draws
the same bytes with the same matplotlib.  Colours: the Okabe-Ito colour-blind-safe palette; every series in
a plot has its own (colour, line style, marker).
"""
from __future__ import annotations

import functools
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..atomic_write import atomic_path  # noqa: E402
from ..errors import LazyflowError  # noqa: E402
from ..runtime.core.output import save_image_grid, tile_images  # noqa: E402  (sample grids, drawn by the runtime)

__all__ = ["plot_schedules", "plot_drift", "plot_trajectories", "plot_samples", "plot_patches", "plot_bench",
           "tile_images", "save_image_grid", "save_figure", "read_bench_result", "house_style", "line_style",
           "marker_style", "our_styles", "PALETTE"]

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
#: peers get their own colours, dashed lines and square markers, so they never pass for ours
PEER_PALETTE = ["#CC79A7", "#56B4E9", "#D55E00", "#000000", "#999999", "#882255"]
STYLES = ["-", "--", "-.", ":"]
#: markers of ours in the bench plot (one per diffusion scale of a schedule) and of the peers
OUR_MARKERS = ["o", "^", "v", "D", "P", "X", "*", "h"]
PEER_MARKERS = ["s", "D", "p", "<", ">", "d"]
#: matplotlib's defaults, whatever the user's matplotlibrc says (svg.hashsalt: SVG ids that do not change)
HOUSE_STYLE: list[Any] = ["default", {"svg.hashsalt": "lazyflow"}]
#: PNG text chunks: none (matplotlib writes its version as Software unless told not to)
PNG_METADATA: dict[str, Any] = {"Software": None}
#: figure sizes are multiples of 0.5 inch: whole pixels at this dpi in floating point too (4.6 in * 110 =
#: 505.99..., which matplotlib 3.11.0 and 3.11.2 round to different sizes)
DPI = 110

_Draw = TypeVar("_Draw", bound=Callable[..., Any])


def house_style(draw: _Draw) -> _Draw:
    """``draw`` run under :data:`HOUSE_STYLE`."""
    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> Any:
        with plt.style.context(HOUSE_STYLE):
            return draw(*args, **kwargs)
    return styled  # type: ignore[return-value]


def line_style(index: int) -> dict[str, str]:
    """Series ``index`` of a line plot: colour PALETTE[i mod 8] and line style STYLES[(i + i // 8) mod 4], a
    pair no other index below 32 has (the line styles shift by one each round of colours)."""
    if index >= len(PALETTE) * len(STYLES):
        raise LazyflowError(f"at most {len(PALETTE) * len(STYLES)} series fit in one plot, got {index + 1}")
    return {"color": PALETTE[index % len(PALETTE)], "linestyle": STYLES[(index + index // len(PALETTE)) % len(STYLES)]}


def marker_style(index: int, colours: Sequence[str], markers: Sequence[str], linestyle: str) -> dict[str, str]:
    """Series ``index`` of a family drawn with one line style: colour i mod C, marker (i // C) mod M, a pair
    no other index below C * M has."""
    if index >= len(colours) * len(markers):
        raise LazyflowError(f"at most {len(colours) * len(markers)} series of one kind fit in one plot, got {index + 1}")
    return {"color": colours[index % len(colours)], "marker": markers[index // len(colours)], "linestyle": linestyle}


def _schedules(names: Sequence[str]):
    from ..runtime.core.schedule import load_schedule

    return [load_schedule(name) for name in names]


def _data_var(schedule) -> float:
    """The data variance v the schedule was written for (its spec's data_var; 1 when not given)."""
    return float(Fraction(str(schedule.kernel.SPEC.get("data_var", "1"))))


@house_style
def plot_schedules(names: Sequence[str], source: str = "linear"):
    """alpha, beta, log snr, sigma, eps* and the time map and scale to ``source``: one panel each."""
    from ..runtime.core.frames import conversion
    from ..runtime.core.schedule import load_schedule

    schedules, src = _schedules(names), load_schedule(source)
    ts = torch.linspace(1e-3, 1 - 1e-3, 400, dtype=torch.float64)
    panels = [("alpha(t)", "alpha"), ("beta(t)", "beta"), ("log snr = log(beta/alpha)", "log_snr"),
              ("sigma(t) of the sampler", "sigma"), ("optimal diffusion eps*(t)", "eps_star"),
              (f"time map tau(t) to {source!r}", "tau"), (f"scale c(t) to {source!r}", "scale")]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5), constrained_layout=True)
    for index, schedule in enumerate(schedules):
        v = schedule.values(ts)
        tau, scale = conversion(schedule, src, ts)
        values = {"alpha": v.alpha, "beta": v.beta, "log_snr": schedule.log_snr(ts), "sigma": v.sigma,
                  "eps_star": v.eps_star, "tau": tau, "scale": scale}
        for ax, (_, key) in zip(axes.flat, panels):
            ax.plot(ts.numpy(), values[key].numpy(), **line_style(index), label=schedule.name,
                    linewidth=2.2 if index % len(STYLES) else 2.8)
    for ax, (title, key) in zip(axes.flat, panels):
        ax.set_title(title)
        ax.set_xlabel("t (0 = noise, 1 = data)")
        ax.grid(alpha=0.3)
        if key in ("eps_star", "sigma"):
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_ylabel("value (symlog: linear below 0.1)")
        else:
            ax.set_ylabel("value")
    legend_ax = axes.flat[-1]
    legend_ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center", title="schedule", fontsize=11)
    fig.suptitle(f"Schedules compared (time map and scale to the source schedule {source!r})")
    return fig


def _gmm_model():
    """The exact linear-schedule velocity of the 2D mixture of runtime/models/data.py ``gmm_2d``."""
    from ..runtime.models.data import gmm_2d, gmm_velocity

    return gmm_velocity(*gmm_2d())


def _moons_model():
    from ..runtime import models

    model = models.load("moons")
    return lambda x, t: model(x.float(), t.float()).to(x.dtype)


def _trajectories(model, schedule, steps: int, n: int, seed: int, grid: str = "uniform"):
    """Euler(-Maruyama) paths in the schedule's own frame and the mean drift norm |b(t_k, x_k)| at each
    step, observed through the sampler's per-step callback."""
    from ..runtime.core.sampler import sample

    times, path, drift_norm = [], [], []

    def observe(info) -> None:
        times.append(info.t)
        path.append(info.x.clone())
        drift_norm.append(info.drift.norm(dim=1).mean().item())

    with torch.no_grad():
        end = sample(model, (n, 2), schedule=schedule, steps=steps, integrator="euler", grid=grid, seed=seed,
                     final_step="euler", dtype=torch.float64, callback=observe)
    return np.array([*times, 1.0]), torch.stack([*path, end]).numpy(), np.array(drift_norm)


def _own_drift(schedule, times: np.ndarray) -> np.ndarray:
    """The steps whose reported drift is the frame's own: all but t = 0 of a schedule whose diffusion eps is
    infinite there (linear-sde: eps* = (1-t)/t).  The sampler takes that first step with the probability-flow
    ODE drift (finite), while the SDE drift's eps s term grows like 1/t as t -> 0: no finite value to draw at 0,
    and drawing the ODE's made a jump of two decades at t = 0."""
    return ~((times <= 0) & schedule.singular_start)


@house_style
def plot_drift(names: Sequence[str], steps: int = 64, n: int = 512, seed: int = 0):
    """k(t) of Gaussian data (zero for the lazy schedules) and the mean drift norm along paths
    of a 2D Gaussian mixture (exact model) and of two moons (the shipped model)."""
    schedules = _schedules(names)
    ts = torch.linspace(1e-3, 1 - 1e-3, 400, dtype=torch.float64)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), constrained_layout=True)
    for index, schedule in enumerate(schedules):
        style = dict(**line_style(index), label=schedule.name, linewidth=2.2)
        # data N(0, v I): eta_X = v beta x / (alpha^2 + v beta^2), so b = k x with k = K_x + K_e v beta / r
        v, var = schedule.values(ts), _data_var(schedule)
        k_x, k_e = schedule.drift(ts)
        axes[0].plot(ts.numpy(), (k_x + k_e * var * v.beta / (v.alpha**2 + var * v.beta**2)).numpy(), **style)
        for ax, model in ((axes[1], _gmm_model()), (axes[2], _moons_model())):
            times, _, norms = _trajectories(model, schedule, steps, n, seed)
            own = _own_drift(schedule, times[:-1])
            ax.plot(times[:-1][own], norms[own], **style)
    axes[0].set_title("Gaussian data: drift coefficient k(t)")
    axes[0].set_ylabel("k(t), drift b = k(t) x")
    axes[0].set_ylim(-6, 6)
    axes[1].set_title("2D Gaussian mixture (exact model)")
    axes[2].set_title("two moons (shipped model)")
    for ax in axes[1:]:
        ax.set_ylabel(f"mean |b(t, x_t)| along {steps}-step paths")
        ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("t in each schedule's own time")
        ax.grid(alpha=0.3)
    axes[0].legend(title="schedule")
    fig.suptitle("How much work is left to the integrator: drift of each frame")
    return fig


@house_style
def plot_trajectories(names: Sequence[str], data: str = "gmm", steps: int = 16, n: int = 48, seed: int = 0):
    """2D sample paths from the same seeds under each schedule, side by side (each in its own frame)."""
    if data not in ("gmm", "moons"):
        raise LazyflowError(f"--data must be gmm or moons, got {data!r}")
    schedules = _schedules(names)
    model = _gmm_model() if data == "gmm" else _moons_model()
    fig, axes = plt.subplots(1, len(schedules), figsize=(4.5 * len(schedules), 4.5), constrained_layout=True,
                             squeeze=False)
    for ax, schedule in zip(axes[0], schedules):
        times, path, _ = _trajectories(model, schedule, steps, n, seed)
        for i in range(n):
            ax.plot(path[:, i, 0], path[:, i, 1], color=PALETTE[0], alpha=0.35, linewidth=0.8)
        ax.scatter(path[0, :, 0], path[0, :, 1], s=10, color=PALETTE[1], label="start", zorder=3)
        ax.scatter(path[-1, :, 0], path[-1, :, 1], s=10, color=PALETTE[5], label="end", zorder=3)
        ax.set_title(f"{schedule.name} ({steps} Euler steps)")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper left")
    fig.suptitle(f"Sample paths on {'a 2D Gaussian mixture' if data == 'gmm' else 'two moons'}, same seeds")
    return fig


@house_style
def plot_samples(names: Sequence[str], nfes: Sequence[int], model: str = "digits", per_cell: int = 16,
                 integrators: Sequence[str] = ("euler", "multistep-pc"), seed: int = 0):
    """Digit grids: rows = (schedule, integrator), columns = NFE, same seeds everywhere."""
    from ..runtime import models
    from ..runtime.core.integrators import get_integrator
    from ..runtime.core.sampler import sample

    net = models.load(model)
    rows = [(name, integrator) for name in names for integrator in integrators]
    fig, axes = plt.subplots(len(rows), len(nfes), figsize=(2 * len(nfes) + 1.5, 2 * len(rows)),
                             constrained_layout=True, squeeze=False)
    for r, (name, integrator) in enumerate(rows):
        for c, nfe in enumerate(nfes):
            steps = get_integrator(integrator).steps_for_nfe(nfe)
            with torch.no_grad():
                x = sample(net, (per_cell, *net.data_shape), schedule=name, steps=steps, integrator=integrator,
                           grid="uniform", final_step="euler", seed=seed)
            ax = axes[r][c]
            ax.imshow(tile_images(x), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"NFE {nfe}")
            if c == 0:
                ax.set_ylabel(f"{name}\n{integrator}", fontsize=9)
    fig.suptitle(f"Samples of the {model!r} model, same seeds (uniform grids)")
    return fig


def plot_patches(model: str = "patches", steps: int = 32, integrator: str = "multistep-pc", n: int = 64, seed: int = 0,
                 held_out_seed: int = 1):
    """Two grids side by side: ``n`` samples of the photo-patch model (``integrator`` with ``steps`` steps on the
    uniform grid of the linear schedule, noise ``seed``) and ``n`` real patches of the photographs' held-out
    region (drawn from ``held_out_seed``), grey levels as in the photographs."""
    from ..runtime import models
    from ..runtime.core.sampler import sample
    from ..runtime.models.image_patches import image_patches

    net = models.load(model)
    with torch.no_grad():
        x = sample(net, (n, *net.data_shape), schedule="linear", steps=steps, integrator=integrator, grid="uniform",
                   final_step="euler", seed=seed)
    real = image_patches("held-out", n, seed=held_out_seed)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8), constrained_layout=True)
    for ax, images, title in ((axes[0], x, f"{model!r}: {integrator}, {steps} steps (linear, uniform grid)"),
                              (axes[1], real, "held-out patches of the photographs")):
        ax.imshow(tile_images(images), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"32 x 32 grayscale patches of scikit-image's photographs: {n} samples beside {n} held-out patches")
    return fig


def _best(rows: list[dict], budgets: list[int]) -> list[float]:
    """Best FD per NFE budget (every row competes in the budget it was run for, nfe <= budget)."""
    by_budget: dict[int, list[float]] = {}
    for row in rows:
        if row["fd"] is not None:
            by_budget.setdefault(row["budget"], []).append(row["fd"])
    return [min(by_budget.get(b, [np.nan])) for b in budgets]


def our_styles(schedules: Sequence[str]) -> dict[str, dict[str, str]]:
    """Solid lines for ours: colour by schedule and marker by diffusion scale (``name*scale``; ``o`` for the
    schedule's own), so ``linear-sde*0.5`` reads as a relative of ``linear-sde``; when there are more
    schedules or scales than colours or markers, one (colour, marker) pair per series instead."""
    bases = sorted({name.partition("*")[0] for name in schedules})
    scales = sorted({name.partition("*")[2] for name in schedules})
    if len(bases) <= len(PALETTE) and len(scales) <= len(OUR_MARKERS):
        return {name: {"color": PALETTE[bases.index(name.partition("*")[0])], "linestyle": "-",
                       "marker": OUR_MARKERS[scales.index(name.partition("*")[2])]} for name in schedules}
    return {name: marker_style(i, PALETTE, OUR_MARKERS, "-") for i, name in enumerate(schedules)}


def _bench_panel(ax, rows: list[dict], stochastic: bool, result: dict) -> None:
    """One panel of :func:`plot_bench`: ours (the best row of each schedule per NFE), the peers, the lines."""
    ours = sorted({r["method"].split("/")[0] for r in rows if not r["peer"] and r["stochastic"] == stochastic})
    for schedule, style in our_styles(ours).items():
        group = [r for r in rows if not r["peer"] and r["method"].split("/")[0] == schedule]
        nfes = sorted({r["budget"] for r in group})
        ax.plot(nfes, _best(group, nfes), **style, label=f"lazyflow {schedule} (best integrator/grid)", linewidth=2.4)
    peers = sorted({r["method"] for r in rows if r["peer"] and r["stochastic"] == stochastic})
    for index, name in enumerate(peers):
        group = [r for r in rows if r["method"] == name]
        fds = [r["fd"] if r["fd"] is not None else np.nan for r in group]
        ax.plot([r["budget"] for r in group], fds, **marker_style(index, PEER_PALETTE, PEER_MARKERS, "--"),
                label=f"peer: {name}", linewidth=1.4, alpha=0.9)
    ref = result["reference"]
    ax.axhline(ref["fd"], color="grey", linestyle=":", label=f"reference: {ref['method']}, {ref['nfe']} NFE")
    if "floor_bootstrap_fd" in result:
        ax.axhline(result["floor_bootstrap_fd"], color="grey", linestyle="-.",
                   label=f"floor: {result['n']} images drawn from the data itself")
    ax.set_title("deterministic samplers (ODE)" if not stochastic else "stochastic samplers (SDE)")
    ax.set_xlabel("network evaluations per sample (NFE budget; counted calls never exceed it)")
    ax.set_yscale("log")
    ax.set_ylim(0.3, 300)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)


@house_style
def plot_bench(result: dict | str | Path, out: str | Path | None = None):
    """FD against NFE: ours (solid lines; colour by schedule, marker by diffusion scale) and peers (dashed,
    their own colours and square-like markers); ODE and SDE panels.

    Ours are grouped by schedule (the best integrator and grid of that schedule at each NFE), so the
    legend stays readable; every peer is drawn as it is."""
    if not isinstance(result, dict):
        result = read_bench_result(result)
    rows = [r for r in result["rows"] if not r.get("baseline")]   # the 0-NFE Gaussian map is no sampler
    fig, axes = plt.subplots(1, 2, figsize=(15, 7.5), constrained_layout=True, sharey=True)
    for ax, stochastic in zip(axes, (False, True)):
        _bench_panel(ax, rows, stochastic, result)
    axes[0].set_ylabel(f"Fréchet distance, classifier features ({result['n']} samples; lower is better)")
    fig.suptitle(f"Quality against NFE on the {result['model']!r} model ({result['machine']}, {result['date']}); "
                 "points above 300 lie off the chart")
    if out is not None:
        _savefig(fig, Path(out))
    return fig


# --- files ---------------------------------------------------------------------------------------

def save_figure(fig, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` (a ``.png``; its folder is made) and close it; returns the path.  Saved under
    :data:`HOUSE_STYLE` at :data:`DPI` with no PNG text chunks: the bytes depend on the figure alone."""
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise LazyflowError(f"--out must be a .png file, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.style.context(HOUSE_STYLE):
        _savefig(fig, path)
    plt.close(fig)
    return path


def _savefig(fig, path: Path) -> None:
    """``fig`` into ``path`` atomically, at :data:`DPI` with :data:`PNG_METADATA`, in the format its suffix names."""
    with atomic_path(path) as temporary:   # named .tmp: the format is given, not read from the name
        fig.savefig(temporary, dpi=DPI, metadata=PNG_METADATA, format=path.suffix[1:] or plt.rcParams["savefig.format"])


def read_bench_result(source: str | Path) -> dict:
    """The bench result a ``lazyflow bench --save`` file holds; anything else is refused naming ``--from``."""
    try:
        result = json.loads(Path(source).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LazyflowError(f"--from {source}: cannot read a bench result ({err})") from None
    problem = _bench_result_problem(result)
    if problem:
        raise LazyflowError(f"--from {source}: not a bench result written by lazyflow bench --save ({problem})")
    return result


def _bench_result_problem(result: object) -> str:
    """What a parsed file lacks to be drawn by :func:`plot_bench` ('' when nothing)."""
    if not isinstance(result, dict):
        return f"a JSON {type(result).__name__}, not an object"
    for key, kind in (("rows", list), ("reference", dict), ("n", int), ("model", str), ("machine", str),
                      ("date", str)):
        if not isinstance(result.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    ref = result["reference"]
    if not (isinstance(ref.get("method"), str) and isinstance(ref.get("nfe"), int)
            and isinstance(ref.get("fd"), (int, float))):
        return "'reference' lacks its method, nfe or fd (a model bench's path table is not drawn)"
    for index, row in enumerate(result["rows"]):
        if not (isinstance(row, dict) and isinstance(row.get("method"), str) and isinstance(row.get("budget"), int)
                and isinstance(row.get("peer"), bool) and isinstance(row.get("stochastic"), bool)
                and (row.get("fd") is None or isinstance(row.get("fd"), (int, float)))):
            return f"row {index} is not a bench row (method, budget, peer, stochastic, fd)"
    return ""
