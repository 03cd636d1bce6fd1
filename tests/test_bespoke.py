"""Bespoke solvers (runtime/core/bespoke.py, runtime/evaluation/bespoke_fit.py): the loop runs the rows of its
file (its start is the midpoint rule and Euler exactly), a fit reaches the closed form where the family holds
it (Gaussian data: one call is exact), beats its start on held-out noise of a mixture, and ``sample`` reproduces
the fitted path; every misuse is one clear line."""
import json

import pytest
import torch

from lazyflow.cli import main
from lazyflow.errors import LazyflowError
from lazyflow.runtime.core.bespoke import euler_weights, midpoint_weights, rk4_weights
from lazyflow.runtime.core.noise import CounterNormal
from lazyflow.runtime.core.gridfile import TunedGrid, load_grid_file, save_grid_file
from lazyflow.runtime.core.sampler import sample
from lazyflow.runtime.evaluation.bespoke_fit import BespokeSettings, fit_bespoke
from lazyflow.runtime.evaluation.fitting import reference_samples
from lazyflow.runtime.evaluation.tune import tune_grid
from lazyflow.runtime.models import gmm

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)


def _solver(times, a, w, **extra) -> TunedGrid:
    n = a.numel()
    return TunedGrid(times=tuple(times.tolist()), schedule="linear", integrator="bespoke", source="linear",
                     x0_weights=tuple(a.tolist()), call_weights=tuple(tuple(w[k, :k + 1].tolist()) for k in range(n)),
                     **extra)


def _gaussian(dim: int = 6, s: float = 0.5) -> gmm.ExactMixtureModel:
    """N(mu, s^2 I): x_1 = mu + s z, and v(z, 0) = mu - z, so x_1 = (1 + s) z + 1 * v(z, 0) (one call)."""
    mu = torch.linspace(-1, 1, dim, dtype=torch.float64)[None]
    mixture = gmm.GaussianMixture(torch.ones(1, dtype=torch.float64), mu, torch.tensor([s], dtype=torch.float64),
                                  torch.zeros(1, dim, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    return gmm.ExactMixtureModel(mixture, (dim,), "gaussian")


def _path(x, ref) -> float:
    return float((x - ref).flatten(1).norm(dim=1).mean())


def test_the_start_is_the_midpoint_rule_and_euler_exactly():
    model = gmm.load_random("gmm:101")
    shape = (32, *model.data_shape)
    times, a, w = midpoint_weights(6)
    ours = sample(model, shape, integrator="bespoke", grid=_solver(times, a, w), dtype=torch.float64, seed=3)
    theirs = sample(model, shape, integrator="midpoint", steps=3, dtype=torch.float64, seed=3)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    times = torch.tensor([0.0, 0.2, 0.45, 1.0], dtype=torch.float64)
    ours = sample(model, shape, integrator="bespoke", grid=_solver(times, *euler_weights(times)), dtype=torch.float64)
    theirs = sample(model, shape, integrator="euler", grid=times, dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_the_rk4_start_is_rk4_up_to_its_time_gap():
    """An independent RK4 loop on the exact mixture; the solver's calls that RK4 makes at one time are
    ``gap`` H apart, so it agrees to O(gap)."""
    model = gmm.load_random("gmm:101")
    shape = (16, *model.data_shape)
    times, a, w = rk4_weights(8, gap=1e-9)
    ours = sample(model, shape, integrator="bespoke", grid=_solver(times, a, w), dtype=torch.float64, seed=2)
    x = CounterNormal(2, range(16), model.data_shape, dtype=torch.float64)(0)
    v = lambda x, t: model(x, torch.full((x.shape[0],), t, dtype=torch.float64))
    h = 0.5
    for t in (0.0, 0.5):
        k1 = v(x, t)
        k2 = v(x + h / 2 * k1, t + h / 2)
        k3 = v(x + h / 2 * k2, t + h / 2)
        k4 = v(x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)


def test_a_fit_makes_one_call_exact_on_gaussian_data():
    model = _gaussian()
    solver = fit_bespoke(model, nfe=1, samples=32, seed=0, reference_steps=64,
                         settings=BespokeSettings(iterations=400, lr=1e-2, batch=32))
    t = solver.tuning
    assert t["holdout_loss_after"] < 0.01 * t["holdout_loss_before"]
    assert solver.x0_weights[0] == pytest.approx(1.5, abs=0.01) and solver.call_weights[0][0] == pytest.approx(1, abs=0.01)


def test_a_fit_beats_its_start_on_held_out_noise_and_sample_reproduces_it(tmp_path):
    model = gmm.load_random("gmm:101")
    solver = fit_bespoke(model, nfe=4, samples=64, seed=0, holdout_seed=7, reference_steps=100,
                         settings=BespokeSettings(iterations=150, lr=1e-2, batch=32))
    t = solver.tuning
    assert t["holdout_loss_after"] < 0.7 * t["holdout_loss_before"], t
    path = save_grid_file(solver, tmp_path / "solver.json")
    loaded = load_grid_file(path)
    assert loaded.x0_weights == solver.x0_weights and loaded.call_weights == solver.call_weights
    shape = (64, *model.data_shape)
    ref = reference_samples(model, shape, model.source, model.source, "velocity", 0.0, 7, 100)
    for grid in (path, str(path)):
        x = sample(model, shape, integrator="bespoke", grid=grid, seed=7)
        assert _path(x, ref) == pytest.approx(t["holdout_loss_after"], rel=1e-4)



@pytest.mark.slow   # 2 s: two fits
def test_a_rate_that_diverges_steps_back_to_the_best_iterate():
    """lr 0.5 throws the solver off; each check above 1.5x the best goes back to the best iterate with half the
    rate, so the fit ends no worse than its start and the log says so; without backtracking the last checks of
    the same run are far above the best."""
    model, lines = gmm.load_random("gmm:101"), []
    kept = fit_bespoke(model, nfe=4, samples=32, seed=0, holdout_seed=7, reference_steps=50, log=lines.append,
                       settings=BespokeSettings(iterations=100, lr=0.5, batch=16, check_every=10,
                                                lr_schedule="constant"))
    assert any("back to the best iterate" in line for line in lines), lines
    assert kept.tuning["loss_after"] <= kept.tuning["loss_before"]
    lines.clear()
    fit_bespoke(model, nfe=4, samples=32, seed=0, holdout_seed=7, reference_steps=50, log=lines.append,
                settings=BespokeSettings(iterations=100, lr=0.5, batch=16, check_every=10, lr_schedule="constant",
                                         backtrack=None))
    last = [float(line.split("path ")[1].split()[0]) for line in lines if line.startswith("  iteration 100:")]
    assert last and last[0] > 1.5 * kept.tuning["loss_after"], lines

def test_misuse_is_one_clear_line(tmp_path):
    model = gmm.load_random("gmm:101")
    shape = (4, *model.data_shape)
    times, a, w = midpoint_weights(2)
    path = save_grid_file(_solver(times, a, w), tmp_path / "s.json")
    with pytest.raises(LazyflowError, match="runs a fitted solver: give its file"):
        sample(model, shape, integrator="bespoke")
    with pytest.raises(LazyflowError, match="run it with integrator 'bespoke'"):
        sample(model, shape, integrator="midpoint", grid=path)
    with pytest.raises(LazyflowError, match="times of linear, not of vp"):
        sample(model, shape, schedule="vp", integrator="bespoke", grid=path)
    with pytest.raises(LazyflowError, match="denoise"):
        sample(model, shape, integrator="bespoke", grid=path, final_step="denoise")
    noise_model = gmm.load_random("gmm:101", prediction="x")
    with pytest.raises(LazyflowError, match="frame it was fitted in"):
        sample(noise_model, shape, integrator="bespoke", grid=path, prediction="x")
    data = json.loads(path.read_text())
    data["call_weights"][1] = [1.0]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(LazyflowError, match="row k of k \\+ 1"):
        sample(model, shape, integrator="bespoke", grid=tmp_path / "bad.json")
    with pytest.raises(LazyflowError, match="model's own schedule"):
        tune_grid(model, schedule="vp", integrator="bespoke", nfe=2, samples=4)
    with pytest.raises(LazyflowError, match="deterministic schedule"):
        fit_bespoke(noise_model, source="linear-sde", prediction="x", nfe=2, samples=4)


def test_the_cli_fits_and_samples_a_solver(tmp_path, capsys):
    out = tmp_path / "solver.json"
    assert main(["tune-grid", "--model", "gmm:101", "--integrator", "bespoke", "--nfe", "2", "--samples", "8",
                 "--reference-steps", "16", "--max-evals", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bespoke at 2 NFE" in printed and json.loads(out.read_text())["integrator"] == "bespoke"
    assert main(["sample", "--model", "gmm:101", "--integrator", "bespoke", "--grid", str(out), "--n", "4",
                 "--out", str(tmp_path / "x.npy")]) == 0
    assert (tmp_path / "x.npy").exists()


def test_the_integrations_with_their_own_sigmas_refuse_it_in_one_line():
    """k-diffusion and ComfyUI bring their sigmas; the diffusers scheduler runs a solver file (test_pipelines.py)."""
    from lazyflow.runtime.integrations.comfyui import sampler_options
    from lazyflow.runtime.integrations.k_diffusion_samplers import sample_lazyflow

    with pytest.raises(LazyflowError, match="ComfyUI node: a bespoke solver runs on the times it was fitted on"):
        sampler_options("linear", "bespoke", 1.0)
    with pytest.raises(LazyflowError, match="sample_lazyflow: a bespoke solver"):
        sample_lazyflow(lambda x, sigma: x, torch.zeros(2, 4), torch.tensor([1.0, 0.5, 0.0]), integrator="bespoke")
    pytest.importorskip("diffusers")
    from lazyflow.runtime.integrations.diffusers import LazyFlowScheduler

    with pytest.raises(LazyflowError, match="LazyFlowScheduler: integrator 'bespoke' runs a fitted solver"):
        LazyFlowScheduler(integrator="bespoke")
