"""Bespoke solvers on diffusion networks: an exact Gaussian mixture as a noise-prediction network on SD 1.x's
discrete schedule (``discrete:gmm:5,dim=8``), its outputs read as the velocity of that schedule's ODE.  Checked
against the velocity written from the schedule's alpha and beta, the runtime's Euler integrator, the fit's own
held-out evaluation, and the bench; a run on another source schedule or prediction is refused in one line."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lazyflow.errors import LazyflowError
from lazyflow.runtime.core.bespoke import euler_weights, velocity_coefficients
from lazyflow.runtime.core.discrete_schedule import discrete_schedule
from lazyflow.runtime.core.gridfile import TunedGrid, load_grid_file, save_grid_file
from lazyflow.runtime.core.sampler import sample
from lazyflow.runtime.evaluation.bespoke_fit import OPEN_START_LOG_SNR, BespokeSettings, fit_bespoke
from lazyflow.runtime.evaluation.fitting import reference_samples
from lazyflow.runtime.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

MODEL = "discrete:gmm:5,dim=8"


@pytest.fixture(scope="module")
def loaded():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def fitted(loaded):
    return fit_bespoke(loaded.model, model_name=MODEL, source=loaded.source, prediction=loaded.prediction, nfe=4,
                       samples=64, seed=0, holdout_seed=7, reference_steps=100,
                       settings=BespokeSettings(iterations=150, batch=32))


def _path(x, ref) -> float:
    return float((x - ref).flatten(1).norm(dim=1).mean())


def _solver(times, a, w, source) -> TunedGrid:
    n = a.numel()
    return TunedGrid(times=tuple(times.tolist()), schedule=source.describe(), integrator="bespoke", model=MODEL,
                     source="", prediction="noise", x0_weights=tuple(a.tolist()),
                     call_weights=tuple(tuple(w[k, :k + 1].tolist()) for k in range(n)))


def test_the_noise_output_is_read_as_the_velocity_of_the_schedule(loaded):
    """v = alpha' Z + beta' X with X = (x - alpha Z) / beta: v = (beta' / beta) x + (alpha' - beta' alpha / beta) Z
    (float64, to 1e-10 relative); a velocity model's own output is (0, 1)."""
    t = torch.tensor([1e-4, 0.01, 0.3, 0.7, 0.999], dtype=torch.float64)
    v = loaded.source.values(t)
    per_x, per_output = velocity_coefficients(loaded.source, "noise", t)
    torch.testing.assert_close(per_x, v.d_beta / v.beta, rtol=1e-10, atol=0)
    torch.testing.assert_close(per_output, v.d_alpha - v.d_beta * v.alpha / v.beta, rtol=1e-10, atol=1e-12)
    per_x, per_output = velocity_coefficients(loaded.source, "velocity", t)
    assert per_x.tolist() == [0.0] * 5 and per_output.tolist() == [1.0] * 5


def test_euler_as_a_solver_file_is_the_runtimes_euler_on_the_noise_network(loaded):
    """Euler's (a, w) on the velocity, run on the noise network, against the registered Euler integrator on the
    same times (float64; two routes, 1e-10)."""
    times = torch.tensor([0.001, 0.05, 0.2, 0.5, 1.0], dtype=torch.float64)
    shape = (16, 8)
    options = dict(schedule=loaded.source, source=loaded.source, prediction="noise", dtype=torch.float64, seed=3)
    ours = sample(loaded.model, shape, integrator="bespoke", grid=_solver(times, *euler_weights(times), loaded.source),
                  **options)
    theirs = sample(loaded.model, shape, integrator="euler", grid=times, **options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_the_fits_reference_is_the_benchs_ode_solution(loaded):
    """The fit's x* (Heun, 200 steps) against the bench's (multistep3-pc, 800 steps in float64, its own solver)
    from log snr -5: within 2e-3 of the samples' mean norm (uniform steps in the table's own time, which cross log
    snr -5 to -2.7 in one step, were 2.1e-2 off here)."""
    from lazyflow.runtime.core.noise import CounterNormal
    from lazyflow.runtime.evaluation.paths import path_reference

    t0 = float(loaded.source.time_of_log_snr(torch.tensor([OPEN_START_LOG_SNR], dtype=torch.float64))[0])
    ours = reference_samples(loaded.model, (32, 8), loaded.source, loaded.source, "noise", t0, 5, 200)
    z = CounterNormal(5, range(32), (8,), dtype=torch.float64)(0)
    bench = path_reference(loaded.model, loaded.source, z, 800, t0=t0, prediction="noise").samples
    assert _path(ours.double(), bench) < 2e-3 * float(bench.norm(dim=1).mean())


def test_the_fit_starts_at_the_tables_noisiest_timestep_and_is_no_worse_than_its_start(loaded, fitted):
    """t_0 is training timestep 999, where diffusers' schedulers start: its noise level is diffusers'
    sigma_max = sqrt((1 - abar_999) / abar_999), abar from the scaled_linear betas written out here."""
    t = fitted.tuning
    assert t["loss_after"] <= t["loss_before"] and t["holdout_loss_after"] < t["holdout_loss_before"], t
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[-1]
    lam0 = float(loaded.source.log_snr(torch.tensor(fitted.times[:1], dtype=torch.float64))[0])
    assert lam0 == pytest.approx(-0.5 * float(torch.log((1 - abar) / abar)), abs=1e-9)
    karras = [name for name in t["starts"] if name.endswith("karras, table")]
    assert sorted(karras) == ["dpm++2m, karras, table", "euler, karras, table"], t["starts"]
    assert all(math.isfinite(t["starts"][name]) for name in karras)
    assert fitted.prediction == "noise" and fitted.schedule == "discrete-scaled_linear"
    assert fitted.source == f"discrete-scaled_linear table {loaded.source.kernel.digest}"


def test_a_noise_model_on_a_zero_snr_table_starts_at_log_snr_minus_5():
    """A zero-terminal-snr table's timestep 999 has snr 0, where a noise prediction says nothing: t_0 falls back
    to log snr -5; a v-prediction model starts at timestep 999 (t = 0 on such a table: it has no virtual end)."""
    from lazyflow.runtime.core.beta_schedules import alphas_cumprod_of_config
    from lazyflow.runtime.evaluation.bespoke_fit import start_time

    zero = discrete_schedule(alphas_cumprod_of_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                       "beta_end": 0.012, "rescale_betas_zero_snr": True}))
    t0 = start_time(zero, "noise")
    assert float(zero.log_snr(torch.tensor([t0], dtype=torch.float64))[0]) == pytest.approx(OPEN_START_LOG_SNR, abs=1e-9)
    assert start_time(zero, "velocity") == 0.0


@pytest.mark.slow   # 4 s: a bench run
def test_the_solver_file_samples_and_benches_as_the_fit_evaluated_it(loaded, fitted, tmp_path):
    """``sample`` on the file against the fit's own reference: the fit's held-out path to 1e-4 relative (both
    float32); the bench's path (its own 800-step reference from the file's start, 64 samples of the held-out seed)
    to 2% (the fit's reference is Heun on 100 steps)."""
    from lazyflow.runtime.evaluation.bench import run_quality_bench

    path = save_grid_file(fitted, tmp_path / "solver.json")
    assert load_grid_file(path).call_weights == fitted.call_weights
    shape = (64, 8)
    ref = reference_samples(loaded.model, shape, loaded.source, loaded.source, "noise", fitted.times[0], 7, 100)
    x = sample(loaded.model, shape, schedule=loaded.source, source=loaded.source, prediction="noise",
               integrator="bespoke", grid=path, seed=7)
    assert _path(x, ref) == pytest.approx(fitted.tuning["holdout_loss_after"], rel=1e-4)
    result = run_quality_bench(MODEL, [4], 64, 7, include_peers=False, log=lambda *a: None, methods=[],
                               grid_files=[str(path)])
    row, = result["tuned_rows"]
    assert row["method"] == "discrete-scaled_linear/bespoke/tuned:solver.json" and row["nfe"] == 4
    assert row["path"] == pytest.approx(fitted.tuning["holdout_loss_after"], rel=0.02)
    assert "--schedule" not in row["sample_args"]


def test_the_cli_fits_in_the_models_own_schedule_and_samples_it(tmp_path, capsys):
    from lazyflow.cli import main

    out = tmp_path / "solver.json"
    assert main(["tune-grid", "--model", MODEL, "--integrator", "bespoke", "--nfe", "2", "--samples", "8",
                 "--reference-steps", "16", "--max-evals", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "discrete-scaled_linear for bespoke at 2 NFE" in printed and "--schedule" not in printed
    assert json.loads(out.read_text())["prediction"] == "noise"
    assert main(["sample", "--model", MODEL, "--integrator", "bespoke", "--grid", str(out), "--n", "4",
                 "--out", str(tmp_path / "x.npy")]) == 0
    assert (tmp_path / "x.npy").exists()


def test_a_run_on_another_source_or_prediction_is_one_line(loaded, fitted):
    shape = (4, 8)
    # the same name, another table: the digest tells them apart
    abar = torch.tensor(loaded.source.kernel.alphas_cumprod, dtype=torch.float64) ** 1.01
    other = discrete_schedule(abar, name="discrete-scaled_linear")
    assert other.describe() == loaded.source.describe()
    with pytest.raises(LazyflowError, match="runs on the model it was fitted for: it was fitted on source "
                                            "schedule discrete-scaled_linear table") as err:
        sample(loaded.model, shape, schedule=other, source=other, prediction="noise", integrator="bespoke",
               grid=fitted)
    assert "\n" not in str(err.value)
    with pytest.raises(LazyflowError, match="frame it was fitted in.*prediction 'noise'"):
        sample(loaded.model, shape, schedule=loaded.source, source=loaded.source, prediction="x",
               integrator="bespoke", grid=fitted)
    with pytest.raises(LazyflowError, match="deterministic schedule"):
        fit_bespoke(loaded.model, source="linear-sde", prediction="noise", nfe=2, samples=4)
