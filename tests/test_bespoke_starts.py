"""The starts of a bespoke fit (runtime/evaluation/bespoke_starts.py): DPM-Solver++(2M) written as a point of the
bespoke family is that solver: exact on point-mass data in any schedule, second order on Gaussian data, and equal
to k-diffusion's sample_dpmpp_2m (an independent implementation) on the same sigmas; every start is a valid
member of the family, run through ``sample`` as a solver file."""
import pytest
import torch

from lazyflow.runtime.core.bespoke import euler_weights
from lazyflow.runtime.core.gridfile import TunedGrid
from lazyflow.runtime.core.grids import EDM, make_grid
from lazyflow.runtime.core.sampler import sample
from lazyflow.runtime.core.schedule import load_schedule
from lazyflow.runtime.evaluation.bespoke_starts import START_GRIDS, bespoke_starts, dpmpp_2m_weights
from lazyflow.runtime.evaluation.peer_solvers import ve_denoiser

from exact import gaussian_velocity

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64


def _run(model, times, a, w, x0):
    """x_{k+1} = a_k x_0 + sum_{j <= k} w_kj model(x_j, t_j), written out here."""
    x, calls = x0, []
    for k in range(a.numel()):
        calls.append(model(x, times[k].expand(x0.shape[0])))
        x = a[k] * x0 + sum(w[k, j] * m for j, m in enumerate(calls))
    return x


def _point_mass_velocity(schedule, mu):
    """The velocity of data X = mu in ``schedule``: x = alpha z + beta mu, v = alpha' (x - beta mu) / alpha + beta' mu."""
    def model(x, t):
        v = schedule.values(t.to(F64))
        alpha, beta, da, db = (q.reshape(-1, 1) for q in (v.alpha, v.beta, v.d_alpha, v.d_beta))
        return da * (x - beta * mu) / alpha + db * mu
    return model


@pytest.mark.parametrize("schedule", ["linear", "vp", "poly"])
@pytest.mark.parametrize("grid", ["uniform", "logsnr", "edm 14.6", "shift 3"])
def test_dpmpp_2m_is_exact_on_point_mass_data(schedule, grid):
    """Its data prediction is the constant mu, where a data-prediction exponential integrator is exact."""
    target = load_schedule(schedule)
    times = make_grid(target, target, 5, START_GRIDS[grid])
    a, w = dpmpp_2m_weights(times, target)
    mu = torch.tensor([[0.7, -1.3, 2.0]], dtype=F64)
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(_run(_point_mass_velocity(target, mu), times, a, w, z), mu.expand(8, 3), atol=1e-10)


def _gaussian_velocity_in(schedule, var):
    """The velocity of N(0, var I) data in ``schedule``: E[X | x] = beta var x / (alpha^2 + beta^2 var),
    v = alpha' (x - beta E[X | x]) / alpha + beta' E[X | x]."""
    def model(x, t):
        v = schedule.values(t.to(F64))
        alpha, beta, da, db = (q.reshape(-1, 1) for q in (v.alpha, v.beta, v.d_alpha, v.d_beta))
        x_hat = beta * var * x / (alpha ** 2 + beta ** 2 * var)
        return da * (x - beta * x_hat) / alpha + db * x_hat
    return model


@pytest.mark.parametrize("schedule", ["linear", "vp"])
def test_dpmpp_2m_is_second_order_on_gaussian_data(schedule):
    """N(0, v): the ODE maps z to sqrt(v) z; the error falls ~4x per halving of the log-snr step (vp: its alpha at
    t = 1 is 6e-17 in float, not 0; the last step must still be first order, into lambda = inf)."""
    target, v = load_schedule(schedule), 0.25
    model = gaussian_velocity(v) if schedule == "linear" else _gaussian_velocity_in(target, v)
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    errors = []
    for steps in (8, 16, 32):
        times = make_grid(target, target, steps, "logsnr")
        errors.append(float((_run(model, times, *dpmpp_2m_weights(times, target), z) - v ** 0.5 * z).abs().max()))
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5, errors


def test_dpmpp_2m_equals_k_diffusions_on_the_same_sigmas():
    """k-diffusion's sample_dpmpp_2m on the VE form from sigma_0 = 1e4 (x_ve = sigma_0 z: the flow state (1 - t_0) z
    at t_0 = 1 / (1 + sigma_0)) on EDM sigmas to 0, against ours on the same times from that state.  (From t_0 = 0,
    where sigma is infinite, our second step is first order, the limit of theirs as sigma_0 grows.)"""
    from lazyflow.runtime.integrations.k_diffusion_samplers import load_k_diffusion_sampling
    try:
        sampling = load_k_diffusion_sampling()
    except Exception as err:   # an optional peer
        pytest.skip(f"k-diffusion not importable: {err}")
    linear = load_schedule("linear")
    times = make_grid(linear, linear, 6, EDM(sigma_max=14.6))
    times[0] = 1 / (1 + 1e4)
    sigmas = torch.cat([(1 - times[:-1]) / times[:-1], torch.zeros(1, dtype=F64)])
    model = gaussian_velocity(0.3)
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    ours = _run(model, times, *dpmpp_2m_weights(times, linear), (1 - times[0]) * z)
    theirs = sampling.sample_dpmpp_2m(lambda x, s: ve_denoiser(model)(x, float(s[0])), sigmas[0] * z, sigmas,
                                      disable=True)
    assert torch.allclose(ours, theirs, atol=1e-10), float((ours - theirs).abs().max())


@pytest.mark.parametrize("nfe", [3, 4, 6])
def test_every_start_is_a_solver_that_sample_runs(nfe):
    """Each start has positive a_k and runs through ``sample`` as a solver file, equal to the family's loop;
    Euler's start on the uniform grid is Euler."""
    linear = load_schedule("linear")
    starts = bespoke_starts(nfe, linear)
    expected = {f"{m}, {g}" for m in ("euler", "dpm++2m") for g in START_GRIDS}
    expected |= {"midpoint, uniform"} if nfe % 2 == 0 else set()
    expected |= {"rk4, uniform"} if nfe % 4 == 0 else set()
    assert set(starts) == expected
    times, a, w = starts["euler, uniform"]
    assert all(torch.equal(p, q) for p, q in zip((a, w), euler_weights(times)))
    model = gaussian_velocity(0.5)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    for name, (times, a, w) in starts.items():
        assert bool((a > 0).all()), name
        grid = TunedGrid(times=tuple(times.tolist()), schedule="linear", integrator="bespoke", source="linear",
                         x0_weights=tuple(a.tolist()), call_weights=tuple(tuple(w[k, :k + 1].tolist()) for k in range(nfe)))
        ran = sample(model, (5, 3), integrator="bespoke", grid=grid, steps=nfe, dtype=F64, initial=z)
        assert torch.allclose(ran, _run(model, times, a, w, z), rtol=1e-12, atol=1e-12), name


@pytest.mark.parametrize("noisier", [False, True])
@pytest.mark.parametrize("nfe", [1, 4, 6])
def test_a_tables_karras_start_lies_on_diffusers_karras_sigmas(nfe, noisier):
    """The discrete table's Karras start: its noise levels sigma = alpha / beta are diffusers' ``use_karras_sigmas``
    ones, written out here from the scaled_linear betas (rho = 7, n levels from sigma(999) to sigma(0), then 0),
    to 1e-9 relative: n = nfe from timestep 999's time, or from a noisier t_0 (log snr -5) that t_0 and n = nfe - 1;
    both starts on it are in the set."""
    from lazyflow.runtime.core.discrete_schedule import discrete_schedule, noisiest_training_time
    from lazyflow.runtime.evaluation.bespoke_starts import table_karras_times

    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=F64) ** 2, 0)
    table = discrete_schedule(abar)
    t0 = float(table.time_of_log_snr(torch.tensor([-5.0], dtype=F64))[0]) if noisier else noisiest_training_time(table)
    times = table_karras_times(table, nfe, t0)
    assert times.numel() == nfe + 1 and times[0] == t0 and times[-1] == 1.0 and bool((times[1:] > times[:-1]).all())
    levels = nfe - 1 if noisier else nfe
    if levels:
        sigma = ((1 - abar) / abar).sqrt()
        top, bottom = float(sigma[-1]) ** (1 / 7), float(sigma[0]) ** (1 / 7)
        ramp = torch.linspace(0, 1, levels, dtype=F64) if levels > 1 else torch.zeros(1, dtype=F64)
        v = table.values(times[nfe - levels:-1])
        torch.testing.assert_close(v.alpha / v.beta, (top + ramp * (bottom - top)) ** 7, rtol=1e-9, atol=0)
    starts = bespoke_starts(nfe, table, t0)
    assert {"euler, karras, table", "dpm++2m, karras, table"} <= set(starts)


def test_no_karras_start_on_a_zero_snr_table_and_a_later_start_begins_at_its_own_level():
    """A zero-terminal-snr table's timestep 999 has sigma = inf: no Karras start from there (a velocity model
    starts there); from a t_0 after timestep 999 (a noise model's log snr -5 on that table, or any later t_0) the
    levels run from t_0's own noise level, so the grid still increases; every start's times increase."""
    from lazyflow.runtime.core.beta_schedules import alphas_cumprod_of_config
    from lazyflow.runtime.core.discrete_schedule import discrete_schedule
    from lazyflow.runtime.evaluation.bespoke_fit import start_time
    from lazyflow.runtime.evaluation.bespoke_starts import table_karras_times

    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    zero = discrete_schedule(alphas_cumprod_of_config({**config, "rescale_betas_zero_snr": True}))
    assert table_karras_times(zero, 4, start_time(zero, "velocity")) is None
    assert not any(name.endswith("karras, table") for name in bespoke_starts(4, zero, start_time(zero, "velocity")))
    for prediction in ("noise", "velocity"):
        starts = bespoke_starts(4, zero, start_time(zero, prediction))
        assert all(bool((times[1:] > times[:-1]).all()) for times, _, _ in starts.values()), prediction
    assert "dpm++2m, karras, table" in bespoke_starts(4, zero, start_time(zero, "noise"))
    table = discrete_schedule(alphas_cumprod_of_config(config))
    times = table_karras_times(table, 4, 0.5)
    assert times[0] == 0.5 and bool((times[1:] > times[:-1]).all())
    v = table.values(times[:1])
    sigma_min = table.values(torch.tensor([1 - 1 / 1001], dtype=F64))   # timestep 0's time, 1 - 1 / M
    top, bottom = float(v.alpha[0] / v.beta[0]) ** (1 / 7), float(sigma_min.alpha[0] / sigma_min.beta[0]) ** (1 / 7)
    levels = table.values(times[:-1])
    torch.testing.assert_close(levels.alpha / levels.beta, (top + torch.linspace(0, 1, 4, dtype=F64) * (bottom - top)) ** 7,
                               rtol=1e-9, atol=0)
