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
