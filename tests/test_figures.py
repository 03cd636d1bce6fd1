"""Each plot command draws the panels and series it promises (checked on the Figure, not pixels)."""
import json

import matplotlib
import pytest

matplotlib.use("Agg")

from lazyflow.figures import plots  # noqa: E402
from lazyflow.cli import main  # noqa: E402


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def test_schedules_plot():
    fig = plots.plot_schedules(["linear", "vp", "pointmass"], source="linear")
    assert titles(fig)[:7] == ["alpha(t)", "beta(t)", "log snr = log(beta/alpha)", "sigma(t) of the sampler",
                               "optimal diffusion eps*(t)", "time map tau(t) to 'linear'", "scale c(t) to 'linear'"]
    for ax in fig.axes[:7]:
        assert labels(ax) == ["linear", "vp", "pointmass"]
        assert ax.get_xlabel() and ax.get_ylabel()
    legend = fig.axes[7].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["linear", "vp", "pointmass"]
    # lines that coincide stay distinguishable: no two series share colour and style
    styles = {(line.get_color(), line.get_linestyle()) for line in fig.axes[0].get_lines()}
    assert len(styles) == 3


def test_schedule_from_toml(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nalpha = "1 - t**2"\nbeta = "t"\n')
    fig = plots.plot_schedules(["linear", str(path)])
    assert labels(fig.axes[0]) == ["linear", "mine"]


def test_drift_plot_has_zero_gaussian_drift_for_lazy_frames():
    fig = plots.plot_drift(["linear", "vp", "pointmass"], steps=8, n=32)
    assert len(fig.axes) == 3
    assert all(labels(ax) == ["linear", "vp", "pointmass"] for ax in fig.axes)
    k = {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}
    assert abs(k["vp"]).max() < 1e-9 and abs(k["pointmass"]).max() < 1e-9 and abs(k["linear"]).max() > 0.5


@pytest.mark.parametrize("data", ["gmm", "moons"])
def test_trajectory_plot(data):
    fig = plots.plot_trajectories(["linear", "pointmass"], data=data, steps=4, n=5)
    assert titles(fig) == ["linear (4 Euler steps)", "pointmass (4 Euler steps)"]
    assert len(fig.axes[0].get_lines()) == 5          # one path per seed
    start = fig.axes[1].collections[0].get_offsets()
    assert abs(start).max() == 0                        # the point mass starts at 0


def test_samples_plot():
    fig = plots.plot_samples(["linear", "pointmass"], [2, 4], per_cell=4, integrators=["euler"])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["NFE 2", "NFE 4"]
    assert [fig.axes[i].get_ylabel() for i in (0, 2)] == ["linear\neuler", "pointmass\neuler"]


def test_bench_plot_and_command(tmp_path, capsys):
    result = {"rows": [
        {"method": "linear/euler/uniform", "peer": False, "stochastic": False, "nfe": 2, "budget": 2, "fd": 9.0},
        {"method": "linear/heun/uniform", "peer": False, "stochastic": False, "nfe": 3, "budget": 4, "fd": 3.0},
        {"method": "linear/euler/uniform", "peer": False, "stochastic": False, "nfe": 4, "budget": 4, "fd": 4.0},
        {"method": "pointmass/euler/uniform", "peer": False, "stochastic": True, "nfe": 4, "budget": 4, "fd": 5.0},
        {"method": "some peer", "peer": True, "stochastic": False, "nfe": 4, "budget": 4, "fd": 2.0},
    ], "reference": {"method": "ref", "nfe": 99, "fd": 1.0}, "n": 10, "model": "digits", "machine": "m",
        "date": "d"}
    fig = plots.plot_bench(result)
    ode, sde = fig.axes
    assert "lazyflow linear (best integrator/grid)" in labels(ode)
    assert "peer: some peer" in labels(ode)
    ours = [line for line in ode.get_lines() if line.get_label().startswith("lazyflow linear")][0]
    assert list(ours.get_xdata()) == [2, 4] and list(ours.get_ydata()) == [9.0, 3.0]
    assert labels(sde)[0] == "lazyflow pointmass (best integrator/grid)"
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    out = tmp_path / "q.png"
    assert main(["plot", "bench", "--from", str(path), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    for bad, why in (({"rows": 3}, "'rows' is missing or not a list"), ([1], "a JSON list"),
                     ({**result, "rows": [{"method": 1}]}, "row 0 is not a bench row"),
                     ({**result, "reference": {"method": "x"}}, "'reference' lacks")):
        path.write_text(json.dumps(bad))
        assert main(["plot", "bench", "--from", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a bench result" in err and why in err, err


# --- the committed figures are what `lazyflow plot all` draws ------------------------------------------

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from matplotlib import image as mpimg  # noqa: E402

from lazyflow.errors import LazyflowError  # noqa: E402
from lazyflow.figures import catalog  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

#: The matplotlib series of the committed figures (setup.cfg's test extra pins it): one series draws the same bytes
#: (3.11.0 and 3.11.2 did), another lays text out anew (3.10.9 moved 5% to 27% of the pixels).
MATPLOTLIB_SERIES = "3.11"
#: a pixel differs when a channel moves by more than this (of 1)
PIXEL_STEP = 0.1
#: Beyond equal bytes, at most this fraction of pixels may differ and the mean absolute difference stays
#: below MAX_MEAN_DIFF (room for numeric noise of the sampled data on another CPU).  Stale figures differed
#: in 1.2% to 28% of their pixels; the drift figure with its old jump at t = 0 in 0.44% (mean 0.0018).
MAX_DIFFERING = 0.001
MAX_MEAN_DIFF = 0.0005
same_matplotlib = pytest.mark.skipif(
    not matplotlib.__version__.startswith(MATPLOTLIB_SERIES + "."),
    reason=f"the committed figures are drawn with matplotlib {MATPLOTLIB_SERIES}.x (setup.cfg's test extra), this is "
           f"{matplotlib.__version__}")


def pixel_difference(drawn: Path, committed: Path) -> tuple[float, float]:
    """(fraction of pixels differing by more than PIXEL_STEP in a channel, mean absolute difference)."""
    a, b = mpimg.imread(drawn), mpimg.imread(committed)
    assert a.shape == b.shape, f"{committed.name}: drawn {a.shape}, committed {b.shape}"
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=-1)
    return float((diff > PIXEL_STEP).mean()), float(diff.mean())


def snapshot(fig) -> list[dict]:
    """Per Axes: its title and its lines' (label, (colour, line style, marker), x, y)."""
    return [{"title": ax.get_title(), "lines": [
        (line.get_label(), (matplotlib.colors.to_hex(line.get_color()), line.get_linestyle(), str(line.get_marker())),
         np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float))
        for line in ax.get_lines()]} for ax in fig.axes]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    """Every figure, drawn by the one command into a fresh folder, and a snapshot of each Figure's lines
    taken as it is saved (one drawing serves the pixel and the style tests)."""
    out, seen = tmp_path_factory.mktemp("figures"), {}
    save = plots.save_figure

    def save_and_look(fig, path):
        seen[Path(path).name] = snapshot(fig)
        return save(fig, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_figure", save_and_look)
        assert main(["plot", "all", "--out-dir", str(out)]) == 0
    return out, seen


@pytest.fixture(scope="module")
def redrawn(drawn) -> Path:
    return drawn[0]


@pytest.mark.slow   # 13 s: redraws every committed figure
@same_matplotlib
@pytest.mark.parametrize("file", [spec.file for spec in catalog.CATALOG])
def test_committed_figure_is_what_plot_all_draws(redrawn, file):
    committed = catalog.FIGURES_DIR / file
    drawn = redrawn / file
    if drawn.read_bytes() == committed.read_bytes():
        return                                           # the same matplotlib draws the same bytes
    differing, mean = pixel_difference(drawn, committed)
    assert differing < MAX_DIFFERING and mean < MAX_MEAN_DIFF, (
        f"figures/{file} is stale: {differing:.2%} of its pixels differ (mean {mean:.4f}) from what "
        f"`lazyflow plot all --out-dir figures/` draws; redraw it with that command")


@pytest.mark.slow   # 15 s: redraws every committed figure (the fixture of the test above)
def test_plot_all_draws_every_committed_png(redrawn):
    committed = sorted(path.name for path in catalog.FIGURES_DIR.glob("*.png"))
    assert sorted(path.name for path in redrawn.iterdir()) == committed


def test_matplotlib_pin_is_the_series_of_the_figures():
    setup = (catalog.FIGURES_DIR.parent / "setup.cfg").read_text()
    major, minor = MATPLOTLIB_SERIES.split(".")
    test_extra = setup.split("\ntest =", 1)[1].split("\npeers =", 1)[0]
    assert f"matplotlib>={major}.{minor},<{major}.{int(minor) + 1}" in test_extra


@pytest.mark.slow   # 15 s: redraws every committed figure (the fixture)
def test_tolerance_sees_the_old_drift_jump(tmp_path, redrawn, monkeypatch):
    """The tolerance is no blind spot: the drift figure with its old artefact (the ODE drift drawn at t = 0,
    one short segment of one series) fails it."""
    monkeypatch.setattr(plots, "_own_drift", lambda schedule, times: np.ones(len(times), dtype=bool))
    spec = catalog.figure_spec("gaussian_drift.png")
    old = catalog.draw_figure(spec, tmp_path)
    differing, mean = pixel_difference(old, redrawn / "gaussian_drift.png")
    assert differing > MAX_DIFFERING or mean > MAX_MEAN_DIFF


@pytest.mark.slow   # 11 s: the redrawn-figures fixture (every committed figure)
@pytest.mark.parametrize("spec", [pytest.param(spec, id=spec.file, marks=[] if spec.file in (
                                      "trajectories_gmm.png", "quality_vs_nfe.png") else [pytest.mark.slow])
                                  for spec in catalog.CATALOG])
def test_each_figure_command_draws_the_same_bytes(tmp_path, redrawn, spec, monkeypatch):
    """The single command the docs print for a figure draws the very bytes `plot all` draws."""
    monkeypatch.chdir(catalog.FIGURES_DIR.parent)        # the commands name figures/bench_digits.json
    out = tmp_path / spec.file
    assert main(spec.argv(out)) == 0
    assert out.read_bytes() == (redrawn / spec.file).read_bytes()


@pytest.mark.slow   # 9 s: draws every figure (the fixture of the redrawn figures)
def test_png_carries_no_version_or_date(redrawn):
    data = (redrawn / "schedules.png").read_bytes()
    assert b"tEXt" not in data and b"iTXt" not in data and b"tIME" not in data


def test_plot_all_refuses_an_unknown_figure(tmp_path, capsys):
    assert main(["plot", "all", "--out-dir", str(tmp_path), "--only", "nope.png"]) == 2
    assert "no committed figure 'nope.png'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_docs_page_names_every_figure_command():
    page = (catalog.FIGURES_DIR.parent / "docs" / "figures.md").read_text()
    for spec in catalog.CATALOG:
        assert spec.command in page, spec.command


# --- every series has its own style; the drift curves are continuous at t = 0 --------------------------

def series_styles(axes: dict) -> list[tuple[str, str, str]]:
    """(colour, line style, marker) of every labelled line (every series) of a snapshot's Axes."""
    return [style for label, style, _, _ in axes["lines"] if not label.startswith("_")]


def assert_unique_styles(fig) -> None:
    for axes in snapshot(fig):
        styles = series_styles(axes)
        assert len(set(styles)) == len(styles), (axes["title"], styles)


@pytest.mark.slow   # the drawn fixture draws every figure: 11 s
def test_every_series_of_every_figure_has_its_own_style(drawn):
    figures = drawn[1]
    for file, axes_list in figures.items():
        for axes in axes_list:
            styles = series_styles(axes)
            assert len(set(styles)) == len(styles), (file, axes["title"], styles)
    counts = [max(len(series_styles(axes)) for axes in figures[spec.file]) for spec in catalog.CATALOG]
    assert counts == [6, 4, 0, 0, 0, 30, 0]           # the bench: 2 of ours + 26 peers (ODE), 9 + 5 (SDE), 2 lines
    # the bench's SDE panel, whose six stochastic series of ours once shared three styles
    assert len(series_styles(figures["quality_vs_nfe.png"][1])) == 16


def test_bench_styles_are_unique_for_many_series():
    rows = [{"method": f"{name}/euler/uniform", "peer": False, "stochastic": True, "nfe": 4, "budget": 4, "fd": 2.0}
            for name in [f"s{i}" for i in range(9)] + [f"s0*{k}" for k in (0.25, 0.5)]]
    rows += [{"method": f"peer {i}", "peer": True, "stochastic": True, "nfe": 4, "budget": 4, "fd": 3.0}
             for i in range(13)]
    fig = plots.plot_bench({"rows": rows, "reference": {"method": "ref", "nfe": 99, "fd": 1.0}, "n": 10,
                            "model": "m", "machine": "m", "date": "d"})
    assert len(series_styles(snapshot(fig)[1])) == 9 + 2 + 13 + 1
    assert_unique_styles(fig)


def test_line_styles_unique_up_to_32_then_refused():
    styles = [tuple(plots.line_style(i).values()) for i in range(32)]
    assert len(set(styles)) == 32
    with pytest.raises(LazyflowError, match="at most 32 series"):
        plots.line_style(32)


@pytest.mark.slow   # the drawn fixture draws every figure: 11 s
def test_drift_curves_are_continuous_at_t0(drawn):
    """Each drift-norm curve's first point lies on the log-linear extrapolation of the next two (within a
    factor e; at most 0.23 in log here): the old figure drew the ODE drift at t = 0 under linear-sde's SDE
    curve, 65 times lower (4.5 in log)."""
    gaussian, *paths = drawn[1]["gaussian_drift.png"]
    for axes in paths:
        assert [label for label, *_ in axes["lines"]] == ["linear", "vp", "pointmass", "linear-sde"]
        for label, _, t, y in axes["lines"]:
            y = np.log(y)
            assert abs(y[0] - (2 * y[1] - y[2])) < 1.0, (axes["title"], label, np.exp(y[:3]))
            # linear-sde's eps* = (1-t)/t is infinite at t = 0: its curve starts at the first step after it
            assert t[0] == (1 / 64 if label == "linear-sde" else 0)
    assert all(np.isfinite(y).all() for *_, y in gaussian["lines"])


def test_plot_all_checks_before_drawing(tmp_path, capsys):
    """A bad bench result or an unwritable folder is one line on stderr, before any figure is drawn."""
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    out = tmp_path / "out"
    assert main(["plot", "all", "--out-dir", str(out), "--from", str(bad)]) == 2
    assert "not a bench result" in capsys.readouterr().err and not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["plot", "all", "--out-dir", str(blocker / "sub"), "--only", "quality_vs_nfe.png"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
