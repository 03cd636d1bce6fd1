"""Frames exact for the data's own Gaussian (runtime/core/data_frame.py, runtime/core/data_stats.py):
exact on Gaussian data N(mu, Sigma) at every NFE, convergent at their order on a mixture against an
independent RK4 solve, the call accounting, the statistics and their files, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lazyflow import INTEGRATORS, DataStats, LazyflowError, sample
from lazyflow.runtime.core.data_frame import ANCHORS_BELOW, data_frame_integrator, stochastic_data_frame
from lazyflow.runtime.core.integrators import build_plan
from lazyflow.runtime.core.grids import make_grid
from lazyflow.runtime.core.model_stats import stats_from_model
from lazyflow.runtime.core.schedule import load_schedule

from exact import GMMVelocity, rk4

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny models (tests/conftest.py)

F64 = torch.float64
DATA_FRAMES = [name for name, method in INTEGRATORS.items() if method.needs_data_stats and not stochastic_data_frame(method)]


def gaussian(d: int, seed: int, kind: str):
    """N(mu, Sigma) with Sigma scalar, diagonal or full; its exact linear-schedule velocity
    v = mu + (t Sigma - (1 - t) I) C^-1 (x - t mu), C = (1 - t)^2 I + t^2 Sigma; the exact flow map
    x_1 = mu + Sigma^(1/2) x_0; and its statistics."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=F64)
    lam = 0.1 + 2 * torch.rand(d, generator=g, dtype=F64)
    if kind == "scalar":
        lam = lam[:1].expand(d).clone()
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))[0] if kind == "full" else torch.eye(d, dtype=F64)
    sigma = basis @ torch.diag(lam) @ basis.T
    eye = torch.eye(d, dtype=F64)

    def model(x, t):
        tt = t.to(F64).reshape(-1, 1, 1)
        c = (1 - tt) ** 2 * eye + tt**2 * sigma
        slope = tt * sigma - (1 - tt) * eye
        return mu + (slope @ torch.linalg.solve(c, (x - tt[:, :, 0] * mu)[:, :, None]))[:, :, 0]

    root = basis @ torch.diag(lam.sqrt()) @ basis.T
    stats = {"scalar": DataStats("scalar", mu, lam[0]), "diag": DataStats("diag", mu, lam),
             "full": DataStats("full", mu, lam, basis)}[kind]
    return model, (lambda z: mu + z @ root), stats


@pytest.mark.parametrize("kind", ["scalar", "diag", "full"])
@pytest.mark.parametrize("name", DATA_FRAMES)
def test_exact_on_the_datas_gaussian_at_every_nfe(kind, name):
    model, flow_map, stats = gaussian(6, seed=len(name) + len(kind), kind=kind)
    z = torch.randn(9, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    for steps in (1, 2, 3, 4, 6, 9):
        x = sample(model, (9, 6), schedule="linear", integrator=name, steps=steps, dtype=F64, initial=z, data_stats=stats)
        assert (x - flow_map(z)).abs().max() < 1e-10, (steps, (x - flow_map(z)).abs().max())


@pytest.mark.parametrize("schedule", ["vp", "sd3"])
def test_exact_in_another_ode_frame(schedule):
    """The frame is built on the target schedule's own alpha, beta: exact there too."""
    model, flow_map, stats = gaussian(5, seed=3, kind="full")
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    for name in ("data-multistep-pc", "data-euler"):
        x = sample(model, (4, 5), schedule=schedule, integrator=name, steps=4, dtype=F64, initial=z, data_stats=stats)
        assert (x - flow_map(z)).abs().max() < 1e-10


def test_channel_statistics_are_exact_for_per_channel_gaussian_data():
    c, h = 3, 4
    g = torch.Generator().manual_seed(5)
    mu_c, var_c = torch.randn(c, generator=g, dtype=F64), 0.2 + torch.rand(c, generator=g, dtype=F64)
    mu, var = mu_c[:, None, None].expand(c, h, h), var_c[:, None, None]

    def model(x, t):
        tt = t.to(F64).reshape(-1, 1, 1, 1)
        return mu + (tt * var - (1 - tt)) * (x - tt * mu) / ((1 - tt) ** 2 + tt**2 * var)

    stats = DataStats("channel", mu.clone(), var)
    z = torch.randn(2, c, h, h, generator=g, dtype=F64)
    x = sample(model, (2, c, h, h), schedule="linear", integrator="data-multistep3-pc", steps=5, dtype=F64,
               initial=z, data_stats=stats)
    assert (x - (mu + var.sqrt() * z)).abs().max() < 1e-10


MIXTURE = GMMVelocity(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([[-1.0, -0.5], [1.0, 0.3], [0.0, 1.2]], dtype=F64),
                      torch.tensor([0.5, 0.6, 0.45], dtype=F64))


@pytest.fixture(scope="module")
def mixture_reference():
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    # the mixture's velocity divides by 1 - t: RK4 to 1 - 1e-9, then one Euler step (error ~1e-9)
    end = torch.tensor(1 - 1e-9, dtype=F64)
    ref = rk4(lambda t, x: MIXTURE(x, t.expand(x.shape[0])), z, torch.tensor(0.0, dtype=F64), end, 4000)
    ref = ref + (1 - end) * MIXTURE(ref, end.expand(32))
    draws = torch.cat([MIXTURE.means[i] + MIXTURE.stds[i] * torch.randn(int(4000 * w), 2, generator=torch.Generator()
                                                                           .manual_seed(i), dtype=F64)
                       for i, w in enumerate(MIXTURE.weights.tolist())])
    return z, ref, DataStats.from_samples(draws, kind="full")


@pytest.mark.parametrize("name,low", [("data-euler", 0.8), ("data-multistep", 1.7), ("data-multistep-pc", 1.7),
                                      ("data-multistep3", 2.6), ("data-multistep3-pc", 2.6), ("data-2m", 1.7),
                                      ("data-2m-pc", 1.9)])
@pytest.mark.slow   # 3 s and more: a 4,000-step RK4 reference
def test_convergence_order_against_an_independent_rk4(mixture_reference, name, low):
    """Past ANCHORS_BELOW steps (no skip, no anchor) the error to an RK4 solve (4000 steps) falls at the
    integrator's order: the measured rate from 64 to 256 steps is at least ``low``."""
    z, ref, stats = mixture_reference
    errors = [(sample(MIXTURE, (32, 2), schedule="linear", integrator=name, steps=n, dtype=F64, initial=z,
                      data_stats=stats) - ref).abs().max().item() for n in (64, 128, 256)]
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert rates.mean() >= low, (errors, rates)


@pytest.mark.slow   # 3 s: the 4,000-step RK4 reference of the module (shared with the order test)
@pytest.mark.parametrize("grid", ["uniform", "logsnr", "source", "logsnr:-1,2.5"])
def test_every_grid_converges_to_the_ode_solution(mixture_reference, grid):
    """The logsnr grid widens its range beyond 16 steps, so its first and last steps shrink: the error to
    the RK4 solution falls as steps grow, for the data frame and for a classic integrator."""
    z, ref, stats = mixture_reference
    for name, options in (("data-multistep-pc", {"data_stats": stats}), ("multistep-pc", {})):
        errors = [(sample(MIXTURE, (32, 2), schedule="linear", integrator=name, steps=n, dtype=F64, initial=z, grid=grid,
                          **options) - ref).abs().max().item() for n in (16, 64, 256)]
        assert errors[2] < errors[1] < errors[0] and errors[2] < 2e-3, (name, errors)


@pytest.mark.parametrize("schedule", ["linear", "vp"])
def test_data_2m_pc_corrector_weights_by_mpmath_in_t(schedule):
    """data-2m-pc's corrected weights on a uniform grid from t = 0 (4 steps, diagonal statistics of three
    variances) against their integral in t, written independently: dy_n = w K dl = w (alpha beta' - beta alpha') / r
    dt, so W_j = sqrt(r(t_k+1)) alpha_j / (r_j u'_j) int L_j(l(s)) (alpha beta' - beta alpha')(s) / r(s) ds (mpmath).
    Step 1 follows snr 0 (two nodes), step 2 has three; steps 0 (from snr 0) and 3 (to t = 1) keep the prediction."""
    import mpmath

    variances = [0.01, 0.3, 3.0]
    stats = DataStats("diag", torch.zeros(3, dtype=F64), torch.tensor(variances, dtype=F64))
    target = load_schedule(schedule)
    plan = build_plan(target, target, make_grid(target, target, 4), integrator="data-2m-pc", final_step="euler",
                      prediction="velocity", device="cpu", dtype=F64, data_stats=stats)
    tables, times = plan.coefficients, [mpmath.mpf(v) for v in plan.times.tolist()]

    def ab(s):   # alpha, beta, alpha', beta'
        if schedule == "linear":
            return 1 - s, s, mpmath.mpf(-1), mpmath.mpf(1)
        c = mpmath.pi / 2
        return mpmath.cos(c * s), mpmath.sin(c * s), -c * mpmath.sin(c * s), c * mpmath.cos(c * s)

    def log_snr(s):
        a, b, _, _ = ab(s)
        return mpmath.log(b / a)

    for i, v in enumerate(variances):
        r = lambda s: ab(s)[0] ** 2 + v * ab(s)[1] ** 2   # noqa: E731
        for k, used in ((1, [2, 1]), (2, [3, 2, 1])):
            nodes = [log_snr(times[j]) for j in used]
            for m, j in enumerate(used):
                def basis(s):
                    out = mpmath.mpf(1)
                    for n, other in enumerate(nodes):
                        if n != m:
                            out *= (log_snr(s) - other) / (nodes[m] - other)
                    return out
                a, b, da, db = ab(times[j])
                to_w = a / (a * (a * db - b * da) / mpmath.sqrt(r(times[j])))   # alpha / (r u'), u' = d(beta / sqrt(r))/dt
                integral = mpmath.quad(lambda s: basis(s) * (ab(s)[0] * ab(s)[3] - ab(s)[1] * ab(s)[2]) / r(s),
                                       [times[k], times[k + 1]])
                want = float(mpmath.sqrt(r(times[k + 1])) * to_w * integral)
                got = float(tables.corrected_weights[m][k][i])
                assert abs(got - want) <= 1e-10 * abs(want), (schedule, v, k, m, got, want)
        for k in (0, 3):   # the prediction, shifted to the corrected history [f_k+1, f_k, f_k-1]
            assert float(tables.corrected_weights[0][k][i]) == 0
            assert all(float(tables.corrected_weights[j + 1][k][i]) == float(tables.residual_weights[j][k][i])
                       for j in range(2))


def test_calls_are_what_the_registry_says():
    """Below ANCHORS_BELOW steps no call at t = 0: N calls buy N + 1 steps; the plan, the registry and the
    counted calls agree, and steps_for_nfe fits every budget."""
    model, _, stats = gaussian(3, seed=0, kind="diag")
    calls = []

    def counted(x, t):
        calls.append(float(t[0]))
        return model(x, t)

    linear = load_schedule("linear")
    for name in DATA_FRAMES:
        method = INTEGRATORS[name]
        for steps in (1, 2, 5, ANCHORS_BELOW - 1, ANCHORS_BELOW):
            calls.clear()
            sample(counted, (2, 3), schedule="linear", integrator=name, steps=steps, data_stats=stats, dtype=F64)
            plan = build_plan(linear, linear, make_grid(linear, linear, steps), integrator=name, final_step="euler",
                              prediction="velocity", device="cpu", dtype=F64, data_stats=stats)
            skipped = steps < ANCHORS_BELOW and name not in ("data-2m", "data-2m-pc")   # never skip (the rule needs q_0)
            assert len(calls) == plan.nfe == method.nfe(steps) == steps - skipped
            assert not calls or (calls[0] > 0) == skipped
        for budget in range(0, 40):
            assert method.nfe(method.steps_for_nfe(budget)) <= max(budget, 1)


def test_the_options_change_what_they_say():
    """skip off: a call at t = 0; anchor off: a different last step; on Gaussian data both stay exact."""
    model, flow_map, stats = gaussian(4, seed=9, kind="full")
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    for skip in (True, False):
        for anchor in (True, False):
            method = data_frame_integrator(order=2, corrector=True, skip_start=skip, anchor=anchor)
            assert method.nfe(4) == 4 - skip
            x = sample(model, (3, 4), schedule="linear", integrator=method, steps=4, dtype=F64, initial=z,
                       data_stats=stats)
            assert (x - flow_map(z)).abs().max() < 1e-10
    z2 = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    stats2 = DataStats.from_samples(torch.randn(500, 2, dtype=F64, generator=torch.Generator().manual_seed(1)), kind="full")
    runs = [sample(MIXTURE, (8, 2), schedule="linear", integrator=data_frame_integrator(anchor=anchor), steps=4,
                   dtype=F64, initial=z2, data_stats=stats2) for anchor in (True, False)]
    assert (runs[0] - runs[1]).abs().max() > 1e-3


def test_refusals():
    model, _, stats = gaussian(3, seed=0, kind="diag")
    # no statistics: the frame N(E[X | c], I), the same samples as with those statistics given
    assert torch.equal(sample(model, (2, 3), schedule="linear", integrator="data-multistep-pc", steps=4),
                       sample(model, (2, 3), schedule="linear", integrator="data-multistep-pc", steps=4,
                              data_stats=DataStats.isotropic((3,))))
    with pytest.raises(LazyflowError, match="probability-flow ODE"):
        sample(model, (2, 3), schedule="pointmass", integrator="data-multistep-pc", steps=4, data_stats=stats)
    with pytest.raises(LazyflowError, match="final_step"):
        sample(model, (2, 3), schedule="linear", integrator="data-multistep", steps=4, data_stats=stats,
               final_step="denoise")
    with pytest.raises(LazyflowError, match="shape"):
        sample(model, (2, 4), schedule="linear", integrator="data-multistep", steps=4, data_stats=stats)
    with pytest.raises(LazyflowError, match="DataStats"):
        sample(model, (2, 3), schedule="linear", integrator="data-multistep", steps=4, data_stats={"mean": 0})
    # a grid from t > 0 makes the call there (the skip holds only at t = 0): one call per step
    calls = []
    sample(lambda x, t: calls.append(1) or model(x, t), (2, 3), schedule="linear", integrator="data-multistep",
           grid=[0.1, 0.5, 1.0], steps=2, data_stats=stats)
    assert len(calls) == 2


# --- the statistics ------------------------------------------------------------------------------

def test_statistics_recover_known_moments():
    g = torch.Generator().manual_seed(0)
    n, mean, scale = 200_000, torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 2.0, 1.0])
    x = mean + scale * torch.randn(n, 3, generator=g)
    diag = DataStats.from_samples(x, kind="diag")
    assert torch.allclose(diag.mean, mean.double(), atol=0.01) and torch.allclose(diag.var, scale.double() ** 2, rtol=0.02)
    assert abs(DataStats.from_samples(x, kind="scalar").var - (scale**2).mean()) < 0.03
    full = DataStats.from_samples(x, kind="full")
    cov = full.basis @ torch.diag(full.var) @ full.basis.T
    assert torch.allclose(cov, torch.diag(scale.double() ** 2), atol=0.03)
    images = torch.randn(5000, 2, 3, 3, generator=g) * torch.tensor([1.0, 3.0])[:, None, None] + 2
    channel = DataStats.from_samples(images, kind="channel")
    assert torch.allclose(channel.var.flatten(), torch.tensor([1.0, 9.0], dtype=F64), rtol=0.05)
    lowrank = DataStats.from_samples(x, kind="lowrank", rank=1)
    assert lowrank.var.shape == (1,) and abs(lowrank.var[0] - 4.0) < 0.1 and lowrank.rest.shape == (3,)
    assert torch.allclose(lowrank.rest, torch.tensor([0.25, 1e-3, 1.0], dtype=F64), atol=0.03)


def test_the_floor_keeps_constant_pixels_moving():
    x = torch.zeros(10, 4, dtype=F64)
    x[:, 0] = torch.arange(10)
    stats = DataStats.from_samples(x, kind="diag", floor=1e-3)
    assert stats.var[1:].eq(1e-3).all()


@pytest.mark.parametrize("kind,rank", [("full", None), ("lowrank", 2), ("diag", None), ("channel", None)])
def test_directions_are_inverse_maps_and_files_round_trip(tmp_path, kind, rank):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 2, 2, 2, generator=g, dtype=F64) @ torch.randn(2, 2, generator=g, dtype=F64)
    stats = DataStats.from_samples(x, kind=kind, rank=rank)
    dirs = stats.directions()
    w = torch.randn(3, 2, 2, 2, generator=g, dtype=F64)
    assert torch.allclose(dirs.back(dirs.to(w)), w, atol=1e-12)
    again = DataStats.load(stats.save(tmp_path / "stats.safetensors"))
    assert again.kind == kind and again.samples == 50
    for name in ("mean", "var", "basis", "rest"):
        a, b = getattr(stats, name), getattr(again, name)
        assert (a is None and b is None) or torch.equal(a, b)
        # the same layout too (eigh's eigenvectors come column-major): a matmul over another layout sums in
        # another order, and the loaded copy would sample a few ulp away from the estimated one
        assert a is None or (a.is_contiguous() and a.stride() == b.stride())


def test_bad_statistics_input_is_refused(tmp_path):
    with pytest.raises(LazyflowError, match="kind"):
        DataStats.from_samples(torch.randn(10, 3), kind="blocky")
    with pytest.raises(LazyflowError, match="rank"):
        DataStats.from_samples(torch.randn(10, 3), kind="lowrank", rank=5)
    with pytest.raises(LazyflowError, match="n >= 2"):
        DataStats.from_samples(torch.randn(1, 3), kind="diag")
    with pytest.raises(LazyflowError, match="finite"):
        DataStats.from_samples(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), kind="diag")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(LazyflowError, match="not a safetensors file"):
        DataStats.load(bad)
    with pytest.raises(LazyflowError, match="does not exist"):
        DataStats.load(tmp_path / "missing.safetensors")


def test_statistics_from_the_model_alone():
    """No data at hand: the model's own converged samples give statistics close to the data's."""
    model, _, stats = gaussian(3, seed=4, kind="diag")
    est = stats_from_model(model, (3000, 3), kind="diag", steps=8, integrator="multistep-pc")
    assert torch.allclose(est.mean, stats.mean, atol=0.1) and torch.allclose(est.var, stats.var, rtol=0.1)


def test_the_diffusers_scheduler_runs_a_data_frame_and_equals_sample(tmp_path):
    """In a pipeline the network is called at the first sigma, so the scheduler's data frame calls there
    too: it equals sample with the same integrator, skip off."""
    pytest.importorskip("diffusers")
    from lazyflow.diffusers import LazyFlowScheduler

    model, flow_map, stats = gaussian(4, seed=2, kind="full")
    path = stats.save(tmp_path / "stats.safetensors")
    scheduler = LazyFlowScheduler(schedule="linear", integrator="data-multistep-pc", grid="uniform", data_stats=str(path))
    scheduler.set_timesteps(4)
    assert scheduler.nfe == 4
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    x = z
    for timestep in scheduler.timesteps:
        sigma = (timestep / 1000).to(F64)
        x = scheduler.step(-model(x, (1 - sigma).expand(3)), timestep, x, return_dict=False)[0]
    assert (x - flow_map(z)).abs().max() < 1e-6
    with pytest.raises(LazyflowError, match="data_stats"):
        LazyFlowScheduler(schedule="linear", integrator="data-multistep-pc")
